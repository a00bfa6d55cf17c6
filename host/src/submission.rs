//! Submission planning: what a new form changes, decided without I/O.
//!
//! Given a form, its case blocks in document order, the cases those blocks
//! name as the store holds them, and the domain's repeaters, [`plan`] works
//! out the cases as they stand after the form (CommCare's rules, in `cases`)
//! and which repeat records to register (the repeater filters, in `filters`).
//! App changes are planned the same way by [`plan_app_change`]; a parsed
//! form becomes the form to store by [`new_form`]; a POST of a form id the
//! domain already has (a duplicate, or a later part of a submission split
//! over several POSTs) changes the stored form as [`later_post`] says. `store` reads
//! the existing cases inside its write transaction, calls these functions and
//! persists what they return; it decides nothing itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cases::{self, FormContext};
use crate::filters;
use crate::model::{Case, StoredForm};
use crate::record::{AppChange, PayloadRef};
use crate::repeater::{PayloadKind, RepeaterSpec};
use crate::xform::{CaseBlock, ParsedForm};

/// A form ready to be committed: parsed, authenticated, not yet stored.
#[derive(Debug)]
pub struct Submission {
    pub form: StoredForm,
    pub xml: Vec<u8>,
    pub case_blocks: Vec<CaseBlock>,
    /// The domain's repeaters when the form arrived.
    pub repeaters: Arc<Vec<RepeaterRef>>,
}

/// A repeater as planning and the store need it: its key in the due index
/// and its spec.
#[derive(Debug, Clone)]
pub struct RepeaterRef {
    pub id: u64,
    pub domain: String,
    pub spec: Arc<RepeaterSpec>,
}

/// One repeat record to register: for which repeater, about what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRecord<'a> {
    pub repeater_id: u64,
    pub domain: &'a str,
    pub repeater: &'a str,
    pub kind: PayloadKind,
    pub payload: PayloadRef,
}

impl<'a> PlannedRecord<'a> {
    fn new(repeater: &'a RepeaterRef, payload: PayloadRef) -> Self {
        PlannedRecord {
            repeater_id: repeater.id,
            domain: &repeater.domain,
            repeater: &repeater.spec.name,
            kind: repeater.spec.kind,
            payload,
        }
    }
}

/// Everything committing a new form writes.
#[derive(Debug)]
pub struct SubmissionPlan<'a> {
    /// The form, with `case_ids` filled in.
    pub form: StoredForm,
    /// Every case the form touched, as it stands after the form, in the
    /// order the form first names it.
    pub cases: Vec<Case>,
    /// The records to register, repeater by repeater in the domain's order.
    pub records: Vec<PlannedRecord<'a>>,
}

/// A newly received form as the store keeps it, and its case blocks: before
/// planning (no case ids yet), with no app id, no attachments and not
/// awaiting parts (the caller adds what the request carried). `fallback_id` names a form that
/// carries no id of its own.
pub fn new_form(
    parsed: ParsedForm,
    domain: &str,
    fallback_id: impl FnOnce() -> String,
    received_on: String,
) -> (StoredForm, Vec<CaseBlock>) {
    let is_device_report = parsed.is_device_report();
    let form_id = parsed
        .form_id()
        .map(str::to_owned)
        .unwrap_or_else(fallback_id);
    let form = StoredForm {
        domain: domain.to_owned(),
        form_id,
        xmlns: parsed.xmlns,
        app_id: None,
        received_on,
        meta: parsed.meta,
        case_ids: Vec::new(),
        attachments: Vec::new(),
        awaiting_parts: false,
        is_device_report,
        n_duplicates: 0,
        last_duplicate_on: None,
    };
    (form, parsed.case_blocks)
}

/// What a POST of a form id the domain already has did to the stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaterPost {
    /// A later part of a split submission: its attachments (this many, each
    /// of a name the form did not have) were added; nothing is processed or
    /// forwarded again.
    AttachmentsAdded(usize),
    /// The same form again: counted, nothing else changes.
    Duplicate,
}

