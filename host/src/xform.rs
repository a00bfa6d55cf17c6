//! Streaming parse of one XForm submission: the root element's namespace and name,
//! the `meta` block (form id, user, device, times, app version) and every case
//! block in document order, converted to [`CaseBlock`]s that `cases` applies. It
//! also decides which bodies are rejected (empty, not well-formed, no root, a case
//! block without `case_id`, content after the root) and names the problem.
//!
//! A form may come in any encoding its byte-order mark or XML declaration names
//! ([`decode_xml`], the one rule for reading a form's bytes as text); an unknown
//! one is refused by name. The parser reads quick-xml events straight from the
//! decoded text (the request body itself when it is UTF-8), never builds a tree
//! of the whole form and allocates only for the values it keeps. What it
//! accepts follows CommCare HQ's receiver (`couchforms`, `casexml.apps.case`):
//! - `meta` is the root's child named `meta` in any namespace (HQ strips
//!   namespaces before it looks; real forms use `http://openrosa.org/jr/xforms`,
//!   the older `http://org.commcarehq/jr/xforms`, or the form's own namespace);
//!   its fields are matched by local name, ignoring ASCII case (`DeviceID`).
//! - A case block (v2) is any `case` element in [`CASE_XMLNS`], at any depth, with
//!   `case_id`, `date_modified` and `user_id` attributes and `create`, `update`,
//!   `close`, `index` and `attachment` children (matched by local name, as HQ does).
//! - A legacy (v1) case block is a `case` element with no namespace or the form's
//!   own, that has a `case_id` child element. It is converted to the same
//!   [`CaseBlock`] with HQ's v1 mapping (`case_type_id` is the case type); v1 has no
//!   indices or attachments. Without a `case_id` child it is ordinary form data.
//! - Values are entity-unescaped, end-of-line normalised and trimmed.
//! - Create-block properties that are not `case_type`, `case_name` or `owner_id`
//!   but that HQ applies on create (`external_id`, `date_opened`, `user_id`) are
//!   passed on at the front of [`CaseBlock::update`]; other create children are
//!   ignored, as HQ ignores them.
//! - Device reports ([`DEVICE_REPORT_XMLNS`]) are parsed for well-formedness and
//!   meta only; HQ never looks for case blocks in them.

use std::borrow::Cow;

use encoding_rs::{DecoderResult, Encoding, REPLACEMENT, UTF_8, UTF_16BE, UTF_16LE};
use quick_xml::encoding::EncodingError;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use crate::model::FormMeta;

/// Namespace of v2 case blocks.
pub const CASE_XMLNS: &str = "http://commcarehq.org/case/transaction/v2";
/// Namespace of the OpenRosa `meta` block.
pub const META_XMLNS: &str = "http://openrosa.org/jr/xforms";
/// Root namespace of device logs, which never carry case changes.
pub const DEVICE_REPORT_XMLNS: &str = "http://code.javarosa.org/devicereport";

/// What the gateway needs from a submission; the XML itself is kept byte for byte
/// elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedForm {
    /// The root element's namespace, empty when it has none.
    pub xmlns: String,
    /// The root element's local name.
    pub root_name: String,
    /// `instanceID`, or the legacy `uid` when there is no `instanceID`.
    pub instance_id: Option<String>,
    pub meta: FormMeta,
    /// Case blocks in document order.
    pub case_blocks: Vec<CaseBlock>,
}

impl ParsedForm {
    /// True for device logs, which are stored but never forwarded as forms and
    /// never change cases.
    pub fn is_device_report(&self) -> bool {
        self.xmlns == DEVICE_REPORT_XMLNS
    }

    /// The form id the device chose: meta `instanceID`, else the legacy `uid`.
    pub fn form_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }
}

/// The `create` action of a case block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateBlock {
    pub case_type: Option<String>,
    pub case_name: Option<String>,
    pub owner_id: Option<String>,
}

/// One child of an `index` action: a named link to another case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexChange {
    /// The element name, e.g. `parent` or `mother_id`.
    pub identifier: String,
    /// The `case_type` attribute: the referenced case's type.
    pub case_type: String,
    /// The referenced case id; empty removes the index.
    pub case_id: String,
    /// The `relationship` attribute (`child` or `extension`) when present.
    pub relationship: Option<String>,
}

/// One case block of a form, in CommCare's terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaseBlock {
    pub case_id: String,
    /// As sent by the device (not normalised).
    pub date_modified: Option<String>,
    pub user_id: Option<String>,
    /// Present when the block has a non-empty `create` action.
    pub create: Option<CreateBlock>,
    /// Property local name and text, in document order (a name may repeat; the
    /// last value wins when applied). `external_id`, `date_opened` and `user_id`
    /// given inside `create` come first.
    pub update: Vec<(String, String)>,
    pub close: bool,
    pub indices: Vec<IndexChange>,
    /// Names of the attachment action's children.
    pub attachments: Vec<String>,
}

/// Why a submission body was refused.
#[derive(Debug, thiserror::Error)]
pub enum XFormError {
    #[error("empty body")]
    EmptyBody,
    #[error("not well-formed XML at line {line}, column {column}: {problem}")]
    NotWellFormed {
        line: usize,
        column: usize,
        problem: String,
    },
    #[error("no root element")]
    NoRootElement,
    #[error("more than one root element: another one starts at line {line}, column {column}")]
    MoreThanOneRoot { line: usize, column: usize },
    #[error("text after the root element at line {line}, column {column}")]
    TextAfterRoot { line: usize, column: usize },
    #[error("unknown XML encoding \"{0}\"")]
    UnknownEncoding(String),
    #[error("XML encoding \"{0}\" is not supported")]
    UnsupportedEncoding(String),
    #[error(
        "the XML declaration names encoding \"{0}\", but the body is not UTF-16: it has no byte-order mark"
    )]
    Utf16WithoutMark(String),
    #[error("case block {block_number} has no case_id")]
    CaseBlockWithoutCaseId { block_number: usize },
    #[error("case block {block_number} has an index `{identifier}` without a case_type")]
    IndexWithoutCaseType {
        block_number: usize,
        identifier: String,
    },
}

/// Parses a submission body. See the module documentation for what is accepted.
pub fn parse_form(xml: &[u8]) -> Result<ParsedForm, XFormError> {
    let text = decode_xml(xml)?;
    if text.bytes().all(|byte| byte.is_ascii_whitespace()) {
        return Err(XFormError::EmptyBody);
    }
    FormParser::new(text.as_bytes()).run()
}

/// The text of a submitted XML document, without its byte-order mark: the one
/// way a form's bytes are read as text (parsing, and anything that shows the
/// XML). A byte-order mark (UTF-8, UTF-16 LE or BE) decides the encoding; else
/// UTF-16 without a mark is recognised by its first bytes, as XML 1.0 appendix
/// F describes; else the XML declaration's `encoding`, looked up among the
/// WHATWG labels (`ISO-8859-1`, `latin1`, `Windows-1252`, `Shift_JIS`, …);
/// else UTF-8. The bytes themselves are kept and forwarded as submitted.
pub fn decode_xml(xml: &[u8]) -> Result<Cow<'_, str>, XFormError> {
    let (encoding, body) = match Encoding::for_bom(xml) {
        Some((encoding, mark_length)) => (encoding, &xml[mark_length..]),
        None => (unmarked_encoding(xml)?, xml),
    };
    if encoding == UTF_8 {
        return match std::str::from_utf8(body) {
            Ok(text) => Ok(Cow::Borrowed(text)),
            Err(utf8_error) => {
                let (line, column) = line_and_column(body, utf8_error.valid_up_to());
                Err(XFormError::NotWellFormed {
                    line,
                    column,
                    problem: "invalid UTF-8".to_owned(),
                })
            }
        };
    }
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let mut text = String::with_capacity(
        decoder
            .max_utf8_buffer_length_without_replacement(body.len())
            .unwrap_or(body.len()),
    );
    let mut read = 0;
    loop {
        let (result, n_read) =
            decoder.decode_to_string_without_replacement(&body[read..], &mut text, true);
        read += n_read;
        match result {
            DecoderResult::InputEmpty => return Ok(Cow::Owned(text)),
            DecoderResult::OutputFull => text.reserve(body.len() - read + 16),
            DecoderResult::Malformed(..) => {
                let (line, column) = line_and_column(text.as_bytes(), text.len());
                return Err(XFormError::NotWellFormed {
                    line,
                    column,
                    problem: format!("invalid {}", encoding.name()),
                });
            }
        }
    }
}

