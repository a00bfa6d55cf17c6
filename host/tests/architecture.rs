//! The invariants of ARCHITECTURE.md, checked against the source: which
//! module may name which crate or module. Each rule reads every file of
//! `host/src` (comments and string literals left out) and names the file and
//! line that breaks it, so a change that makes a dependency point the wrong
//! way fails here rather than in review.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The source of one file, by its top-level module (`store/writer.rs` and
/// `store.rs` both belong to `store`), without its test module and with
/// comments and literals blanked.
struct SourceFile {
    module: String,
    path: PathBuf,
    code: String,
}

fn sources() -> Vec<SourceFile> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(&root).expect("below src");
            let first = relative
                .components()
                .next()
                .expect("a file has a name")
                .as_os_str()
                .to_string_lossy()
                .into_owned();
            let module = first.trim_end_matches(".rs").to_owned();
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
            SourceFile {
                module,
                path: relative.to_path_buf(),
                code: without_comments_and_literals(without_tests(&text)),
            }
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// The file up to its test module: tests beside the code may read files and
/// start servers; the rules are about what the gateway itself does.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

/// Blanks `//` comments (doc comments included), `/* */` comments, string
/// and character literals, keeping line breaks so line numbers still match.
fn without_comments_and_literals(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut index = 0;
    while index < bytes.len() {
        let rest = &bytes[index..];
        if rest.starts_with(b"//") {
            while index < bytes.len() && bytes[index] != b'\n' {
                index += 1;
            }
        } else if rest.starts_with(b"/*") {
            index += 2;
            while index < bytes.len() && !bytes[index..].starts_with(b"*/") {
                if bytes[index] == b'\n' {
                    out.push('\n');
                }
                index += 1;
            }
            index += 2;
        } else if let Some(hashes) = raw_string_start(rest) {
            // r"…", r#"…"#, br"…": ends at a quote followed by as many hashes.
            index += rest
                .iter()
                .position(|&b| b == b'"')
                .expect("a raw string opens")
                + 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while index < bytes.len() && !bytes[index..].starts_with(&close) {
                if bytes[index] == b'\n' {
                    out.push('\n');
                }
                index += 1;
            }
            index += close.len();
            out.push_str("\"\"");
        } else if bytes[index] == b'"' {
            index += 1;
            while index < bytes.len() && bytes[index] != b'"' {
                if bytes[index] == b'\\' {
                    index += 1;
                }
                if index < bytes.len() && bytes[index] == b'\n' {
                    out.push('\n');
                }
                index += 1;
            }
            index += 1;
            out.push_str("\"\"");
        } else if bytes[index] == b'\'' && is_char_literal(rest) {
            index += 1;
            while index < bytes.len() && bytes[index] != b'\'' {
                if bytes[index] == b'\\' {
                    index += 1;
                }
                index += 1;
            }
            index += 1;
            out.push_str("' '");
        } else {
            let character = text[index..].chars().next().expect("in bounds");
            out.push(character);
            index += character.len_utf8();
        }
    }
    out
}

/// The number of `#` of a raw string literal starting here, if one does.
fn raw_string_start(rest: &[u8]) -> Option<usize> {
    let after_prefix = rest
        .strip_prefix(b"br")
        .or_else(|| rest.strip_prefix(b"r"))?;
    let hashes = after_prefix.iter().take_while(|&&b| b == b'#').count();
    (after_prefix.get(hashes) == Some(&b'"')).then_some(hashes)
}

/// Whether a `'` starts a character literal (`'x'`, `'\n'`, `'é'`) rather
/// than a lifetime (`'a`).
fn is_char_literal(rest: &[u8]) -> bool {
    match rest.get(1) {
        Some(b'\\') => true,
        Some(_) => {
            let text = String::from_utf8_lossy(&rest[1..rest.len().min(6)]);
            let width = text.chars().next().map_or(1, char::len_utf8);
            rest.get(1 + width) == Some(&b'\'')
        }
        None => false,
    }
}

/// Every line of a file that names `word` as a whole path segment.
fn lines_naming<'a>(file: &'a SourceFile, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    file.code
        .lines()
        .enumerate()
        .filter(move |(_, line)| names(line, word))
        .map(|(number, _)| number + 1)
}

fn names(line: &str, word: &str) -> bool {
    let is_identifier = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        !before.is_some_and(is_identifier) && !after.is_some_and(is_identifier)
    })
}