/// Applies a POST of `later` (with `later_xml`) to `stored`, the form the
/// domain already has under that id (its XML `stored_xml`). It is a later part
/// of a submission split over several POSTs, as ODK Collect sends one whose
/// attachments exceed the receiver's `X-OpenRosa-Accept-Content-Length`, when
/// the XML is the same, byte for byte, and the POST brings attachments of
/// names the form does not have: those are added (an attachment already known
/// keeps its first POST's content type and size) and the form awaits parts as
/// long as `later` says more follow (`*isIncomplete*`). SPEC section 4 asks
/// for the attachments whether or not the earlier POST announced more parts:
/// not every client sends `*isIncomplete*`, and a part is never processed
/// again either way. Anything else is a duplicate.
pub fn later_post(
    stored: &mut StoredForm,
    stored_xml: &[u8],
    later: &StoredForm,
    later_xml: &[u8],
) -> LaterPost {
    let mut added = 0;
    if stored_xml == later_xml {
        for attachment in &later.attachments {
            if !stored
                .attachments
                .iter()
                .any(|known| known.name == attachment.name)
            {
                stored.attachments.push(attachment.clone());
                added += 1;
            }
        }
    }
    if added == 0 {
        stored.n_duplicates += 1;
        stored.last_duplicate_on = Some(later.received_on.clone());
        return LaterPost::Duplicate;
    }
    stored.awaiting_parts = later.awaiting_parts;
    LaterPost::AttachmentsAdded(added)
}

/// The distinct case ids `blocks` name, in the order first named: the cases
/// a plan needs to know as stored.
pub fn case_ids(blocks: &[CaseBlock]) -> Vec<&str> {
    let mut ids: Vec<&str> = Vec::new();
    for block in blocks {
        if !ids.contains(&block.case_id.as_str()) {
            ids.push(&block.case_id);
        }
    }
    ids
}

/// Plans a new form: applies its case blocks in document order to `existing`
/// (the stored cases of [`case_ids`]; a case missing there is created) and
/// picks the records every repeater in `repeaters` wants.
pub fn plan<'a>(
    mut form: StoredForm,
    case_blocks: &[CaseBlock],
    mut existing: BTreeMap<String, Case>,
    repeaters: &'a [RepeaterRef],
) -> SubmissionPlan<'a> {
    let context = FormContext {
        domain: &form.domain,
        form_id: &form.form_id,
        received_on: &form.received_on,
        form_user_id: form.meta.user_id.as_deref(),
        form_time_end: form.meta.time_end.as_deref(),
    };
    // Per case touched, in first-touch order: whether this form created it.
    let mut touched: Vec<(String, bool)> = Vec::new();
    let mut latest: BTreeMap<String, Case> = BTreeMap::new();
    for block in case_blocks {
        let current = latest
            .remove(&block.case_id)
            .or_else(|| existing.remove(&block.case_id));
        if !touched.iter().any(|(id, _)| *id == block.case_id) {
            touched.push((block.case_id.clone(), current.is_none()));
        }
        latest.insert(
            block.case_id.clone(),
            cases::apply_block(current, block, &context),
        );
    }
    form.case_ids = touched.iter().map(|(id, _)| id.clone()).collect();

    let mut records = Vec::new();
    for repeater in repeaters {
        let spec = &repeater.spec;
        match spec.kind {
            PayloadKind::Form | PayloadKind::FormStub => {
                if filters::wants_form(spec, &form) {
                    let payload = PayloadRef::Form {
                        form_id: form.form_id.clone(),
                    };
                    records.push(PlannedRecord::new(repeater, payload));
                }
            }
            PayloadKind::Case => {
                for (case_id, created) in &touched {
                    if filters::wants_case(spec, &latest[case_id], *created, &form) {
                        let payload = PayloadRef::Case {
                            case_id: case_id.clone(),
                        };
                        records.push(PlannedRecord::new(repeater, payload));
                    }
                }
            }
            PayloadKind::AppSchema => {}
        }
    }
    let cases = touched
        .iter()
        .filter_map(|(case_id, _)| latest.remove(case_id))
        .collect();
    SubmissionPlan {
        form,
        cases,
        records,
    }
}