/// `body` as text for people to read: decoded as [`decode_xml`] reads XML when
/// `content_type` is XML and the body decodes, else as UTF-8 with any invalid
/// bytes replaced.
pub fn body_text<'b>(content_type: &str, body: &'b [u8]) -> Cow<'b, str> {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let is_xml = media_type.eq_ignore_ascii_case("text/xml")
        || media_type.eq_ignore_ascii_case("application/xml")
        || media_type.to_ascii_lowercase().ends_with("+xml");
    match is_xml.then(|| decode_xml(body)) {
        Some(Ok(text)) => text,
        _ => String::from_utf8_lossy(body),
    }
}

/// The encoding of a document without a byte-order mark.
fn unmarked_encoding(xml: &[u8]) -> Result<&'static Encoding, XFormError> {
    // `<?` in UTF-16 without a mark.
    match xml.get(..4) {
        Some([0x3C, 0x00, 0x3F, 0x00]) => return Ok(UTF_16LE),
        Some([0x00, 0x3C, 0x00, 0x3F]) => return Ok(UTF_16BE),
        _ => {}
    }
    let Some(label) = declared_encoding(xml) else {
        return Ok(UTF_8);
    };
    match Encoding::for_label(label.as_bytes()) {
        None => Err(XFormError::UnknownEncoding(label.to_owned())),
        Some(encoding) if encoding == REPLACEMENT => {
            Err(XFormError::UnsupportedEncoding(label.to_owned()))
        }
        // The declaration was read as single bytes: the body cannot be UTF-16.
        Some(encoding) if encoding == UTF_16LE || encoding == UTF_16BE => {
            Err(XFormError::Utf16WithoutMark(label.to_owned()))
        }
        Some(encoding) => Ok(encoding),
    }
}

/// The `encoding` of an XML declaration at the very start of `xml`, read as
/// ASCII (every encoding a declaration can name without a byte-order mark
/// writes it so). `None` when there is no declaration or it names none; a
/// declaration that is not well-formed is left to the parser to report.
fn declared_encoding(xml: &[u8]) -> Option<&str> {
    /// A declaration is a few dozen bytes; one longer than this is not looked into.
    const MAX_DECLARATION: usize = 1024;
    let rest = xml.strip_prefix(b"<?xml")?;
    if !rest.first().is_some_and(u8::is_ascii_whitespace) {
        return None;
    }
    let head = &rest[..rest.len().min(MAX_DECLARATION)];
    let end = head.windows(2).position(|pair| pair == b"?>")?;
    let mut declaration = std::str::from_utf8(&head[..end]).ok()?;
    // Pseudo-attributes: name, `=`, a quoted value.
    loop {
        declaration = declaration.trim_start();
        let (name, after_name) = declaration.split_once('=')?;
        let after_equals = after_name.trim_start();
        let quote = after_equals
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')?;
        let (value, after_value) = after_equals[1..].split_once(quote)?;
        if name.trim() == "encoding" {
            return Some(value.trim());
        }
        declaration = after_value;
    }
}

/// A meta field recognised by its lower-cased local name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetaField {
    InstanceId,
    LegacyUid,
    UserId,
    Username,
    DeviceId,
    TimeStart,
    TimeEnd,
    AppVersion,
}

impl MetaField {
    fn from_local_name(local_name: &[u8]) -> Option<Self> {
        const FIELDS: [(&[u8], MetaField); 9] = [
            (b"instanceid", MetaField::InstanceId),
            (b"uid", MetaField::LegacyUid),
            (b"userid", MetaField::UserId),
            (b"user_id", MetaField::UserId),
            (b"username", MetaField::Username),
            (b"deviceid", MetaField::DeviceId),
            (b"timestart", MetaField::TimeStart),
            (b"timeend", MetaField::TimeEnd),
            (b"appversion", MetaField::AppVersion),
        ];
        FIELDS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(local_name))
            .map(|(_, field)| *field)
    }
}

/// Case XML versions: v2 (namespaced, attributes) and legacy v1 (elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaseXmlVersion {
    V1,
    V2,
}

/// An action element directly inside a case block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaseAction {
    Create,
    Update,
    Close,
    Index,
    Attachment,
    /// Any other child: ignored (for v1, `case_id` etc. are handled as values).
    Other,
}

/// Whose text the parser is currently gathering, and what to do with it at the
/// element's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextTarget {
    Meta(MetaField),
    /// A property inside `create`, `update` or `index`; its name is in
    /// `FormParser::property_name`.
    CaseProperty(CaseAction),
    V1CaseId,
    V1DateModified,
}

/// How an element's namespace relates to what the parser looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NamespaceClass {
    CaseTransaction,
    /// No namespace, or the root's own.
    FormOwn,
    Other,
}

/// A case block between its start and end tags.
#[derive(Debug)]
struct BlockInProgress {
    version: CaseXmlVersion,
    /// Depth of the `case` element.
    depth: usize,
    /// 1-based position among the form's case blocks, for error messages.
    block_number: usize,
    case_block: CaseBlock,
    create: CreateBlock,
    /// Whether `create` had at least one child element.
    has_create: bool,
    /// Properties HQ applies from `create` that `CreateBlock` has no field for.
    create_extras: Vec<(String, String)>,
    /// The open action child and its depth.
    action: Option<(CaseAction, usize)>,
    /// For v1: whether a `case_id` element was seen (its text may be empty).
    v1_case_id_element_seen: bool,
    /// For an open index child: its `case_type` and `relationship` attributes.
    index_case_type: String,
    index_relationship: Option<String>,
}

struct FormParser<'i> {
    reader: NsReader<&'i [u8]>,
    /// The whole decoded input, for line and column numbers.
    source: &'i [u8],
    depth: usize,
    root_namespace: Option<Vec<u8>>,
    root_name: Option<String>,
    root_closed: bool,
    is_device_report: bool,
    instance_id: Option<String>,
    meta: FormMeta,
    legacy_uid: Option<String>,
    meta_seen: bool,
    meta_depth: Option<usize>,
    n_case_blocks: usize,
    case_blocks: Vec<CaseBlock>,
    block: Option<BlockInProgress>,
    /// The element whose text is being gathered, with its depth.
    text_target: Option<(TextTarget, usize)>,
    text: String,
    property_name: String,
}

impl<'i> FormParser<'i> {
    fn new(source: &'i [u8]) -> Self {
        let mut reader = NsReader::from_reader(source);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
        FormParser {
            reader,
            source,
            depth: 0,
            root_namespace: None,
            root_name: None,
            root_closed: false,
            is_device_report: false,
            instance_id: None,
            meta: FormMeta::default(),
            legacy_uid: None,
            meta_seen: false,
            meta_depth: None,
            n_case_blocks: 0,
            case_blocks: Vec::new(),
            block: None,
            text_target: None,
            text: String::with_capacity(256),
            property_name: String::with_capacity(64),
        }
    }

    fn run(mut self) -> Result<ParsedForm, XFormError> {
        loop {
            let event_start = self.reader.buffer_position() as usize;
            let (resolution, event) = match self.reader.read_resolved_event() {
                Ok(resolved) => resolved,
                Err(error) => {
                    let position = self.reader.error_position() as usize;
                    return Err(self.not_well_formed(position, error.to_string()));
                }
            };
            let namespace_class = match resolution {
                ResolveResult::Bound(namespace) => {
                    classify_namespace(namespace.0, self.root_namespace.as_deref())
                }
                ResolveResult::Unbound => NamespaceClass::FormOwn,
                ResolveResult::Unknown(prefix) => {
                    let problem = format!(
                        "undeclared namespace prefix `{}`",
                        String::from_utf8_lossy(&prefix)
                    );
                    return Err(self.not_well_formed(event_start, problem));
                }
            };
            match event {
                Event::Start(element) => {
                    self.open_element(&element, namespace_class, event_start)?;
                }
                Event::Empty(element) => {
                    self.open_element(&element, namespace_class, event_start)?;
                    self.close_element()?;
                }
                Event::End(_) => self.close_element()?,
                Event::Text(text) => {
                    if self.depth == 0 {
                        self.check_text_outside_root(&text, event_start)?;
                    } else {
                        self.gather_text(event_start, || text.xml_content())?;
                    }
                }
                Event::CData(cdata) => {
                    if self.depth == 0 {
                        return Err(self.content_outside_root(event_start));
                    }
                    self.gather_text(event_start, || cdata.xml_content())?;
                }
                Event::GeneralRef(reference) => {
                    if self.depth == 0 {
                        return Err(self.content_outside_root(event_start));
                    }
                    self.resolve_reference(&reference, event_start)?;
                }
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
                Event::Eof => break,
            }
        }
        self.finish()
    }