/// Every "file:line" of the modules `module_matches` accepts that names `word`.
fn places_naming(word: &str, module_matches: impl Fn(&str) -> bool) -> Vec<String> {
    sources()
        .iter()
        .filter(|file| module_matches(&file.module))
        .flat_map(|file| {
            lines_naming(file, word)
                .map(|line| format!("{}:{line}", file.path.display()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Fails with every place where a module outside `allowed` names `word`.
fn only_in(word: &str, allowed: &[&str], why: &str) {
    let offenders = places_naming(word, |module| !allowed.contains(&module));
    assert!(
        offenders.is_empty(),
        "{why}: `{word}` is named outside {allowed:?} at {offenders:?}"
    );
}

/// Fails with every place where `module` names `word`.
fn never_in(module: &str, word: &str, why: &str) {
    let offenders = places_naming(word, |name| name == module);
    assert!(
        offenders.is_empty(),
        "{why}: `{module}` names `{word}` at {offenders:?}"
    );
}

#[test]
fn the_rules_see_every_module() {
    let modules: BTreeMap<String, usize> =
        sources()
            .into_iter()
            .fold(BTreeMap::new(), |mut seen, file| {
                *seen.entry(file.module).or_default() += 1;
                seen
            });
    for expected in [
        "store",
        "submission",
        "ingest",
        "endpoint",
        "api",
        "delivery",
        "auth",
        "egress",
        "plugins",
        "email",
        "record",
        "scheduler",
        "cluster",
        "clock",
        "config",
        "catalog",
        "tls",
        "data_api",
        "console",
    ] {
        assert!(
            modules.contains_key(expected),
            "no module {expected} in host/src (found {modules:?}): update these rules and ARCHITECTURE.md"
        );
    }
}

#[test]
fn only_store_knows_redb() {
    only_in("redb", &["store"], "only `store` knows redb");
}

#[test]
fn only_store_holds_a_write_transaction() {
    only_in(
        "WriteTransaction",
        &["store"],
        "callers go through the store's named operations, never a transaction",
    );
    for raw_write in ["pub async fn write<", "pub fn write_blocking<"] {
        never_in(
            "store",
            raw_write,
            "the store's raw writes are private to it",
        );
    }
}

#[test]
fn only_delivery_and_auth_reach_the_network() {
    // `egress` holds the resolver that checks every address connected to.
    only_in(
        "reqwest",
        &["delivery", "auth", "egress"],
        "only `delivery` and `auth` reach the network",
    );
}

#[test]
fn only_tls_reads_pem_and_serves_tls() {
    for word in ["rustls_pki_types", "tokio_rustls"] {
        only_in(
            word,
            &["tls"],
            "the TLS files are read and checked in one place, and HTTPS is served by `tls`",
        );
    }
}

#[test]
fn only_email_speaks_smtp() {
    only_in("lettre", &["email"], "only `email` speaks SMTP");
}

#[test]
fn only_the_clock_reads_the_time() {
    for reader in ["SystemTime::now", "Instant::now"] {
        only_in(
            reader,
            &["clock"],
            "every \"now\" goes through the clock, so tests can move time",
        );
    }
}

#[test]
fn only_the_wiring_names_config() {
    // `catalog` declares the file's objects at start-up.
    only_in(
        "crate::config",
        &["config", "lib", "main", "catalog"],
        "dependencies point from `config` to the domain; take the type from its owner",
    );
}

#[test]
fn ingest_never_calls_delivery_or_the_admin_api() {
    for other in ["delivery", "crate::api"] {
        never_in(
            "ingest",
            other,
            "ingest only registers records and wakes the scheduler; it answers through `endpoint`",
        );
    }
}

#[test]
fn the_console_changes_things_only_through_the_apis_functions() {
    // Reads (counts, listings, a record) are its own; every change is the
    // function the admin API's handler calls, so each rule has one home.
    for change in [
        "operator_action",
        "bulk_action",
        "put_repeater",
        "put_connection",
        "delete_repeater",
        "delete_connection",
        "cancel_repeater_records",
    ] {
        never_in(
            "console",
            change,
            "the console is a front over the admin API's operations (`api`)",
        );
    }
}

#[test]
fn plugins_never_see_the_store() {
    never_in(
        "plugins",
        "crate::store",
        "plugins get plain events and return plain requests",
    );
}

#[test]
fn the_pure_core_does_no_io() {
    for module in ["record", "submission", "xform", "cases", "filters", "model"] {
        for io in ["tokio", "redb", "reqwest", "fs", "net", "crate::store"] {
            never_in(
                module,
                io,
                "the domain core is plain functions over plain types",
            );
        }
    }
}

#[test]
fn the_one_unsafe_block_reads_the_plugin_cache() {
    // `unsafe_code` (the lint's name) is another word and is not counted.
    let places = places_naming("unsafe", |_| true);
    assert_eq!(
        places.len(),
        1,
        "host has one justified unsafe block (loading wasmtime's compiled plugin cache); found {places:?}"
    );
    assert!(
        places[0].starts_with("plugins"),
        "the one unsafe block belongs to the plugin host, found at {places:?}"
    );
}

#[test]
fn the_comment_stripper_keeps_code_and_drops_text() {
    let code = without_comments_and_literals(
        "use redb; // redb here\nlet s = \"redb\"; /* redb\n */ let c = '\"'; let r = r#\"redb\"#;\nfn f<'a>(x: &'a str) {}",
    );
    assert_eq!(code.matches("redb").count(), 1, "{code}");
    assert!(code.contains("fn f<'a>(x: &'a str)"), "{code}");
    assert_eq!(code.lines().count(), 4, "{code}");
}