/// Plans an app change: one record per `app-schema` repeater.
pub fn plan_app_change<'a>(
    repeaters: &'a [RepeaterRef],
    app_id: &str,
    change: AppChange,
    build_id: Option<&str>,
) -> Vec<PlannedRecord<'a>> {
    repeaters
        .iter()
        .filter(|repeater| repeater.spec.kind == PayloadKind::AppSchema)
        .map(|repeater| {
            let payload = PayloadRef::App {
                app_id: app_id.to_owned(),
                change,
                build_id: build_id.map(str::to_owned),
            };
            PlannedRecord::new(repeater, payload)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Attachment, FormMeta};
    use crate::repeater::CaseEvents;
    use crate::xform::CreateBlock;

    pub(crate) fn form(form_id: &str) -> StoredForm {
        StoredForm {
            domain: "demo".into(),
            form_id: form_id.into(),
            xmlns: "http://example.org/visit".into(),
            app_id: None,
            received_on: "2026-01-02T03:04:05.000000Z".into(),
            meta: FormMeta {
                user_id: Some("nurse".into()),
                ..FormMeta::default()
            },
            case_ids: Vec::new(),
            attachments: Vec::new(),
            awaiting_parts: false,
            is_device_report: false,
            n_duplicates: 0,
            last_duplicate_on: None,
        }
    }

    pub(crate) fn create_block(case_id: &str, case_type: &str) -> CaseBlock {
        CaseBlock {
            case_id: case_id.into(),
            date_modified: None,
            user_id: None,
            create: Some(CreateBlock {
                case_type: Some(case_type.into()),
                case_name: Some(format!("{case_id} name")),
                owner_id: None,
            }),
            update: Vec::new(),
            close: false,
            indices: Vec::new(),
            attachments: Vec::new(),
        }
    }

    pub(crate) fn update_block(case_id: &str, property: &str, value: &str) -> CaseBlock {
        CaseBlock {
            case_id: case_id.into(),
            date_modified: None,
            user_id: None,
            create: None,
            update: vec![(property.into(), value.into())],
            close: false,
            indices: Vec::new(),
            attachments: Vec::new(),
        }
    }

    pub(crate) fn repeater(id: u64, name: &str, kind: PayloadKind) -> RepeaterRef {
        repeater_with(id, name, kind, |_| {})
    }

    fn repeater_with(
        id: u64,
        name: &str,
        kind: PayloadKind,
        adjust: impl FnOnce(&mut RepeaterSpec),
    ) -> RepeaterRef {
        let mut spec = RepeaterSpec::new(name, kind, "remote", kind.as_str());
        adjust(&mut spec);
        RepeaterRef {
            id,
            domain: "demo".into(),
            spec: Arc::new(spec),
        }
    }

    fn property<'c>(case: &'c Case, name: &str) -> Option<&'c str> {
        case.properties
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.as_str())
    }

    fn payload_ids<'a>(plan: &SubmissionPlan<'a>) -> Vec<(&'a str, String)> {
        plan.records
            .iter()
            .map(|record| (record.repeater, record.payload.payload_id().to_owned()))
            .collect()
    }

    #[test]
    fn several_blocks_for_one_case_become_one_case_change() {
        let blocks = [
            create_block("c1", "patient"),
            update_block("c1", "weight", "3.1"),
            update_block("c1", "weight", "3.4"),
        ];
        let plan = plan(form("f1"), &blocks, BTreeMap::new(), &[]);
        assert_eq!(plan.form.case_ids, ["c1"]);
        assert_eq!(plan.cases.len(), 1);
        let case = &plan.cases[0];
        assert_eq!(case.case_type, "patient");
        assert_eq!(property(case, "weight"), Some("3.4"));
        assert_eq!(case.xform_ids, ["f1"]);
    }

    #[test]
    fn cases_come_out_in_the_order_the_form_first_names_them() {
        let blocks = [
            create_block("zeta", "patient"),
            create_block("alpha", "patient"),
            update_block("zeta", "status", "seen"),
        ];
        let plan = plan(form("f1"), &blocks, BTreeMap::new(), &[]);
        assert_eq!(plan.form.case_ids, ["zeta", "alpha"]);
        let ids: Vec<&str> = plan.cases.iter().map(|c| c.case_id.as_str()).collect();
        assert_eq!(ids, ["zeta", "alpha"]);
        assert_eq!(case_ids(&blocks), ["zeta", "alpha"]);
    }

    #[test]
    fn an_update_builds_on_the_stored_case() {
        let first = plan(
            form("f1"),
            &[create_block("c1", "patient")],
            BTreeMap::new(),
            &[],
        );
        let stored = BTreeMap::from([("c1".to_owned(), first.cases[0].clone())]);
        let second = plan(
            form("f2"),
            &[update_block("c1", "status", "seen")],
            stored,
            &[],
        );
        let case = &second.cases[0];
        assert_eq!(case.case_type, "patient", "kept from the stored case");
        assert_eq!(property(case, "status"), Some("seen"));
        assert_eq!(case.xform_ids, ["f1", "f2"]);
    }

    #[test]
    fn each_repeater_gets_the_records_it_wants_in_the_domains_order() {
        let repeaters = [
            repeater(1, "forms", PayloadKind::Form),
            repeater(2, "cases", PayloadKind::Case),
            repeater(3, "stubs", PayloadKind::FormStub),
            repeater(4, "apps", PayloadKind::AppSchema),
        ];
        let blocks = [create_block("c1", "patient"), create_block("c2", "visit")];
        let plan = plan(form("f1"), &blocks, BTreeMap::new(), &repeaters);
        assert_eq!(
            payload_ids(&plan),
            [
                ("forms", "f1".to_owned()),
                ("cases", "c1".to_owned()),
                ("cases", "c2".to_owned()),
                ("stubs", "f1".to_owned()),
            ]
        );
        assert_eq!(plan.records[1].kind, PayloadKind::Case);
        assert_eq!(plan.records[1].repeater_id, 2);
        assert_eq!(plan.records[1].domain, "demo");
    }

    #[test]
    fn case_repeaters_see_whether_this_form_created_the_case() {
        let creates = repeater_with(1, "creates", PayloadKind::Case, |spec| {
            spec.case_events = CaseEvents::Create;
        });
        let updates = repeater_with(2, "updates", PayloadKind::Case, |spec| {
            spec.case_events = CaseEvents::Update;
        });
        let repeaters = [creates, updates];
        let first = plan(
            form("f1"),
            &[create_block("c1", "patient")],
            BTreeMap::new(),
            &repeaters,
        );
        assert_eq!(payload_ids(&first), [("creates", "c1".to_owned())]);
        let stored = BTreeMap::from([("c1".to_owned(), first.cases[0].clone())]);
        // A second create block of an existing case is an update of it.
        let second = plan(
            form("f2"),
            &[create_block("c1", "patient")],
            stored,
            &repeaters,
        );
        assert_eq!(payload_ids(&second), [("updates", "c1".to_owned())]);
    }

    #[test]
    fn repeater_filters_decide_which_forms_and_cases_are_forwarded() {
        let repeaters = [
            repeater_with(1, "other-xmlns", PayloadKind::Form, |spec| {
                spec.xmlns = vec!["http://example.org/other".into()];
            }),
            repeater_with(2, "blocks-nurse", PayloadKind::Form, |spec| {
                spec.user_blocklist = vec!["nurse".into()];
            }),
            repeater_with(3, "visits-only", PayloadKind::Case, |spec| {
                spec.case_types = vec!["visit".into()];
            }),
        ];
        let blocks = [create_block("c1", "patient"), create_block("c2", "visit")];
        let plan = plan(form("f1"), &blocks, BTreeMap::new(), &repeaters);
        assert_eq!(payload_ids(&plan), [("visits-only", "c2".to_owned())]);
    }

    #[test]
    fn a_device_report_changes_its_cases_but_is_never_forwarded() {
        let mut report = form("log");
        report.is_device_report = true;
        let repeaters = [
            repeater(1, "forms", PayloadKind::Form),
            repeater(2, "cases", PayloadKind::Case),
        ];
        let plan = plan(
            report,
            &[create_block("c1", "patient")],
            BTreeMap::new(),
            &repeaters,
        );
        assert_eq!(plan.cases.len(), 1);
        assert!(plan.records.is_empty());
    }

    #[test]
    fn an_app_change_is_planned_for_app_schema_repeaters_only() {
        let repeaters = [
            repeater(1, "forms", PayloadKind::Form),
            repeater(2, "apps", PayloadKind::AppSchema),
        ];
        let planned = plan_app_change(&repeaters, "app1", AppChange::Built, Some("b7"));
        assert_eq!(
            planned,
            [PlannedRecord {
                repeater_id: 2,
                domain: "demo",
                repeater: "apps",
                kind: PayloadKind::AppSchema,
                payload: PayloadRef::App {
                    app_id: "app1".into(),
                    change: AppChange::Built,
                    build_id: Some("b7".into()),
                },
            }]
        );
    }

    fn attachment(name: &str, size: u64) -> Attachment {
        Attachment {
            name: name.into(),
            content_type: "image/jpeg".into(),
            size,
        }
    }

    /// `f1` as a later POST carried it: these attachments, more parts or not.
    fn part(attachments: Vec<Attachment>, more_parts_follow: bool) -> StoredForm {
        StoredForm {
            attachments,
            awaiting_parts: more_parts_follow,
            received_on: "2026-01-02T03:05:00.000000Z".into(),
            ..form("f1")
        }
    }

    /// `f1` as its first POST stored it, awaiting more parts.
    fn first_part(attachments: Vec<Attachment>) -> StoredForm {
        StoredForm {
            attachments,
            awaiting_parts: true,
            ..form("f1")
        }
    }

    const XML: &[u8] = b"<data><meta><instanceID>f1</instanceID></meta></data>";

    #[test]
    fn a_later_part_of_a_split_submission_adds_its_new_attachments() {
        let (a, b, c) = (
            attachment("a.jpg", 10),
            attachment("b.jpg", 20),
            attachment("c.jpg", 30),
        );
        let mut stored = first_part(vec![a.clone(), b.clone()]);
        // Collect's next POST: the same XML, the attachments that did not fit,
        // and (here) one of the first POST's again, with another size.
        let later = part(vec![attachment("b.jpg", 999), c.clone()], false);
        assert_eq!(
            later_post(&mut stored, XML, &later, XML),
            LaterPost::AttachmentsAdded(1)
        );
        assert_eq!(stored.attachments, [a, b, c], "b.jpg keeps its first size");
        assert!(!stored.awaiting_parts, "the last part ends the submission");
        assert_eq!(stored.n_duplicates, 0);
        assert_eq!(stored.received_on, "2026-01-02T03:04:05.000000Z");

        // The same part again is a duplicate.
        let again = part(vec![attachment("c.jpg", 30)], false);
        assert_eq!(
            later_post(&mut stored, XML, &again, XML),
            LaterPost::Duplicate
        );
        assert_eq!(stored.attachments.len(), 3);
        assert_eq!(stored.n_duplicates, 1);
        assert_eq!(
            stored.last_duplicate_on.as_deref(),
            Some("2026-01-02T03:05:00.000000Z")
        );
    }

    #[test]
    fn a_middle_part_keeps_the_form_awaiting_parts() {
        let mut stored = first_part(vec![attachment("a.jpg", 10)]);
        let middle = part(vec![attachment("b.jpg", 20)], true);
        assert_eq!(
            later_post(&mut stored, XML, &middle, XML),
            LaterPost::AttachmentsAdded(1)
        );
        assert!(stored.awaiting_parts);
    }

    #[test]
    fn without_new_attachments_or_with_other_xml_a_later_post_is_a_duplicate() {
        let a = attachment("a.jpg", 10);
        let cases = [
            ("no new attachment", part(vec![a.clone()], false), XML),
            ("no attachment at all", part(vec![], false), XML),
            (
                "other XML",
                part(vec![attachment("b.jpg", 20)], false),
                b"<data><meta><instanceID>f1</instanceID></meta><x/></data>".as_slice(),
            ),
        ];
        for (what, later, later_xml) in cases {
            let mut stored = first_part(vec![a.clone()]);
            assert_eq!(
                later_post(&mut stored, XML, &later, later_xml),
                LaterPost::Duplicate,
                "{what}"
            );
            assert_eq!(stored.attachments, vec![a.clone()], "{what}");
            assert!(stored.awaiting_parts, "{what}: still awaiting its parts");
            assert_eq!(stored.n_duplicates, 1, "{what}");
        }
        // A form no POST said more would follow still takes a later part's
        // attachments: not every client announces its parts.
        let mut complete = StoredForm {
            awaiting_parts: false,
            ..first_part(vec![a.clone()])
        };
        let b = attachment("b.jpg", 20);
        let later = part(vec![b.clone()], false);
        assert_eq!(
            later_post(&mut complete, XML, &later, XML),
            LaterPost::AttachmentsAdded(1)
        );
        assert_eq!(complete.attachments, [a, b]);
        assert_eq!(complete.n_duplicates, 0);
    }
}
