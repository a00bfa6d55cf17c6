//! Just enough XML writing for a case block: escaped text and attributes,
//! element-name checks, and the characters XML 1.0 cannot carry at all.

/// Whether XML 1.0 can carry `character` in a document (escaped or not).
pub fn is_xml_char(character: char) -> bool {
    matches!(character, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The first character of `value` that XML 1.0 cannot carry, if any.
pub fn first_unrepresentable_char(value: &str) -> Option<char> {
    value.chars().find(|&character| !is_xml_char(character))
}

/// Whether `name` can be written as an un-prefixed element name: a letter or
/// `_`, then letters, digits, `-`, `.` or `_`. Colons are refused because
/// they would name a namespace prefix the block does not declare.
pub fn is_element_name(name: &str) -> bool {
    let mut characters = name.chars();
    let Some(first) = characters.next() else {
        return false;
    };
    (first.is_alphabetic() || first == '_')
        && characters
            .all(|character| character.is_alphanumeric() || matches!(character, '-' | '.' | '_'))
}

/// Appends `value` as element text: `&`, `<` and `>` escaped, and `\r` as a
/// character reference so a parser does not fold it into `\n`.
pub fn push_text(out: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            other => out.push(other),
        }
    }
}

/// Appends ` name="value"` with the value escaped for a double-quoted
/// attribute; tabs and line breaks become character references so attribute
/// normalisation does not turn them into spaces.
pub fn push_attribute(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    for character in value.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            other => out.push(other),
        }
    }
    out.push('"');
}

/// Appends `<name>value</name>`, or `<name/>` when `value` is empty.
pub fn push_text_element(out: &mut String, name: &str, value: &str) {
    if value.is_empty() {
        out.push('<');
        out.push_str(name);
        out.push_str("/>");
        return;
    }
    out.push('<');
    out.push_str(name);
    out.push('>');
    push_text(out, value);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_markup_and_carriage_returns() {
        let mut out = String::new();
        push_text(&mut out, "a < b && c > d\r\n\"quoted\" 'single'");
        assert_eq!(
            out,
            "a &lt; b &amp;&amp; c &gt; d&#13;\n\"quoted\" 'single'"
        );
    }

    #[test]
    fn attributes_escape_quotes_and_whitespace() {
        let mut out = String::new();
        push_attribute(&mut out, "case_type", "a\"b<c>&d\te\nf\rg'h");
        assert_eq!(
            out,
            r#" case_type="a&quot;b&lt;c&gt;&amp;d&#9;e&#10;f&#13;g'h""#
        );
    }

    #[test]
    fn empty_elements_are_self_closing() {
        let mut out = String::new();
        push_text_element(&mut out, "edd", "");
        push_text_element(&mut out, "age", "22");
        assert_eq!(out, "<edd/><age>22</age>");
    }

    #[test]
    fn element_names_follow_xml_rules() {
        for good in ["case_name", "mother_id", "_x", "a-b.c", "prénom", "n2"] {
            assert!(is_element_name(good), "{good} should be an element name");
        }
        for bad in ["", "1st", "-a", "a b", "n0:case", "a<b", ".x"] {
            assert!(
                !is_element_name(bad),
                "{bad:?} should not be an element name"
            );
        }
    }

    #[test]
    fn control_characters_are_unrepresentable() {
        assert_eq!(first_unrepresentable_char("ok\t\n\r text ü 𝄞"), None);
        assert_eq!(first_unrepresentable_char("bell\u{7}"), Some('\u{7}'));
        assert_eq!(first_unrepresentable_char("x\u{FFFE}"), Some('\u{FFFE}'));
    }
}
