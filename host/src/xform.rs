//! Streaming parse of one XForm submission: the root element's namespace and name,
//! the `meta` block (form id, user, device, times, app version) and every case
//! block in document order, converted to [`CaseBlock`]s that `cases` applies. It
//! also decides which bodies are rejected (empty, not well-formed, no root, a case
//! block without `case_id`, content after the root) and names the problem.
//!
//! The parser reads quick-xml events straight from the request body, never builds
//! a tree of the whole form and allocates only for the values it keeps. What it
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

use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// Namespace of v2 case blocks.
pub const CASE_XMLNS: &str = "http://commcarehq.org/case/transaction/v2";
/// Namespace of the OpenRosa `meta` block.
pub const META_XMLNS: &str = "http://openrosa.org/jr/xforms";
/// Root namespace of device logs, which never carry case changes.
pub const DEVICE_REPORT_XMLNS: &str = "http://code.javarosa.org/devicereport";

/// The `meta` block of a form. Values are trimmed; empty values are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FormMeta {
    /// `instanceID`, or the legacy `uid` when there is no `instanceID`.
    pub instance_id: Option<String>,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub device_id: Option<String>,
    pub time_start: Option<String>,
    pub time_end: Option<String>,
    pub app_version: Option<String>,
}

/// What the gateway needs from a submission; the XML itself is kept byte for byte
/// elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedForm {
    /// The root element's namespace, empty when it has none.
    pub xmlns: String,
    /// The root element's local name.
    pub root_name: String,
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
        self.meta.instance_id.as_deref()
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
    if xml.iter().all(u8::is_ascii_whitespace) {
        return Err(XFormError::EmptyBody);
    }
    if let Err(utf8_error) = std::str::from_utf8(xml) {
        let (line, column) = line_and_column(xml, utf8_error.valid_up_to());
        return Err(XFormError::NotWellFormed {
            line,
            column,
            problem: "invalid UTF-8".to_owned(),
        });
    }
    const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";
    let body_offset = if xml.starts_with(BYTE_ORDER_MARK) {
        BYTE_ORDER_MARK.len()
    } else {
        0
    };
    FormParser::new(xml, body_offset).run()
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
    /// The whole input, for line and column numbers.
    source: &'i [u8],
    /// Offset of `reader`'s input within `source` (a byte-order mark is skipped).
    body_offset: usize,
    depth: usize,
    root_namespace: Option<Vec<u8>>,
    root_name: Option<String>,
    root_closed: bool,
    is_device_report: bool,
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
    fn new(source: &'i [u8], body_offset: usize) -> Self {
        let mut reader = NsReader::from_reader(&source[body_offset..]);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
        FormParser {
            reader,
            source,
            body_offset,
            depth: 0,
            root_namespace: None,
            root_name: None,
            root_closed: false,
            is_device_report: false,
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
            let event_start = self.body_offset + self.reader.buffer_position() as usize;
            let (resolution, event) = match self.reader.read_resolved_event() {
                Ok(resolved) => resolved,
                Err(error) => {
                    let position = self.body_offset + self.reader.error_position() as usize;
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
                    } else if self.text_target.is_some() {
                        let content = text.xml_content().map_err(|error| {
                            self.not_well_formed(event_start, error.to_string())
                        })?;
                        self.text.push_str(&content);
                    }
                }
                Event::CData(cdata) => {
                    if self.depth == 0 {
                        return Err(self.content_outside_root(event_start));
                    }
                    if self.text_target.is_some() {
                        let content = cdata.xml_content().map_err(|error| {
                            self.not_well_formed(event_start, error.to_string())
                        })?;
                        self.text.push_str(&content);
                    }
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
                    MetaField::InstanceId => &mut self.meta.instance_id,
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
        self.body_offset + self.reader.buffer_position() as usize
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
        if self.meta.instance_id.is_none() {
            self.meta.instance_id = self.legacy_uid.take();
        }
        let xmlns =
            String::from_utf8_lossy(&self.root_namespace.take().unwrap_or_default()).into_owned();
        Ok(ParsedForm {
            xmlns,
            root_name,
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

    const FIXTURE_NAMES: [&str; 13] = [
        "basic_close.xml",
        "basic_create.xml",
        "basic_update.xml",
        "case_in_repeats.xml",
        "case_ledger_form.xml",
        "cf.xml",
        "close.xml",
        "form_with_case.xml",
        "index_update.xml",
        "lots_of_subcases.xml",
        "multiple_case_blocks.xml",
        "reg1.xml",
        "reg2.xml",
    ];

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures/commcare/{}"
            ),
            name
        );
        std::fs::read(&path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"))
    }

    fn seed_form() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/acceptance/seed_form.xml"
        );
        std::fs::read(path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"))
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
            "http://openrosa.org/formdesigner/B9C4EB51-A7CC-49B5-B7D5-10E9F10B450B"
        );
        assert_eq!(form.root_name, "data");
        assert_eq!(form.form_id(), Some("afcb3026-c4b3-463f-85ec-0cb9a2737fc5"));
        assert_eq!(
            form.meta,
            FormMeta {
                instance_id: owned("afcb3026-c4b3-463f-85ec-0cb9a2737fc5"),
                user_id: owned("d0e472a6b36dfd3ee5059222e12b8c1b"),
                username: owned("danny"),
                device_id: owned("990005013558458"),
                time_start: owned("2015-04-17T16:04:42.383-04"),
                time_end: owned("2015-04-17T16:04:54.950-04"),
                app_version: owned(
                    "CommCare ODK, version \"2.19.8\"(350848). App v10. CommCare Version 2.19. \
                     Build 1000, built on: January-22-2015"
                ),
            }
        );
        assert_eq!(
            form.case_blocks,
            vec![CaseBlock {
                case_id: "b0916685-7247-4c44-b712-633d3d64e0c0".to_owned(),
                date_modified: owned("2015-04-17T16:04:54.950-04"),
                user_id: owned("d0e472a6b36dfd3ee5059222e12b8c1b"),
                create: create("mscase", "Trees", Some("d0e472a6b36dfd3ee5059222e12b8c1b")),
                ..CaseBlock::default()
            }]
        );
    }

    #[test]
    fn reg1_meta_in_legacy_namespace_and_create_with_update() {
        let form = parse_fixture("reg1.xml");
        assert_eq!(form.xmlns, "http://bihar.commcarehq.org/pregnancy/new");
        assert_eq!(
            form.meta.instance_id.as_deref(),
            Some("8c4a4668-6be0-4f32-a1fd-e4d4e3ba2019")
        );
        assert_eq!(
            form.meta.user_id.as_deref(),
            Some("67bffa913b38e7901851d863ededa475")
        );
        assert_eq!(form.meta.username.as_deref(), Some("sheel.test"));
        assert_eq!(
            form.meta.device_id.as_deref(),
            Some("71WALRV4IXH2FRM86XPE9QYW3")
        );
        assert_eq!(
            form.meta.time_start.as_deref(),
            Some("2012-05-25T15:27:12.178+05:30")
        );
        assert_eq!(
            form.meta.time_end.as_deref(),
            Some("2012-05-25T15:27:38.490+05:30")
        );
        assert_eq!(
            form.meta.app_version.as_deref(),
            Some(
                "v2.0.0dev\n\t\t\t(7d4efc-006e8e-unvers-2.1.0-Nokia/S40-native-input) #13 b:2012-May-25\n\t\t\tr:2012-May-25"
            )
        );
        assert_eq!(
            form.case_blocks,
            vec![CaseBlock {
                case_id: "9dbce942-0163-438b-b3e5-67b473d2f719".to_owned(),
                date_modified: owned("2012-05-25T15:27:38.490+05:30"),
                user_id: owned("67bffa913b38e7901851d863ededa475"),
                create: create("cc_bihar_pregnancy", "Ad", Some("main_user")),
                update: pairs(&[
                    ("last_visit_type", "new"),
                    ("date_last_visit", "2012-05-25"),
                    ("date_next_reg", "2012-05-25"),
                    ("mother_alive", "yes"),
                    ("mother_name", "Ad"),
                    ("husband_name", ""),
                    ("hh_number", ""),
                    ("family_number", "2"),
                    ("mother_dob", "1990-05-25"),
                ]),
                ..CaseBlock::default()
            }]
        );
    }

    #[test]
    fn reg2_updates_mother_and_creates_indexed_children_in_repeats() {
        let form = parse_fixture("reg2.xml");
        assert_eq!(
            case_ids(&form),
            [
                "9dbce942-0163-438b-b3e5-67b473d2f719",
                "17e36de1-b9de-423c-a6a6-605d291ec976",
                "7b58fd8f-1bb8-4978-99a6-7b5d9826c1f9"
            ]
        );
        let mother = &form.case_blocks[0];
        assert_eq!(mother.create, None);
        assert_eq!(mother.update.len(), 14);
        assert_eq!(
            mother.update[0],
            ("mobile_number".to_owned(), "358623242".to_owned())
        );
        assert_eq!(mother.update[7], ("edd".to_owned(), String::new()));
        assert_eq!(
            mother.update[13],
            ("date_next_cf".to_owned(), "2012-05-26".to_owned())
        );
        for (child, name) in form.case_blocks[1..].iter().zip(["C1", "C2"]) {
            assert_eq!(
                child.create,
                create("cc_bihar_newborn", name, Some("main_user"))
            );
            assert_eq!(
                child.update,
                pairs(&[("gender", "female"), ("dob", "2011-11-25")])
            );
            assert_eq!(
                child.indices,
                [index(
                    "mother_id",
                    "cc_bihar_pregnancy",
                    "9dbce942-0163-438b-b3e5-67b473d2f719"
                )]
            );
            assert_eq!(
                child.date_modified.as_deref(),
                Some("2012-05-25T15:30:31.704+05:30")
            );
            assert!(!child.close);
        }
    }

    #[test]
    fn cf_updates_three_cases_with_openrosa_meta() {
        let form = parse_fixture("cf.xml");
        assert_eq!(
            form.meta.instance_id.as_deref(),
            Some("d66482bf-874e-42d9-b2b7-620ba6e4b3b3")
        );
        assert_eq!(
            form.meta.time_end.as_deref(),
            Some("2012-05-25T15:31:38.109+05:30")
        );
        assert_eq!(
            case_ids(&form),
            [
                "9dbce942-0163-438b-b3e5-67b473d2f719",
                "7b58fd8f-1bb8-4978-99a6-7b5d9826c1f9",
                "17e36de1-b9de-423c-a6a6-605d291ec976"
            ]
        );
        assert_eq!(
            form.case_blocks[0].update,
            pairs(&[
                ("last_visit_type", "cf"),
                ("date_last_visit", "2012-05-25"),
                ("date_cf_1", "2012-05-25"),
                ("date_next_cf", "2012-06-24"),
            ])
        );
        for child in &form.case_blocks[1..] {
            assert_eq!(child.update, pairs(&[("baby_measles", "")]));
            assert_eq!(child.create, None);
        }
    }

    #[test]
    fn close_closes_three_cases_with_empty_updates() {
        let form = parse_fixture("close.xml");
        assert_eq!(
            form.meta.instance_id.as_deref(),
            Some("b45aeae8-ba55-4541-ae2e-0ead6b5e1f31")
        );
        assert_eq!(form.case_blocks.len(), 3);
        for block in &form.case_blocks {
            assert!(block.close);
            assert!(block.update.is_empty() && block.create.is_none() && block.indices.is_empty());
            assert_eq!(
                block.date_modified.as_deref(),
                Some("2012-05-26T08:41:37.259+05:30")
            );
        }
    }

    #[test]
    fn lots_of_subcases() {
        let form = parse_fixture("lots_of_subcases.xml");
        assert_eq!(
            form.meta.instance_id.as_deref(),
            Some("e9d6bb33-783d-4978-a2e0-762b42e87b9d")
        );
        assert_eq!(form.case_blocks.len(), 11);
        let parent = &form.case_blocks[0];
        assert_eq!(parent.case_id, "f8b34e0c744f8f45dfa12e28617e5716");
        assert_eq!(parent.date_modified.as_deref(), Some("2012-04-19"));
        assert_eq!(
            parent.create,
            create(
                "cc_bihar_pregnancy",
                "Ashish",
                Some("3c5a80e4db53049dfc110c368a0d282b")
            )
        );
        assert_eq!(parent.update.len(), 20);
        assert_eq!(parent.update[6], ("edd".to_owned(), String::new()));
        let child = &form.case_blocks[1];
        assert_eq!(
            child.indices,
            [index(
                "mother_id",
                "cc_bihar_pregnancy",
                "f8b34e0c744f8f45dfa12e28617e5716"
            )]
        );
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
                "DPT 1", "BCG", "OPV 0", "HEP B 0", "Measles", "VIT A 1", "JE", "TT 1", "ANC 1"
            ]
        );
        for (position, task) in form.case_blocks[2..].iter().enumerate() {
            assert_eq!(
                task.case_id,
                format!("763ca815-df9c-4037-9f0e-6edd2af8ba6c{}", position + 1)
            );
            let referenced = if position < 7 {
                index(
                    "person_id",
                    "cc_bihar_newborn",
                    "7554c7f4-fc96-4b1d-aec8-8890e96ffc54",
                )
            } else {
                index(
                    "person_id",
                    "cc_bihar_pregnancy",
                    "f8b34e0c744f8f45dfa12e28617e5716",
                )
            };
            assert_eq!(task.indices, [referenced]);
        }
    }

    #[test]
    fn multiple_case_blocks_for_one_case_including_an_empty_one() {
        let form = parse_fixture("multiple_case_blocks.xml");
        assert_eq!(form.root_name, "update_community");
        assert_eq!(
            form.meta.instance_id.as_deref(),
            Some("50cd023e-652c-4e8b-82a9-e0e13a9c0ce8")
        );
        assert_eq!(
            form.meta.app_version.as_deref(),
            Some("v2.0.0dev\n\t\t\t(ceb54e-7d748d-unvers-??-Generic/AnyPhone) b:2012-May-31 r:--")
        );
        assert_eq!(
            case_ids(&form),
            ["MCLPZ69ON942EKNIBR5WF1G2L", "MCLPZ69ON942EKNIBR5WF1G2L"]
        );
        assert_eq!(
            form.case_blocks[0].update,
            pairs(&[
                ("community_code", "1630005"),
                ("district_name", "SantaMariaCahabon"),
                ("community_name", "TAMERLO"),
            ])
        );
        assert_eq!(
            form.case_blocks[1],
            CaseBlock {
                case_id: "MCLPZ69ON942EKNIBR5WF1G2L".to_owned(),
                date_modified: owned("2012-05-31T07:06:31.379Z"),
                user_id: owned("de7abbf6d898ae2d7dcd2bdc79f2785c"),
                ..CaseBlock::default()
            }
        );
    }

    #[test]
    fn form_with_case_unprefixed_meta() {
        let form = parse_fixture("form_with_case.xml");
        assert_eq!(form.xmlns, "http://commcarehq.org/test/submit");
        assert_eq!(form.root_name, "form");
        assert_eq!(
            form.meta.instance_id.as_deref(),
            Some("ad38211be256653bceac8e2156475666")
        );
        assert_eq!(
            form.meta.user_id.as_deref(),
            Some("ad38211be256653bceac8e2156475665")
        );
        assert_eq!(form.meta.device_id.as_deref(), Some("Chalimbana"));
        assert_eq!(
            form.case_blocks,
            vec![CaseBlock {
                case_id: "ad38211be256653bceac8e2156475667".to_owned(),
                date_modified: owned("2010-06-29T13:42:50"),
                user_id: owned("ad38211be256653bceac8e2156475665"),
                create: create("test_case_type", "test case name", None),
                update: pairs(&[("external_id", "someexternal")]),
                ..CaseBlock::default()
            }]
        );
    }

    #[test]
    fn case_ledger_form_legacy_uid_and_capitalised_meta() {
        let form = parse_fixture("case_ledger_form.xml");
        assert_eq!(form.form_id(), Some("ad38211be256653bceac8e2156475664"));
        assert_eq!(form.meta.device_id.as_deref(), Some("myphone"));
        assert_eq!(
            form.meta.time_end.as_deref(),
            Some("2010-06-29T13:55:50.137")
        );
        assert_eq!(
            case_ids(&form),
            [
                "fbb69a88-1eca-463a-883e-1148b96fb03b",
                "fbb69a88-1eca-463a-883e-1148b96fb03b",
                "fbb69a88-1eca-463a-883e-1148b96fb03c"
            ]
        );
        let first = &form.case_blocks[0];
        assert_eq!(first.create, create("invoice", "school-program", Some("-")));
        assert_eq!(
            first.update,
            pairs(&[
                ("amount-owed-to-entrepreneur", "119600"),
                ("entrepreneur", "joe"),
                ("month", "2"),
                ("owner_id", "91cadfa4cb957cf021c76dfe31d206a6"),
                ("year", "2016"),
            ])
        );
        assert!(!first.close);
        assert!(form.case_blocks[1].close && form.case_blocks[1].update.is_empty());
        assert_eq!(form.case_blocks[2].update, first.update);
    }

    #[test]
    fn basic_create_update_close_and_index() {
        let block = |name| parse_fixture(name).case_blocks.remove(0);
        let created = block("basic_create.xml");
        assert_eq!(created.case_id, "foo-case-id");
        assert_eq!(created.user_id.as_deref(), Some("bar-user-id"));
        assert_eq!(
            created.date_modified.as_deref(),
            Some("2011-12-06T13:42:50")
        );
        assert_eq!(
            created.create,
            create("v2_case_type", "test case name", None)
        );
        assert!(parse_fixture("basic_create.xml").meta == FormMeta::default());

        let updated = block("basic_update.xml");
        assert_eq!(
            updated.update,
            pairs(&[
                ("case_type", "updated_v2_case_type"),
                ("case_name", "updated case name"),
                ("dynamic", "something dynamic"),
            ])
        );
        assert_eq!(updated.create, None);

        let closed = block("basic_close.xml");
        assert!(closed.close && closed.update.is_empty());

        let indexed = block("index_update.xml");
        assert_eq!(
            indexed.indices,
            [
                index("foo_ref", "bar", "some_referenced_id"),
                index("baz_ref", "bop", "some_other_referenced_id")
            ]
        );
    }

    #[test]
    fn case_in_repeats_v1_blocks_are_converted() {
        let form = parse_fixture("case_in_repeats.xml");
        assert_eq!(
            form.meta.instance_id.as_deref(),
            Some("JLP8BS71HFU3VGMIWW610W80T")
        );
        assert_eq!(
            case_ids(&form),
            [
                "32337c03-2b73-497f-ab18-2b587f8c21df",
                "581b0506-7c94-4af5-ac67-f934566d5418",
                "CMYOSI95QCED3ZWIP9ZK1QNQ6"
            ]
        );
        let first = &form.case_blocks[0];
        assert_eq!(
            first.date_modified.as_deref(),
            Some("2011-09-19T22:29:48.096Z")
        );
        assert_eq!(first.user_id, None);
        assert_eq!(first.create, create("newborn_hiv_child", "ADG", None));
        assert_eq!(
            first.update,
            pairs(&[
                ("user_id", "2XC1EINEJV1NZ7QXHVUMHUQQV"),
                ("external_id", "32337c03-2b73-497f-ab18-2b587f8c21df"),
                ("sex", "1"),
                ("breastfeeding", "2"),
                ("taluka", "athani"),
                ("age", "23"),
                ("address", "DAG"),
                ("number", "234234234"),
                ("result1", ""),
                ("result2", ""),
                ("unique_id", "234"),
            ])
        );
        assert!(!first.close);
        assert_eq!(
            form.case_blocks[1].update[2],
            ("sex".to_owned(), "2".to_owned())
        );
        let mother = &form.case_blocks[2];
        assert_eq!(mother.create, create("mother", "mom", None));
        assert_eq!(mother.update.len(), 7);
        assert_eq!(
            mother.update[6],
            ("delivery_date".to_owned(), "2011-09-19".to_owned())
        );
        assert!(mother.close);
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