    /// Appends text or CDATA content to the value being gathered, if any; the
    /// content is only decoded when it is kept.
    fn gather_text(
        &mut self,
        event_start: usize,
        content: impl FnOnce() -> Result<Cow<'i, str>, EncodingError>,
    ) -> Result<(), XFormError> {
        if self.text_target.is_none() {
            return Ok(());
        }
        let content =
            content().map_err(|error| self.not_well_formed(event_start, error.to_string()))?;
        self.text.push_str(&content);
        Ok(())
    }

    fn open_element(
        &mut self,
        element: &BytesStart<'i>,
        namespace_class: NamespaceClass,
        event_start: usize,
    ) -> Result<(), XFormError> {
        // Malformed or duplicate attributes make the document not well-formed even
        // where the parser has no use for them.
        for attribute in element.attributes() {
            if let Err(error) = attribute {
                return Err(self.not_well_formed(event_start, error.to_string()));
            }
        }
        self.depth += 1;
        let depth = self.depth;
        let local_name = element.local_name();
        let local_name = local_name.as_ref();

        if depth == 1 {
            if self.root_closed {
                let (line, column) = line_and_column(self.source, event_start);
                return Err(XFormError::MoreThanOneRoot { line, column });
            }
            let namespace = match self.reader.resolve_element(element.name()).0 {
                ResolveResult::Bound(namespace) => namespace.0.to_vec(),
                _ => Vec::new(),
            };
            self.is_device_report = namespace == DEVICE_REPORT_XMLNS.as_bytes();
            self.root_namespace = Some(namespace);
            self.root_name = Some(String::from_utf8_lossy(local_name).into_owned());
            return Ok(());
        }
        if self.block.is_some() {
            return self.open_element_in_block(element, local_name, depth);
        }
        if self.text_target.is_some() {
            return Ok(());
        }
        if let Some(meta_depth) = self.meta_depth {
            if depth == meta_depth + 1
                && let Some(field) = MetaField::from_local_name(local_name)
            {
                self.start_text(TextTarget::Meta(field), depth);
            }
            return Ok(());
        }
        if depth == 2 && !self.meta_seen && local_name.eq_ignore_ascii_case(b"meta") {
            self.meta_seen = true;
            self.meta_depth = Some(depth);
            return Ok(());
        }
        if local_name == b"case" && !self.is_device_report {
            match namespace_class {
                NamespaceClass::CaseTransaction => self.start_v2_block(element, depth)?,
                NamespaceClass::FormOwn => self.start_v1_block(element, depth),
                NamespaceClass::Other => {}
            }
        }
        Ok(())
    }

    fn start_v2_block(&mut self, element: &BytesStart<'i>, depth: usize) -> Result<(), XFormError> {
        let block_number = self.n_case_blocks + 1;
        let mut case_block = CaseBlock::default();
        for attribute in element.attributes().flatten() {
            let target = match attribute.key.as_ref() {
                b"case_id" => &mut case_block.case_id,
                b"date_modified" => case_block.date_modified.get_or_insert_default(),
                b"user_id" => case_block.user_id.get_or_insert_default(),
                _ => continue,
            };
            let value = attribute
                .unescape_value()
                .map_err(|error| self.not_well_formed(self.current_offset(), error.to_string()))?;
            value.trim().clone_into(target);
        }
        if case_block.case_id.is_empty() {
            return Err(XFormError::CaseBlockWithoutCaseId { block_number });
        }
        drop_if_empty(&mut case_block.date_modified);
        drop_if_empty(&mut case_block.user_id);
        self.n_case_blocks = block_number;
        self.block = Some(BlockInProgress::new(
            CaseXmlVersion::V2,
            depth,
            block_number,
            case_block,
        ));
        Ok(())
    }

    fn start_v1_block(&mut self, element: &BytesStart<'i>, depth: usize) {
        // Whether this is a case block is known only when a `case_id` child shows
        // up; the number is claimed at the end.
        let mut case_block = CaseBlock::default();
        for attribute in element.attributes().flatten() {
            let target = match attribute.key.as_ref() {
                b"case_id" => &mut case_block.case_id,
                b"date_modified" => case_block.date_modified.get_or_insert_default(),
                _ => continue,
            };
            if let Ok(value) = attribute.unescape_value() {
                value.trim().clone_into(target);
            }
        }
        drop_if_empty(&mut case_block.date_modified);
        let block_number = self.n_case_blocks + 1;
        self.block = Some(BlockInProgress::new(
            CaseXmlVersion::V1,
            depth,
            block_number,
            case_block,
        ));
    }

    fn open_element_in_block(
        &mut self,
        element: &BytesStart<'i>,
        local_name: &[u8],
        depth: usize,
    ) -> Result<(), XFormError> {
        if self.text_target.is_some() {
            return Ok(());
        }
        let Some(block) = self.block.as_mut() else {
            return Ok(());
        };
        if depth == block.depth + 1 {
            let action = match local_name {
                b"create" => CaseAction::Create,
                b"update" => CaseAction::Update,
                b"close" => CaseAction::Close,
                b"index" if block.version == CaseXmlVersion::V2 => CaseAction::Index,
                b"attachment" if block.version == CaseXmlVersion::V2 => CaseAction::Attachment,
                b"case_id" if block.version == CaseXmlVersion::V1 => {
                    block.v1_case_id_element_seen = true;
                    self.start_text(TextTarget::V1CaseId, depth);
                    return Ok(());
                }
                b"date_modified" if block.version == CaseXmlVersion::V1 => {
                    self.start_text(TextTarget::V1DateModified, depth);
                    return Ok(());
                }
                _ => CaseAction::Other,
            };
            if action == CaseAction::Close {
                block.case_block.close = true;
            }
            block.action = Some((action, depth));
            return Ok(());
        }
        let Some((action, action_depth)) = block.action else {
            return Ok(());
        };
        if depth != action_depth + 1 {
            return Ok(());
        }
        match action {
            // HQ applies a create action only when `create` has children.
            CaseAction::Create => block.has_create = true,
            CaseAction::Update => {}
            CaseAction::Index => {
                let mut case_type = None;
                let mut relationship = None;
                for attribute in element.attributes().flatten() {
                    let target = match attribute.key.as_ref() {
                        b"case_type" => &mut case_type,
                        b"relationship" => &mut relationship,
                        _ => continue,
                    };
                    if let Ok(value) = attribute.unescape_value() {
                        *target = Some(value.trim().to_owned());
                    }
                }
                let Some(case_type) = case_type else {
                    return Err(XFormError::IndexWithoutCaseType {
                        block_number: block.block_number,
                        identifier: String::from_utf8_lossy(local_name).into_owned(),
                    });
                };
                block.index_case_type = case_type;
                block.index_relationship = relationship.filter(|value| !value.is_empty());
            }
            CaseAction::Attachment => {
                let name = String::from_utf8_lossy(local_name);
                if !block
                    .case_block
                    .attachments
                    .iter()
                    .any(|known| *known == name)
                {
                    block.case_block.attachments.push(name.into_owned());
                }
                return Ok(());
            }
            CaseAction::Close | CaseAction::Other => return Ok(()),
        }
        self.property_name.clear();
        self.property_name
            .push_str(&String::from_utf8_lossy(local_name));
        self.start_text(TextTarget::CaseProperty(action), depth);
        Ok(())
    }

    fn start_text(&mut self, target: TextTarget, depth: usize) {
        self.text.clear();
        self.text_target = Some((target, depth));
    }

    fn close_element(&mut self) -> Result<(), XFormError> {
        let depth = self.depth;
        self.depth = depth.saturating_sub(1);
        if depth <= 1 {
            self.root_closed = depth == 1;
            return Ok(());
        }
        if let Some((target, text_depth)) = self.text_target {
            if text_depth == depth {
                self.text_target = None;
                self.finish_text(target);
            }
            return Ok(());
        }
        if self.meta_depth == Some(depth) {
            self.meta_depth = None;
            return Ok(());
        }
        let Some(block) = self.block.as_mut() else {
            return Ok(());
        };
        if block
            .action
            .is_some_and(|(_, action_depth)| action_depth == depth)
        {
            block.action = None;
        } else if block.depth == depth
            && let Some(block) = self.block.take()
        {
            self.finish_block(block)?;
        }
        Ok(())
    }

    fn finish_text(&mut self, target: TextTarget) {
        let value = self.text.trim();
        match target {
            TextTarget::Meta(field) => {
                let slot = match field {
                    MetaField::InstanceId => &mut self.instance_id,
                    MetaField::LegacyUid => &mut self.legacy_uid,
                    MetaField::UserId => &mut self.meta.user_id,
                    MetaField::Username => &mut self.meta.username,
                    MetaField::DeviceId => &mut self.meta.device_id,
                    MetaField::TimeStart => &mut self.meta.time_start,
                    MetaField::TimeEnd => &mut self.meta.time_end,
                    MetaField::AppVersion => &mut self.meta.app_version,
                };
                if slot.is_none() && !value.is_empty() {
                    *slot = Some(value.to_owned());
                }
            }
            TextTarget::V1CaseId | TextTarget::V1DateModified => {
                let Some(block) = self.block.as_mut() else {
                    return;
                };
                if target == TextTarget::V1CaseId {
                    value.clone_into(&mut block.case_block.case_id);
                } else if !value.is_empty() {
                    block.case_block.date_modified = Some(value.to_owned());
                }
            }
            TextTarget::CaseProperty(action) => {
                let Some(block) = self.block.as_mut() else {
                    return;
                };
                let name = self.property_name.as_str();
                match action {
                    CaseAction::Create => {
                        let slot = match (name, block.version) {
                            ("case_type", _) | ("case_type_id", CaseXmlVersion::V1) => {
                                &mut block.create.case_type
                            }
                            ("case_name", _) => &mut block.create.case_name,
                            ("owner_id", _) => &mut block.create.owner_id,
                            ("external_id" | "date_opened" | "user_id", _) => {
                                block
                                    .create_extras
                                    .push((name.to_owned(), value.to_owned()));
                                return;
                            }
                            _ => return,
                        };
                        *slot = Some(value.to_owned());
                    }
                    CaseAction::Update => {
                        let name = match (name, block.version) {
                            ("case_type_id", CaseXmlVersion::V1) => "case_type",
                            _ => name,
                        };
                        block
                            .case_block
                            .update
                            .push((name.to_owned(), value.to_owned()));
                    }
                    CaseAction::Index => block.case_block.indices.push(IndexChange {
                        identifier: name.to_owned(),
                        case_type: std::mem::take(&mut block.index_case_type),
                        case_id: value.to_owned(),
                        relationship: block.index_relationship.take(),
                    }),
                    CaseAction::Close | CaseAction::Attachment | CaseAction::Other => {}
                }
            }
        }
    }

    fn finish_block(&mut self, block: BlockInProgress) -> Result<(), XFormError> {
        let BlockInProgress {
            version,
            block_number,
            mut case_block,
            create,
            has_create,
            create_extras,
            v1_case_id_element_seen,
            ..
        } = block;
        if version == CaseXmlVersion::V1 {
            // Ordinary form data that happens to be called `case`.
            if !v1_case_id_element_seen && case_block.case_id.is_empty() {
                return Ok(());
            }
            if case_block.case_id.is_empty() {
                return Err(XFormError::CaseBlockWithoutCaseId { block_number });
            }
            self.n_case_blocks = block_number;
        }
        if has_create {
            case_block.create = Some(create);
        }
        if !create_extras.is_empty() {
            case_block.update.splice(0..0, create_extras);
        }
        self.case_blocks.push(case_block);
        Ok(())
    }

    fn resolve_reference(
        &mut self,
        reference: &BytesRef<'i>,
        event_start: usize,
    ) -> Result<(), XFormError> {
        let resolved = match reference.resolve_char_ref() {
            Ok(Some(character)) => Some(character),
            Ok(None) => None,
            Err(error) => return Err(self.not_well_formed(event_start, error.to_string())),
        };
        match resolved {
            Some(character) => {
                if self.text_target.is_some() {
                    self.text.push(character);
                }
            }
            None => {
                let name = String::from_utf8_lossy(reference);
                let Some(replacement) = quick_xml::escape::resolve_predefined_entity(&name) else {
                    let problem = format!("undefined entity `&{name};`");
                    return Err(self.not_well_formed(event_start, problem));
                };
                if self.text_target.is_some() {
                    self.text.push_str(replacement);
                }
            }
        }
        Ok(())
    }

    fn check_text_outside_root(&self, text: &[u8], event_start: usize) -> Result<(), XFormError> {
        match text.iter().position(|byte| !byte.is_ascii_whitespace()) {
            None => Ok(()),
            Some(index) => Err(self.content_outside_root(event_start + index)),
        }
    }

    fn content_outside_root(&self, position: usize) -> XFormError {
        if self.root_closed {
            let (line, column) = line_and_column(self.source, position);
            XFormError::TextAfterRoot { line, column }
        } else {
            self.not_well_formed(position, "text before the root element".to_owned())
        }
    }

    fn current_offset(&self) -> usize {
        self.reader.buffer_position() as usize
    }

    fn not_well_formed(&self, position: usize, problem: String) -> XFormError {
        let (line, column) = line_and_column(self.source, position);
        XFormError::NotWellFormed {
            line,
            column,
            problem,
        }
    }

    fn finish(mut self) -> Result<ParsedForm, XFormError> {
        let Some(root_name) = self.root_name.take() else {
            return Err(XFormError::NoRootElement);
        };
        if !self.root_closed {
            let problem = format!("the root element `{root_name}` is not closed");
            return Err(self.not_well_formed(self.source.len(), problem));
        }
        if self.instance_id.is_none() {
            self.instance_id = self.legacy_uid.take();
        }
        let xmlns =
            String::from_utf8_lossy(&self.root_namespace.take().unwrap_or_default()).into_owned();
        Ok(ParsedForm {
            xmlns,
            root_name,
            instance_id: self.instance_id,
            meta: self.meta,
            case_blocks: self.case_blocks,
        })
    }
}

impl BlockInProgress {
    fn new(
        version: CaseXmlVersion,
        depth: usize,
        block_number: usize,
        case_block: CaseBlock,
    ) -> Self {
        BlockInProgress {
            version,
            depth,
            block_number,
            case_block,
            create: CreateBlock::default(),
            has_create: false,
            create_extras: Vec::new(),
            action: None,
            v1_case_id_element_seen: false,
            index_case_type: String::new(),
            index_relationship: None,
        }
    }
}

fn classify_namespace(namespace: &[u8], root_namespace: Option<&[u8]>) -> NamespaceClass {
    if namespace == CASE_XMLNS.as_bytes() {
        NamespaceClass::CaseTransaction
    } else if root_namespace == Some(namespace) {
        NamespaceClass::FormOwn
    } else {
        NamespaceClass::Other
    }
}

fn drop_if_empty(value: &mut Option<String>) {
    if value.as_deref().is_some_and(str::is_empty) {
        *value = None;
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(source: &[u8], offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline + 1);
    let is_char_start = |byte: &&u8| (**byte & 0xC0) != 0x80;
    let column = before[line_start..].iter().filter(is_char_start).count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The project's own test forms, `tests/fixtures/forms/` (see the README there).
    const FIXTURE_NAMES: [&str; 13] = [
        "bare_close.xml",
        "bare_create.xml",
        "bare_index.xml",
        "bare_update.xml",
        "clinic_tasks.xml",
        "household_close.xml",
        "household_members.xml",
        "household_register.xml",
        "household_visit.xml",
        "ledger_legacy_uid.xml",
        "plain_meta.xml",
        "two_blocks_one_case.xml",
        "v1_cases_in_repeats.xml",
    ];

    const HOUSEHOLD: &str = "hh-7d2c4a10-3e5f-4b6a-9c8d-0e1f2a3b4c5d";
    const CHIDI: &str = "mb-1c9a8b7d-6e5f-4a3b-2c1d-0e9f8a7b6c51";
    const ADA: &str = "mb-2d0b9c8e-7f6a-4b5c-3d2e-1f0a9b8c7d62";
    const ASHA: &str = "5b1f0c9e2d7a4e3b8c6f1a2d3e4f5a6b";
    const CLIENT: &str = "a41c7e0b95d24f6e8a3b1c2d3e4f5a60";
    const INFANT: &str = "b52d8f1c-a6e3-4b7f-9c4d-2e3f4a5b6c71";

    /// A file under the repository's `tests/fixtures/`.
    fn read_fixture_file(relative: &str) -> Vec<u8> {
        let path = format!(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/{}"),
            relative
        );
        std::fs::read(&path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"))
    }

    fn fixture(name: &str) -> Vec<u8> {
        read_fixture_file(&format!("forms/{name}"))
    }

    fn seed_form() -> Vec<u8> {
        read_fixture_file("seed_form.xml")
    }

    fn parse_fixture(name: &str) -> ParsedForm {
        parse_form(&fixture(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
    }

    fn owned(value: &str) -> Option<String> {
        Some(value.to_owned())
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn create(case_type: &str, case_name: &str, owner_id: Option<&str>) -> Option<CreateBlock> {
        Some(CreateBlock {
            case_type: owned(case_type),
            case_name: owned(case_name),
            owner_id: owner_id.map(str::to_owned),
        })
    }

    fn index(identifier: &str, case_type: &str, case_id: &str) -> IndexChange {
        IndexChange {
            identifier: identifier.to_owned(),
            case_type: case_type.to_owned(),
            case_id: case_id.to_owned(),
            relationship: None,
        }
    }

    fn case_ids(form: &ParsedForm) -> Vec<&str> {
        form.case_blocks
            .iter()
            .map(|block| block.case_id.as_str())
            .collect()
    }

    #[test]
    fn every_fixture_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/forms");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("cannot list {dir}: {error}"))
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, FIXTURE_NAMES, "every form fixture is listed here");
        for name in FIXTURE_NAMES {
            let form = parse_fixture(name);
            assert!(!form.case_blocks.is_empty(), "{name} has case blocks");
            assert!(!form.is_device_report(), "{name}");
        }
    }

    #[test]
    fn seed_form_meta_and_create_block() {
        let form = parse_form(&seed_form()).unwrap();
        assert_eq!(
            form.xmlns,
            "http://repeatd.example/forms/seed/tree-planting"
        );
        assert_eq!(form.root_name, "data");
        assert_eq!(form.form_id(), Some("e4b1f7a2-3c58-4d0e-9f61-7a2b8c4d5e90"));
        assert_eq!(
            form.instance_id,
            owned("e4b1f7a2-3c58-4d0e-9f61-7a2b8c4d5e90")
        );
        assert_eq!(
            form.meta,
            FormMeta {
                user_id: owned("3a9f1c07e2b84d65a0c7f2e91b4d8c36"),
                username: owned("danny"),
                device_id: owned("358240051111110"),
                time_start: owned("2015-04-17T16:04:42.383-04"),
                time_end: owned("2015-04-17T16:04:54.950-04"),
                app_version: owned(
                    "repeatd seed app, version \"1.4.2\"(20150417). App v4. \
                     Build 88, built on: April-10-2015"
                ),
            }
        );
        assert_eq!(
            form.case_blocks,
            vec![CaseBlock {
                case_id: "5d0c2a7e-81f4-4b39-a6d2-9e3c70b1f4a8".to_owned(),
                date_modified: owned("2015-04-17T16:04:54.950-04"),
                user_id: owned("3a9f1c07e2b84d65a0c7f2e91b4d8c36"),
                create: create("mscase", "Baobab", Some("3a9f1c07e2b84d65a0c7f2e91b4d8c36")),
                ..CaseBlock::default()
            }]
        );
    }

    #[test]
    fn register_meta_in_legacy_namespace_and_create_with_update() {
        let form = parse_fixture("household_register.xml");
        assert_eq!(
            form.xmlns,
            "http://repeatd.example/forms/household/register"
        );
        assert_eq!(
            form.instance_id,
            owned("0f6c2d1e-8a4b-4c3d-9e2f-1a0b3c4d5e61")
        );
        assert_eq!(
            form.meta,
            FormMeta {
                user_id: owned(ASHA),
                username: owned("asha.w"),
                device_id: owned("RPTD-TAB-0042"),
                time_start: owned("2023-03-14T09:02:11.250+05:30"),
                time_end: owned("2023-03-14T09:05:47.318+05:30"),
                app_version: owned(
                    "repeatd test app 3.1\n\t\t\t(build 17) field tablet\n\t\t\tr:2023-Mar-01"
                ),
            }
        );
        assert_eq!(
            form.case_blocks,
            vec![CaseBlock {
                case_id: HOUSEHOLD.to_owned(),
                date_modified: owned("2023-03-14T09:05:47.318+05:30"),
                user_id: owned(ASHA),
                create: create("household", "Okafor", Some("team_north")),
                update: pairs(&[
                    ("village", "Riverbend"),
                    ("head_name", "Okafor"),
                    ("water_source", "borehole"),
                    ("phone", ""),
                    ("members", "4"),
                    ("latrine", "yes"),
                    ("visit_kind", "register"),
                    ("date_registered", "2023-03-14"),
                ]),
                ..CaseBlock::default()
            }]
        );
    }

    #[test]
    fn members_update_the_household_and_create_indexed_members_in_repeats() {
        let form = parse_fixture("household_members.xml");
        assert_eq!(case_ids(&form), [HOUSEHOLD, CHIDI, ADA]);
        let household = &form.case_blocks[0];
        assert_eq!(household.create, None);
        assert_eq!(household.update.len(), 7);
        assert_eq!(household.update[0], ("members".to_owned(), "5".to_owned()));
        assert_eq!(household.update[5], ("bed_nets".to_owned(), String::new()));
        assert_eq!(
            household.update[6],
            ("date_next_visit".to_owned(), "2023-04-14".to_owned())
        );
        let members = [
            ("Chidi", "male", "2019-08-02", vec!["portrait".to_owned()]),
            ("Ada", "female", "2021-01-20", Vec::new()),
        ];
        for (member, (name, sex, dob, attachments)) in form.case_blocks[1..].iter().zip(members) {
            assert_eq!(member.create, create("member", name, Some("team_north")));
            assert_eq!(member.update, pairs(&[("sex", sex), ("dob", dob)]));
            assert_eq!(
                member.indices,
                [index("household_id", "household", HOUSEHOLD)]
            );
            assert_eq!(member.attachments, attachments, "{name}");
            assert_eq!(
                member.date_modified.as_deref(),
                Some("2023-03-14T09:12:05.904+05:30")
            );
            assert!(!member.close);
        }
    }

    #[test]
    fn visit_updates_three_cases_in_nested_repeats_with_openrosa_meta() {
        let form = parse_fixture("household_visit.xml");
        assert_eq!(form.form_id(), Some("2b8f4031-ac6d-4e5f-9041-3c2d5e6f7a83"));
        assert_eq!(
            form.meta.time_end.as_deref(),
            Some("2023-04-14T10:20:30.512+05:30")
        );
        assert_eq!(case_ids(&form), [HOUSEHOLD, ADA, CHIDI]);
        assert_eq!(
            form.case_blocks[0].update,
            pairs(&[
                ("visit_kind", "followup"),
                ("date_last_visit", "2023-04-14"),
                ("date_next_visit", "2023-05-14"),
                ("nets_seen", "2"),
            ])
        );
        for member in &form.case_blocks[1..] {
            assert_eq!(
                member.update,
                pairs(&[("last_fever", ""), ("weighed", "yes")])
            );
            assert_eq!(member.create, None);
        }
    }

    #[test]
    fn close_closes_three_cases_with_empty_updates() {
        let form = parse_fixture("household_close.xml");
        assert_eq!(form.form_id(), Some("3c9a5142-bd7e-4f60-a152-4d3e6f7a8b94"));
        assert_eq!(case_ids(&form), [HOUSEHOLD, CHIDI, ADA]);
        for block in &form.case_blocks {
            assert!(block.close);
            assert!(block.update.is_empty() && block.create.is_none() && block.indices.is_empty());
            assert_eq!(
                block.date_modified.as_deref(),
                Some("2023-06-01T08:15:00.125+05:30")
            );
        }
    }

    #[test]
    fn clinic_tasks_has_many_subcases() {
        let form = parse_fixture("clinic_tasks.xml");
        assert_eq!(form.form_id(), Some("4dab6253-ce8f-4071-b263-5e4f7a8b9ca5"));
        assert_eq!(form.case_blocks.len(), 11);
        let parent = &form.case_blocks[0];
        assert_eq!(parent.case_id, CLIENT);
        assert_eq!(parent.date_modified.as_deref(), Some("2023-02-10"));
        assert_eq!(
            parent.create,
            create("client", "Nadia", Some("clinic_east_0f1e2d3c4b5a69788796"))
        );
        assert_eq!(parent.update.len(), 10);
        assert_eq!(parent.update[5], ("edd".to_owned(), String::new()));
        let infant = &form.case_blocks[1];
        assert_eq!(infant.case_id, INFANT);
        assert_eq!(infant.indices, [index("mother_id", "client", CLIENT)]);
        let task_names: Vec<_> = form.case_blocks[2..]
            .iter()
            .map(|block| {
                block
                    .create
                    .as_ref()
                    .and_then(|create| create.case_name.as_deref())
                    .unwrap()
            })
            .collect();
        assert_eq!(
            task_names,
            [
                "BCG",
                "OPV 0",
                "OPV 1",
                "Penta 1",
                "PCV 1",
                "Rota 1",
                "Measles 1",
                "TT 2",
                "ANC 2"
            ]
        );
        for (position, task) in form.case_blocks[2..].iter().enumerate() {
            assert_eq!(task.case_id, format!("task-2023-02-20-{:02}", position + 1));
            let referenced = if position < 7 {
                index("person_id", "infant", INFANT)
            } else {
                index("person_id", "client", CLIENT)
            };
            assert_eq!(task.indices, [referenced]);
        }
    }

    #[test]
    fn two_blocks_for_one_case_including_an_empty_one() {
        let form = parse_fixture("two_blocks_one_case.xml");
        assert_eq!(form.root_name, "update_village");
        assert_eq!(form.form_id(), Some("5ebc7364-df90-4182-c374-6f5a8b9cadb6"));
        assert_eq!(
            form.meta.app_version.as_deref(),
            Some("repeatd village app 12\n\t\t\t(phone build) r:--")
        );
        assert_eq!(case_ids(&form), ["VLG-2023-0077", "VLG-2023-0077"]);
        assert_eq!(
            form.case_blocks[0].update,
            pairs(&[
                ("village_code", "400217"),
                ("district", "Lakeside"),
                ("village_name", "Kisoro"),
            ])
        );
        assert_eq!(
            form.case_blocks[1],
            CaseBlock {
                case_id: "VLG-2023-0077".to_owned(),
                date_modified: owned("2023-05-02T06:45:12.040Z"),
                user_id: owned("9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"),
                ..CaseBlock::default()
            }
        );
    }

    #[test]
    fn plain_meta_without_prefix() {
        let form = parse_fixture("plain_meta.xml");
        assert_eq!(form.xmlns, "http://repeatd.example/forms/plain-meta");
        assert_eq!(form.root_name, "form");
        assert_eq!(form.form_id(), Some("c0ffee00c0ffee00c0ffee00c0ffee02"));
        assert_eq!(
            form.meta.user_id.as_deref(),
            Some("c0ffee00c0ffee00c0ffee00c0ffee01")
        );
        assert_eq!(form.meta.device_id.as_deref(), Some("kiosk-3"));
        assert_eq!(
            form.case_blocks,
            vec![CaseBlock {
                case_id: "c0ffee00c0ffee00c0ffee00c0ffee03".to_owned(),
                date_modified: owned("2022-11-08T14:20:05"),
                user_id: owned("c0ffee00c0ffee00c0ffee00c0ffee01"),
                create: create("water_point", "North well", None),
                update: pairs(&[("external_id", "WP-118")]),
                ..CaseBlock::default()
            }]
        );
    }

    #[test]
    fn ledger_form_legacy_uid_and_capitalised_meta() {
        let form = parse_fixture("ledger_legacy_uid.xml");
        assert_eq!(form.form_id(), Some("7f7f00aa11bb22cc33dd44ee55ff6601"));
        assert_eq!(form.meta.device_id.as_deref(), Some("store-tablet"));
        assert_eq!(
            form.meta.time_end.as_deref(),
            Some("2022-09-30T16:12:34.567")
        );
        assert_eq!(
            case_ids(&form),
            [
                "stock-depot-west-a",
                "stock-depot-west-a",
                "stock-depot-west-b"
            ],
            "the ledger balance is no case block"
        );
        let first = &form.case_blocks[0];
        assert_eq!(first.create, create("stock_item", "ORS sachets", Some("-")));
        assert_eq!(
            first.update,
            pairs(&[
                ("unit", "box"),
                ("reorder-level", "40"),
                ("supplier", "central"),
                ("owner_id", "depot_west_6b7c8d9e0f1a2b3c"),
                ("period", "2022-Q3"),
            ])
        );
        assert!(!first.close);
        assert!(form.case_blocks[1].close && form.case_blocks[1].update.is_empty());
        assert_eq!(form.case_blocks[2].update, first.update);
    }

    #[test]
    fn bare_create_update_close_and_index() {
        let block = |name| parse_fixture(name).case_blocks.remove(0);
        let created = block("bare_create.xml");
        assert_eq!(created.case_id, "bare-case-1");
        assert_eq!(created.user_id.as_deref(), Some("bare-user-1"));
        assert_eq!(
            created.date_modified.as_deref(),
            Some("2021-07-01T08:00:00")
        );
        assert_eq!(created.create, create("site_visit", "first visit", None));
        let bare = parse_fixture("bare_create.xml");
        assert!(bare.instance_id.is_none() && bare.meta == FormMeta::default());

        let updated = block("bare_update.xml");
        assert_eq!(
            updated.update,
            pairs(&[
                ("case_type", "site_inspection"),
                ("case_name", "renamed visit"),
                ("outcome", "passed with notes"),
            ])
        );
        assert_eq!(updated.create, None);

        let closed = block("bare_close.xml");
        assert!(closed.close && closed.update.is_empty());

        let indexed = block("bare_index.xml");
        assert_eq!(
            indexed.indices,
            [
                index("site_ref", "site", "site-17"),
                IndexChange {
                    relationship: owned("extension"),
                    ..index("host_ref", "site", "site-18")
                },
            ]
        );
    }

    #[test]
    fn v1_blocks_in_repeats_are_converted() {
        let form = parse_fixture("v1_cases_in_repeats.xml");
        assert_eq!(form.form_id(), Some("V1LITTER00000000000000001"));
        assert_eq!(
            case_ids(&form),
            [
                "v1-piglet-0001",
                "v1-piglet-0003",
                "V1SOW0000000000000000S88"
            ]
        );
        let first = &form.case_blocks[0];
        assert_eq!(
            first.date_modified.as_deref(),
            Some("2020-10-05T17:45:10.250Z")
        );
        assert_eq!(first.user_id, None);
        assert_eq!(first.create, create("piglet", "S-88 litter", None));
        assert_eq!(
            first.update,
            pairs(&[
                ("user_id", "V1USER00000000000000000AA"),
                ("external_id", "v1-piglet-0001"),
                ("sex", "f"),
                ("farm", "hilltop"),
                ("pen", "7"),
                ("ear_notch", ""),
                ("weight_kg", "1.4"),
            ])
        );
        assert!(!first.close);
        assert_eq!(
            form.case_blocks[1].update[2],
            ("sex".to_owned(), "m".to_owned())
        );
        let sow = &form.case_blocks[2];
        assert_eq!(sow.create, create("sow", "S-88", None));
        assert_eq!(sow.update.len(), 4);
        assert_eq!(
            sow.update[3],
            ("farrowing_date".to_owned(), "2020-10-05".to_owned())
        );
        assert!(sow.close);
    }

    #[test]
    fn device_report_fixture_is_a_device_report() {
        let form = parse_form(&read_fixture_file("device_report.xml")).unwrap();
        assert!(form.is_device_report());
        assert_eq!(form.root_name, "device_report");
        assert!(
            form.case_blocks.is_empty(),
            "no case blocks in a device log"
        );
    }

    #[test]
    fn v1_case_without_case_id_element_is_form_data() {
        let form =
            parse_form(b"<data xmlns='urn:x'><case><name>n</name></case><other/></data>").unwrap();
        assert!(form.case_blocks.is_empty());
        let error =
            parse_form(b"<data><case><case_id> </case_id><update><a>1</a></update></case></data>");
        assert_eq!(
            error.unwrap_err().to_string(),
            "case block 1 has no case_id"
        );
    }

    #[test]
    fn case_elements_in_other_namespaces_are_ignored() {
        let xml = b"<data xmlns='urn:x' xmlns:o='urn:other'><o:case case_id='a'><o:case_id>a</o:case_id></o:case></data>";
        assert!(parse_form(xml).unwrap().case_blocks.is_empty());
    }

    #[test]
    fn values_are_unescaped_trimmed_and_eol_normalised() {
        let xml = "<data xmlns:c='http://commcarehq.org/case/transaction/v2'>\
            <c:case case_id=' a&amp;b ' user_id='' date_modified='2015-04-17'>\
            <c:create><c:case_name>\r\n  Tom &amp; Jerry &#x41;&#66; <![CDATA[<raw>]]>\n</c:case_name></c:create>\
            <c:update><c:note>line one\r\nline two</c:note><c:nested>x<c:inner>y</c:inner>z</c:nested></c:update>\
            </c:case></data>";
        let block = parse_form(xml.as_bytes()).unwrap().case_blocks.remove(0);
        assert_eq!(block.case_id, "a&b");
        assert_eq!(block.user_id, None);
        assert_eq!(
            block.create.unwrap().case_name.as_deref(),
            Some("Tom & Jerry AB <raw>")
        );
        assert_eq!(
            block.update,
            pairs(&[("note", "line one\nline two"), ("nested", "xyz")])
        );
    }

    #[test]
    fn index_relationship_removal_and_attachments() {
        let xml = br#"<data><case xmlns="http://commcarehq.org/case/transaction/v2" case_id="c1">
            <index><host case_type="site" relationship="extension">s1</host><parent case_type="person"/></index>
            <attachment><photo src="a.jpg" from="local"/><voice/><photo/></attachment>
            <create><case_type>t</case_type><external_id>e1</external_id><unknown>x</unknown></create>
            </case></data>"#;
        let block = parse_form(xml).unwrap().case_blocks.remove(0);
        assert_eq!(
            block.indices,
            [
                IndexChange {
                    relationship: owned("extension"),
                    ..index("host", "site", "s1")
                },
                index("parent", "person", ""),
            ]
        );
        assert_eq!(block.attachments, ["photo", "voice"]);
        assert_eq!(
            block.create,
            Some(CreateBlock {
                case_type: owned("t"),
                ..CreateBlock::default()
            })
        );
        assert_eq!(block.update, pairs(&[("external_id", "e1")]));
    }

    #[test]
    fn empty_create_element_is_not_a_create() {
        let xml = br#"<d><case xmlns="http://commcarehq.org/case/transaction/v2" case_id="c"><create/></case></d>"#;
        assert_eq!(parse_form(xml).unwrap().case_blocks[0].create, None);
    }

    #[test]
    fn index_without_case_type_is_refused() {
        let xml = br#"<d><case xmlns="http://commcarehq.org/case/transaction/v2" case_id="c"><index><parent>p</parent></index></case></d>"#;
        assert_eq!(
            parse_form(xml).unwrap_err().to_string(),
            "case block 1 has an index `parent` without a case_type"
        );
    }

    #[test]
    fn device_report_parses_without_case_blocks() {
        let xml = br#"<?xml version='1.0'?>
<device_report xmlns="http://code.javarosa.org/devicereport">
  <device_id>354957031935664</device_id>
  <log_subreport><log date="2012-10-08T15:02:15.000+05:30"><type>login</type><msg>u</msg></log></log_subreport>
  <case xmlns="http://commcarehq.org/case/transaction/v2" case_id="x"/>
</device_report>"#;
        let form = parse_form(xml).unwrap();
        assert!(form.is_device_report());
        assert_eq!(form.root_name, "device_report");
        assert!(form.case_blocks.is_empty());
    }

    #[test]
    fn instance_id_is_preferred_to_legacy_uid_and_byte_order_mark_is_skipped() {
        let xml = "\u{FEFF}<f><meta><uid>legacy</uid><instanceID> new </instanceID></meta></f>";
        let form = parse_form(xml.as_bytes()).unwrap();
        assert_eq!(form.form_id(), Some("new"));
        assert_eq!(form.xmlns, "");
        let nested_meta =
            parse_form(b"<f><group><meta><instanceID>x</instanceID></meta></group></f>").unwrap();
        assert_eq!(
            nested_meta.form_id(),
            None,
            "meta is only looked for under the root"
        );
    }

    /// A form whose one case block sets `name` to `value`, declaring `encoding`.
    fn form_declaring(encoding: &str, value: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding='{encoding}' ?>\n<data xmlns=\"http://example.org/enc\"><n0:case xmlns:n0=\"http://commcarehq.org/case/transaction/v2\" case_id=\"c1\"><n0:update><n0:name>{value}</n0:name></n0:update></n0:case><meta><instanceID>f-{value}</instanceID></meta></data>"
        )
    }

    fn name_property(form: &ParsedForm) -> &str {
        &form.case_blocks[0].update[0].1
    }

    fn utf16(text: &str, little_endian: bool, mark: bool) -> Vec<u8> {
        let units = mark
            .then_some(0xFEFF)
            .into_iter()
            .chain(text.encode_utf16());
        units
            .flat_map(|unit| match little_endian {
                true => unit.to_le_bytes(),
                false => unit.to_be_bytes(),
            })
            .collect()
    }

    #[test]
    fn a_declared_single_byte_encoding_is_decoded_for_parsing() {
        let latin1 = form_declaring("ISO-8859-1", "Jos\u{e9} M\u{fc}ller");
        let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&latin1);
        assert!(!unmappable);
        assert!(bytes.contains(&0xE9), "é is one byte in Latin-1");
        let form = parse_form(&bytes).unwrap();
        assert_eq!(name_property(&form), "Jos\u{e9} M\u{fc}ller");
        assert_eq!(form.form_id(), Some("f-Jos\u{e9} M\u{fc}ller"));
        assert_eq!(decode_xml(&bytes).unwrap(), latin1);

        // Windows-1252's own characters (0x80 is the euro sign), label in any case.
        let mut cp1252 = form_declaring("windows-1252", "5 EUR").into_bytes();
        let at = cp1252.windows(3).position(|w| w == b"EUR").unwrap();
        cp1252.splice(at..at + 3, [0x80]);
        assert_eq!(name_property(&parse_form(&cp1252).unwrap()), "5 \u{20ac}");
        let shouting = form_declaring("LATIN1", "\u{e7}a");
        let (shouting, _, _) = encoding_rs::WINDOWS_1252.encode(&shouting);
        assert_eq!(name_property(&parse_form(&shouting).unwrap()), "\u{e7}a");
    }

    #[test]
    fn utf16_with_a_byte_order_mark_or_recognisable_without_one_is_decoded() {
        let text = form_declaring("UTF-16", "\u{4e2d}\u{6587} caf\u{e9}");
        for (little_endian, mark) in [(true, true), (false, true), (true, false), (false, false)] {
            let bytes = utf16(&text, little_endian, mark);
            let form = parse_form(&bytes)
                .unwrap_or_else(|e| panic!("le {little_endian} mark {mark}: {e}"));
            assert_eq!(name_property(&form), "\u{4e2d}\u{6587} caf\u{e9}");
            assert_eq!(
                decode_xml(&bytes).unwrap(),
                text,
                "the mark is not part of the text"
            );
        }
        // A UTF-8 byte-order mark without a declaration is honoured too.
        let marked = [b"\xEF\xBB\xBF".as_slice(), "<d>\u{e9}</d>".as_bytes()].concat();
        assert_eq!(decode_xml(&marked).unwrap(), "<d>\u{e9}</d>");
        // The mark wins over a declaration that says otherwise.
        let marked = [
            b"\xEF\xBB\xBF".as_slice(),
            form_declaring("ISO-8859-1", "\u{e9}").as_bytes(),
        ]
        .concat();
        assert_eq!(name_property(&parse_form(&marked).unwrap()), "\u{e9}");
    }

    #[test]
    fn an_unknown_or_impossible_encoding_is_refused_by_name() {
        assert_eq!(
            error_of(form_declaring("klingon", "x").as_bytes()),
            "unknown XML encoding \"klingon\""
        );
        assert_eq!(
            error_of(form_declaring("hz-gb-2312", "x").as_bytes()),
            "XML encoding \"hz-gb-2312\" is not supported"
        );
        assert_eq!(
            error_of(form_declaring("UTF-16", "x").as_bytes()),
            "the XML declaration names encoding \"UTF-16\", but the body is not UTF-16: it has no byte-order mark"
        );
        // Bytes that are not of the declared encoding: where, and which encoding.
        let mut shift_jis = form_declaring("Shift_JIS", "ab").into_bytes();
        let at = shift_jis.windows(2).position(|w| w == b"ab").unwrap();
        shift_jis.splice(at..at + 2, [0x82, 0x20]);
        assert_eq!(
            error_of(&shift_jis),
            "not well-formed XML at line 2, column 133: invalid Shift_JIS"
        );
        let unpaired_surrogate = [
            utf16("<d>", true, true),
            vec![0x00, 0xD8],
            utf16("</d>", true, false),
        ]
        .concat();
        assert!(
            error_of(&unpaired_surrogate).ends_with("invalid UTF-16LE"),
            "{}",
            error_of(&unpaired_surrogate)
        );
    }

    #[test]
    fn a_body_is_shown_as_text_in_its_own_encoding_when_it_is_xml() {
        let latin1 = b"<?xml version='1.0' encoding='ISO-8859-1'?><d>Jos\xE9</d>";
        let decoded = "<?xml version='1.0' encoding='ISO-8859-1'?><d>Jos\u{e9}</d>";
        assert_eq!(body_text("text/xml", latin1), decoded);
        assert_eq!(body_text("Application/XML; charset=x", latin1), decoded);
        assert_eq!(body_text("application/atom+xml", latin1), decoded);
        let lossy = "<?xml version='1.0' encoding='ISO-8859-1'?><d>Jos\u{FFFD}</d>";
        assert_eq!(body_text("application/json", latin1), lossy);
        assert_eq!(body_text("text/xml", b"\xFF<d/>"), "\u{FFFD}<d/>");
    }

    #[test]
    fn only_a_declaration_at_the_start_names_the_encoding() {
        // Not a declaration: UTF-8 is assumed, and Latin-1 bytes are then invalid.
        let late = b"<d><?xml version='1.0' encoding='ISO-8859-1'?>\xE9</d>";
        assert!(
            error_of(late).ends_with("invalid UTF-8"),
            "{}",
            error_of(late)
        );
        assert_eq!(declared_encoding(b"<?xml version=\"1.0\"?><d/>"), None);
        assert_eq!(
            declared_encoding(b"<?xml-stylesheet encoding='x'?><d/>"),
            None
        );
        assert_eq!(
            declared_encoding(b"<?xml version = '1.0'  encoding = \" latin1 \" standalone='yes'?>"),
            Some("latin1")
        );
        assert_eq!(
            declared_encoding(b"<?xml version='1.0' encoding='never closed"),
            None
        );
    }

    fn error_of(xml: &[u8]) -> String {
        match parse_form(xml) {
            Ok(form) => panic!("{:?} parsed: {form:?}", String::from_utf8_lossy(xml)),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn malformed_inputs_name_the_problem() {
        assert_eq!(error_of(b""), "empty body");
        assert_eq!(error_of(b" \r\n\t"), "empty body");
        assert_eq!(
            error_of(b"<?xml version='1.0'?>\n<!-- nothing -->\n"),
            "no root element"
        );
        assert_eq!(
            error_of(b"<a/>\n<b/>"),
            "more than one root element: another one starts at line 2, column 1"
        );
        assert_eq!(
            error_of(b"<a></a>\n  junk"),
            "text after the root element at line 2, column 3"
        );
        assert_eq!(
            error_of(b"<a/>&amp;"),
            "text after the root element at line 1, column 5"
        );
        assert!(
            error_of(b"junk<a/>")
                .starts_with("not well-formed XML at line 1, column 1: text before")
        );
        assert!(
            error_of(b"<a>\n <b>\n </c></a>")
                .starts_with("not well-formed XML at line 3, column 2"),
            "{}",
            error_of(b"<a>\n <b>\n </c></a>")
        );
        assert!(error_of(b"<a>\n<b>").starts_with("not well-formed XML at line 2, column 4"));
        assert!(error_of(b"<a>&bogus;</a>").contains("undefined entity `&bogus;`"));
        assert!(error_of(b"<a>& b</a>").starts_with("not well-formed XML at line 1"));
        assert!(error_of(b"<a><n:b/></a>").contains("undeclared namespace prefix `n`"));
        assert!(
            error_of(b"<a x='1' x='2'/>").starts_with("not well-formed XML at line 1, column 1")
        );
        assert!(error_of(b"<a x=1/>").starts_with("not well-formed XML"));
        assert!(
            error_of(b"<a>\n\xC3\x28</a>")
                .starts_with("not well-formed XML at line 2, column 1: invalid UTF-8")
        );
        assert!(error_of(b"<a><!-- never closed</a>").starts_with("not well-formed XML"));
        assert!(error_of(b"not xml at all").starts_with("not well-formed XML"));
        assert!(error_of(b"{\"json\": true}").starts_with("not well-formed XML"));
    }

    #[test]
    fn case_block_without_case_id_names_the_block() {
        let xml = br#"<data xmlns:n0="http://commcarehq.org/case/transaction/v2">
            <n0:case case_id="one"><n0:close/></n0:case>
            <g><n0:case user_id="u"><n0:update><n0:p>1</n0:p></n0:update></n0:case></g>
        </data>"#;
        assert_eq!(error_of(xml), "case block 2 has no case_id");
        assert_eq!(
            error_of(
                br#"<d><case xmlns="http://commcarehq.org/case/transaction/v2" case_id=" "/></d>"#
            ),
            "case block 1 has no case_id"
        );
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_and_column(b"ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column(b"ab\ncd", 4), (2, 2));
        assert_eq!(line_and_column("é\né€x".as_bytes(), 8), (2, 3));
        assert_eq!(line_and_column(b"ab", 99), (1, 3));
    }

    fn all_inputs() -> Vec<Vec<u8>> {
        let mut inputs: Vec<Vec<u8>> = FIXTURE_NAMES.iter().map(|name| fixture(name)).collect();
        inputs.push(seed_form());
        inputs
    }

    /// One edit of a byte string: `kind` picks delete, insert, replace or truncate.
    fn mutate(input: &mut Vec<u8>, kind: u8, position: usize, length: usize, bytes: &[u8]) {
        let position = position % (input.len() + 1);
        match kind % 4 {
            0 => {
                let end = (position + length).min(input.len());
                input.drain(position..end);
            }
            1 => {
                input.splice(position..position, bytes.iter().copied());
            }
            2 => {
                for (offset, byte) in bytes.iter().enumerate() {
                    if let Some(slot) = input.get_mut(position + offset) {
                        *slot = *byte;
                    }
                }
            }
            _ => input.truncate(position),
        }
    }

    fn check_outcome(input: &[u8]) {
        match parse_form(input) {
            Ok(form) => {
                assert!(!form.root_name.is_empty());
                for block in &form.case_blocks {
                    assert!(!block.case_id.is_empty());
                }
            }
            Err(error) => {
                let message = error.to_string();
                assert!(!message.is_empty() && !message.ends_with('.'), "{message}");
                assert!(
                    message.starts_with(|first: char| first.is_ascii_lowercase()),
                    "{message}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The fuzz target: arbitrary bytes never make the parser panic.
        #[test]
        fn arbitrary_bytes_give_a_form_or_a_typed_error(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_outcome(&input);
        }

        /// Arbitrary bytes wrapped in a root and a case block reach deeper states.
        #[test]
        fn arbitrary_content_inside_a_case_block(content in "[<>/&;#x0-9a-z:='\" \\n]{0,200}") {
            let xml = format!(
                "<d xmlns:n='http://commcarehq.org/case/transaction/v2'><n:case case_id='c'>{content}</n:case></d>"
            );
            check_outcome(xml.as_bytes());
        }

        /// Real submissions with random edits: deletions, insertions of XML-ish
        /// bytes, overwrites and truncation.
        #[test]
        fn mutated_fixtures_give_a_form_or_a_typed_error(
            fixture_index in 0usize..14,
            edits in proptest::collection::vec(
                (any::<u8>(), any::<usize>(), 0usize..64, proptest::collection::vec(
                    prop_oneof![Just(b'<'), Just(b'>'), Just(b'/'), Just(b'&'), Just(b'"'), Just(b'='), Just(b':'), any::<u8>()],
                    0..8,
                )),
                1..6,
            ),
        ) {
            let mut input = all_inputs().swap_remove(fixture_index);
            for (kind, position, length, bytes) in &edits {
                mutate(&mut input, *kind, *position, *length, bytes);
            }
            check_outcome(&input);
        }
    }
}
