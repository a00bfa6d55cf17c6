//! Applying one parsed case block to the case it names, as CommCare HQ does
//! (`corehq/form_processor` SQL update strategy over `casexml` case updates).
//! Pure functions over [`Case`]; the caller loads the case, loops over a form's
//! blocks in document order and stores the result.
//!
//! What HQ does and this module copies:
//! - A block for a case that does not exist yet creates it, with or without a
//!   `create` action (HQ's "edge case if form updates case before it's been
//!   created"): type and name stay empty unless an update sets them; owner, opener
//!   and open date default as below.
//! - Actions apply in HQ's fixed order whatever the element order: create, update,
//!   close, index, attachment.
//! - The "known" properties `case_type`, `case_name`, `owner_id`, `external_id`
//!   and `date_opened` go to their fields and only when non-empty (an empty
//!   `<case_name/>` does not blank the name); `name` also sets the case name (HQ's
//!   legacy rule) and `hq_user_id` also sets `external_id`. `case_id`,
//!   `date_modified`, `xmlns` and `supply_point_location_id` are never stored as
//!   properties; `user_id` is a fallback for the acting user. Every other property
//!   is stored, empty values included.
//! - The acting user is the block's `user_id`, else the form's meta `userID`, else
//!   a `user_id` property of the block. It becomes `user_id`, and `closed_by` on
//!   close; it fills `owner_id` and `opened_by` while those are empty.
//! - The block's time is its `date_modified` (normalised to UTC, a time without
//!   offset taken as UTC and a date as its midnight, as HQ's
//!   `string_to_utc_datetime` reads it), else the form's `timeEnd`, else the server's `received_on`. It is
//!   `date_closed` on close and fills `date_opened` while that is empty;
//!   `date_modified` only moves forward, so an older form arriving late does not
//!   turn the modification date back.
//! - Indices are added or replaced by identifier (relationship `child` unless
//!   given); an empty referenced id removes the index.

use crate::model::{Case, CaseIndex};
use crate::time::{normalize_device_time, parse_timestamp};
use crate::xform::CaseBlock;

/// The relationship of an index that does not name one.
const DEFAULT_INDEX_RELATIONSHIP: &str = "child";

/// Update properties that HQ never stores in the case's dynamic properties.
const RESTRICTED_PROPERTIES: [&str; 4] = [
    "case_id",
    "date_modified",
    "xmlns",
    "supply_point_location_id",
];

/// What a case block needs to know about the form that carries it.
#[derive(Debug, Clone, Copy)]
pub struct FormContext<'a> {
    pub domain: &'a str,
    pub form_id: &'a str,
    /// Server receipt time, formatted as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub received_on: &'a str,
    /// The form's meta `userID`.
    pub form_user_id: Option<&'a str>,
    /// The form's meta `timeEnd`, as sent.
    pub form_time_end: Option<&'a str>,
}

/// Applies one case block to the case it names (`existing`, or a new case when
/// the domain has none with that id) and returns the case as it now stands.
pub fn apply_block(existing: Option<Case>, block: &CaseBlock, form: &FormContext) -> Case {
    let mut case = existing.unwrap_or_else(|| new_case(&block.case_id, form));
    let acting_user_id = acting_user_id(block, form);
    let block_time = block_time(block, form);

    if let Some(create) = &block.create {
        set_if_not_empty(&mut case.case_type, create.case_type.as_deref());
        set_if_not_empty(&mut case.case_name, create.case_name.as_deref());
        set_if_not_empty(&mut case.owner_id, create.owner_id.as_deref());
    }
    for (name, value) in &block.update {
        apply_update_property(&mut case, name, value);
    }
    if block.close {
        case.closed = true;
        case.date_closed = Some(block_time.clone());
        case.closed_by = Some(acting_user_id.clone());
    }
    for index_change in &block.indices {
        let position = case
            .indices
            .iter()
            .position(|index| index.identifier == index_change.identifier);
        match (position, index_change.case_id.is_empty()) {
            (Some(position), true) => {
                case.indices.remove(position);
            }
            (None, true) => {}
            (position, false) => {
                let index = CaseIndex {
                    identifier: index_change.identifier.clone(),
                    case_type: index_change.case_type.clone(),
                    case_id: index_change.case_id.clone(),
                    relationship: index_change
                        .relationship
                        .clone()
                        .unwrap_or_else(|| DEFAULT_INDEX_RELATIONSHIP.to_owned()),
                };
                match position {
                    Some(position) => case.indices[position] = index,
                    None => case.indices.push(index),
                }
            }
        }
    }
    for attachment_name in &block.attachments {
        if !case.attachments.contains(attachment_name) {
            case.attachments.push(attachment_name.clone());
        }
    }

    if !acting_user_id.is_empty() {
        case.user_id.clone_from(&acting_user_id);
    }
    if is_later(&block_time, &case.date_modified) {
        case.date_modified.clone_from(&block_time);
    }
    if case.date_opened.is_empty() {
        case.date_opened = block_time;
    }
    if case.opened_by.is_empty() {
        case.opened_by.clone_from(&acting_user_id);
    }
    if case.owner_id.is_empty() {
        case.owner_id = acting_user_id;
    }
    if case.server_date_opened.is_empty() {
        case.server_date_opened = form.received_on.to_owned();
    }
    case.server_date_modified = form.received_on.to_owned();
    if !case.xform_ids.iter().any(|form_id| form_id == form.form_id) {
        case.xform_ids.push(form.form_id.to_owned());
    }
    case
}

fn new_case(case_id: &str, form: &FormContext) -> Case {
    Case {
        domain: form.domain.to_owned(),
        case_id: case_id.to_owned(),
        case_type: String::new(),
        case_name: String::new(),
        owner_id: String::new(),
        user_id: String::new(),
        opened_by: String::new(),
        external_id: None,
        date_opened: String::new(),
        date_modified: String::new(),
        server_date_opened: form.received_on.to_owned(),
        server_date_modified: form.received_on.to_owned(),
        closed: false,
        date_closed: None,
        closed_by: None,
        properties: Vec::new(),
        indices: Vec::new(),
        xform_ids: Vec::new(),
        attachments: Vec::new(),
    }
}

/// The block's user, else the form's, else a `user_id` property of the block.
fn acting_user_id(block: &CaseBlock, form: &FormContext) -> String {
    let property_user_id = || {
        block
            .update
            .iter()
            .rev()
            .find(|(name, value)| name == "user_id" && !value.is_empty())
    };
    block
        .user_id
        .as_deref()
        .filter(|user_id| !user_id.is_empty())
        .or(form.form_user_id.filter(|user_id| !user_id.is_empty()))
        .or_else(|| property_user_id().map(|(_, value)| value.as_str()))
        .unwrap_or_default()
        .to_owned()
}

/// The block's device time (normalised), else the form's end time, else receipt.
fn block_time(block: &CaseBlock, form: &FormContext) -> String {
    [block.date_modified.as_deref(), form.form_time_end]
        .into_iter()
        .flatten()
        .map(normalize_device_time)
        .find(|time| !time.is_empty())
        .unwrap_or_else(|| form.received_on.to_owned())
}

/// Whether `candidate` should replace `current` as the modification time: when
/// there is none yet, when it is later, or when either cannot be compared.
fn is_later(candidate: &str, current: &str) -> bool {
    match (parse_timestamp(candidate), parse_timestamp(current)) {
        (Some(candidate), Some(current)) => candidate > current,
        _ => candidate != current,
    }
}

fn apply_update_property(case: &mut Case, name: &str, value: &str) {
    match name {
        "case_type" => set_if_not_empty(&mut case.case_type, Some(value)),
        "case_name" => set_if_not_empty(&mut case.case_name, Some(value)),
        // HQ's legacy rule: `name` in an update is the case name, even when empty.
        "name" => value.clone_into(&mut case.case_name),
        "owner_id" => set_if_not_empty(&mut case.owner_id, Some(value)),
        "external_id" => {
            if !value.is_empty() {
                case.external_id = Some(value.to_owned());
            }
        }
        "date_opened" => {
            if !value.is_empty() {
                case.date_opened = normalize_device_time(value);
            }
        }
        "user_id" => {}
        _ if RESTRICTED_PROPERTIES.contains(&name) => {}
        _ => {
            if name == "hq_user_id" {
                case.external_id = Some(value.to_owned());
            }
            match case.properties.iter_mut().find(|(known, _)| known == name) {
                Some((_, stored)) => value.clone_into(stored),
                None => case.properties.push((name.to_owned(), value.to_owned())),
            }
        }
    }
}

fn set_if_not_empty(field: &mut String, value: Option<&str>) {
    if let Some(value) = value.filter(|value| !value.is_empty()) {
        value.clone_into(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xform::{CreateBlock, IndexChange, parse_form};
    use std::collections::BTreeMap;

    const MOTHER: &str = "9dbce942-0163-438b-b3e5-67b473d2f719";
    const FIRST_CHILD: &str = "17e36de1-b9de-423c-a6a6-605d291ec976";
    const SECOND_CHILD: &str = "7b58fd8f-1bb8-4978-99a6-7b5d9826c1f9";
    const SHEEL: &str = "67bffa913b38e7901851d863ededa475";

    /// A domain's cases, as the store would hold them.
    type CaseStore = BTreeMap<String, Case>;

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

    /// Parses `xml` and applies its blocks in order, as ingest does; returns the form id.
    fn submit_xml(
        store: &mut CaseStore,
        xml: &[u8],
        fallback_form_id: &str,
        received_on: &str,
    ) -> String {
        let form = parse_form(xml).unwrap();
        let form_id = form.form_id().unwrap_or(fallback_form_id).to_owned();
        let context = FormContext {
            domain: "demo",
            form_id: &form_id,
            received_on,
            form_user_id: form.meta.user_id.as_deref(),
            form_time_end: form.meta.time_end.as_deref(),
        };
        for block in &form.case_blocks {
            let existing = store.remove(&block.case_id);
            let case = apply_block(existing, block, &context);
            store.insert(case.case_id.clone(), case);
        }
        form_id
    }

    fn submit(store: &mut CaseStore, name: &str, received_on: &str) -> String {
        submit_xml(store, &fixture(name), name, received_on)
    }

    fn property<'a>(case: &'a Case, name: &str) -> Option<&'a str> {
        case.properties
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.as_str())
    }

    fn property_names(case: &Case) -> Vec<&str> {
        case.properties
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }

    fn child_index(case_id: &str) -> CaseIndex {
        CaseIndex {
            identifier: "mother_id".to_owned(),
            case_type: "cc_bihar_pregnancy".to_owned(),
            case_id: case_id.to_owned(),
            relationship: "child".to_owned(),
        }
    }

    #[test]
    fn pregnancy_life_cycle_reg1_reg2_cf_close() {
        let mut store = CaseStore::new();
        let reg1 = submit(&mut store, "reg1.xml", "2012-05-25T10:00:00.000000Z");
        assert_eq!(reg1, "8c4a4668-6be0-4f32-a1fd-e4d4e3ba2019");
        assert_eq!(store.len(), 1);
        let mother = &store[MOTHER];
        assert_eq!(mother.domain, "demo");
        assert_eq!(mother.case_type, "cc_bihar_pregnancy");
        assert_eq!(mother.case_name, "Ad");
        assert_eq!(mother.owner_id, "main_user");
        assert_eq!(mother.user_id, SHEEL);
        assert_eq!(mother.opened_by, SHEEL);
        assert_eq!(mother.external_id, None);
        assert_eq!(mother.date_opened, "2012-05-25T09:57:38.490000Z");
        assert_eq!(mother.date_modified, "2012-05-25T09:57:38.490000Z");
        assert_eq!(mother.server_date_opened, "2012-05-25T10:00:00.000000Z");
        assert_eq!(mother.server_date_modified, "2012-05-25T10:00:00.000000Z");
        assert!(!mother.closed && mother.date_closed.is_none() && mother.closed_by.is_none());
        assert_eq!(
            property_names(mother),
            [
                "last_visit_type",
                "date_last_visit",
                "date_next_reg",
                "mother_alive",
                "mother_name",
                "husband_name",
                "hh_number",
                "family_number",
                "mother_dob"
            ]
        );
        assert_eq!(property(mother, "last_visit_type"), Some("new"));
        assert_eq!(property(mother, "husband_name"), Some(""));
        assert!(mother.indices.is_empty() && mother.attachments.is_empty());
        assert_eq!(mother.xform_ids, [reg1.as_str()]);

        let reg2 = submit(&mut store, "reg2.xml", "2012-05-25T10:05:00.000000Z");
        assert_eq!(store.len(), 3);
        let mother = &store[MOTHER];
        assert_eq!(
            mother.case_name, "Ad",
            "an update without case_name keeps it"
        );
        assert_eq!(mother.date_opened, "2012-05-25T09:57:38.490000Z");
        assert_eq!(mother.date_modified, "2012-05-25T10:00:31.704000Z");
        assert_eq!(mother.server_date_opened, "2012-05-25T10:00:00.000000Z");
        assert_eq!(mother.server_date_modified, "2012-05-25T10:05:00.000000Z");
        assert_eq!(mother.properties.len(), 20);
        assert_eq!(
            mother.properties[0],
            ("last_visit_type".to_owned(), "reg".to_owned()),
            "replaced in place"
        );
        assert_eq!(
            &property_names(mother)[9..11],
            ["mobile_number", "num_boys"]
        );
        assert_eq!(property(mother, "date_next_cf"), Some("2012-05-26"));
        assert_eq!(property(mother, "edd"), Some(""));
        assert_eq!(mother.xform_ids, [reg1.clone(), reg2.clone()]);
        for (child_id, name) in [(FIRST_CHILD, "C1"), (SECOND_CHILD, "C2")] {
            let child = &store[child_id];
            assert_eq!(child.case_type, "cc_bihar_newborn");
            assert_eq!(child.case_name, name);
            assert_eq!(child.owner_id, "main_user");
            assert_eq!(child.opened_by, SHEEL);
            assert_eq!(child.date_opened, "2012-05-25T10:00:31.704000Z");
            assert_eq!(child.server_date_opened, "2012-05-25T10:05:00.000000Z");
            assert_eq!(
                child.properties,
                [
                    ("gender".to_owned(), "female".to_owned()),
                    ("dob".to_owned(), "2011-11-25".to_owned())
                ]
            );
            assert_eq!(child.indices, [child_index(MOTHER)]);
            assert_eq!(child.xform_ids, [reg2.as_str()]);
        }

        let cf = submit(&mut store, "cf.xml", "2012-05-25T10:10:00.000000Z");
        let mother = &store[MOTHER];
        assert_eq!(property(mother, "last_visit_type"), Some("cf"));
        assert_eq!(property(mother, "date_cf_1"), Some("2012-05-25"));
        assert_eq!(property(mother, "date_next_cf"), Some("2012-06-24"));
        assert_eq!(mother.properties.len(), 21);
        assert_eq!(mother.date_modified, "2012-05-25T10:01:38.109000Z");
        assert_eq!(mother.xform_ids, [reg1.clone(), reg2.clone(), cf.clone()]);
        for child_id in [FIRST_CHILD, SECOND_CHILD] {
            let child = &store[child_id];
            assert_eq!(property(child, "baby_measles"), Some(""));
            assert_eq!(
                child.indices,
                [child_index(MOTHER)],
                "an update keeps indices"
            );
            assert_eq!(child.xform_ids, [reg2.clone(), cf.clone()]);
        }

        let close = submit(&mut store, "close.xml", "2012-05-26T03:15:00.000000Z");
        for case_id in [MOTHER, FIRST_CHILD, SECOND_CHILD] {
            let case = &store[case_id];
            assert!(case.closed, "{case_id}");
            assert_eq!(
                case.date_closed.as_deref(),
                Some("2012-05-26T03:11:37.259000Z")
            );
            assert_eq!(case.closed_by.as_deref(), Some(SHEEL));
            assert_eq!(case.date_modified, "2012-05-26T03:11:37.259000Z");
            assert_eq!(case.server_date_modified, "2012-05-26T03:15:00.000000Z");
            assert_eq!(case.xform_ids.last(), Some(&close));
        }
        assert_eq!(store[MOTHER].xform_ids.len(), 4);
        assert_eq!(
            store[MOTHER].properties.len(),
            21,
            "an empty update changes nothing"
        );
        assert_eq!(store[FIRST_CHILD].case_name, "C1");
    }

    #[test]
    fn lots_of_subcases_creates_eleven_linked_cases() {
        let mut store = CaseStore::new();
        let form_id = submit(
            &mut store,
            "lots_of_subcases.xml",
            "2012-05-28T00:00:00.000000Z",
        );
        assert_eq!(store.len(), 11);
        let parent = &store["f8b34e0c744f8f45dfa12e28617e5716"];
        assert_eq!(parent.case_type, "cc_bihar_pregnancy");
        assert_eq!(
            parent.date_opened, "2012-04-19T00:00:00.000000Z",
            "a date without time is its midnight UTC"
        );
        assert_eq!(parent.properties.len(), 20);
        assert_eq!(property(parent, "tt_1_date"), Some("2012-04-30"));
        let newborn = &store["7554c7f4-fc96-4b1d-aec8-8890e96ffc54"];
        assert_eq!(
            newborn.indices,
            [child_index("f8b34e0c744f8f45dfa12e28617e5716")]
        );
        let tasks: Vec<&Case> = store
            .values()
            .filter(|case| case.case_type == "task")
            .collect();
        assert_eq!(tasks.len(), 9);
        for task in tasks {
            assert_eq!(task.owner_id, "3c5a80e4db53049dfc110c368a0d282b");
            assert_eq!(task.user_id, "67bffa913b38e7901851d863eded2ba3");
            assert_eq!(task.date_modified, "2012-05-28T00:00:00.000000Z");
            assert_eq!(task.indices.len(), 1);
            assert_eq!(task.indices[0].identifier, "person_id");
            assert_eq!(task.xform_ids, [form_id.as_str()]);
            assert!(property(task, "task_id").is_some());
        }
        assert_eq!(
            store["763ca815-df9c-4037-9f0e-6edd2af8ba6c9"].indices[0].case_type,
            "cc_bihar_pregnancy"
        );
    }

    #[test]
    fn multiple_case_blocks_without_create_make_one_case() {
        let mut store = CaseStore::new();
        let form_id = submit(
            &mut store,
            "multiple_case_blocks.xml",
            "2012-05-31T08:00:00.000000Z",
        );
        assert_eq!(store.len(), 1);
        let case = &store["MCLPZ69ON942EKNIBR5WF1G2L"];
        let user = "de7abbf6d898ae2d7dcd2bdc79f2785c";
        assert_eq!(case.case_type, "");
        assert_eq!(case.case_name, "");
        assert_eq!(case.owner_id, user, "owner defaults to the user");
        assert_eq!(case.opened_by, user);
        assert_eq!(case.date_opened, "2012-05-31T07:06:31.379000Z");
        assert_eq!(case.server_date_opened, "2012-05-31T08:00:00.000000Z");
        assert_eq!(property(case, "community_name"), Some("TAMERLO"));
        assert_eq!(case.properties.len(), 3);
        assert_eq!(case.xform_ids, [form_id], "one form id for two blocks");
    }

    #[test]
    fn basic_create_update_close() {
        let mut store = CaseStore::new();
        submit(
            &mut store,
            "basic_create.xml",
            "2011-12-06T14:00:00.000000Z",
        );
        let case = &store["foo-case-id"];
        assert_eq!(case.case_type, "v2_case_type");
        assert_eq!(case.case_name, "test case name");
        assert_eq!(
            case.owner_id, "bar-user-id",
            "owner defaults to the block's user"
        );
        assert_eq!(case.opened_by, "bar-user-id");
        assert_eq!(case.date_opened, "2011-12-06T13:42:50.000000Z");
        assert_eq!(case.date_modified, "2011-12-06T13:42:50.000000Z");

        submit(
            &mut store,
            "basic_update.xml",
            "2011-12-07T14:00:00.000000Z",
        );
        let case = &store["foo-case-id"];
        assert_eq!(case.case_type, "updated_v2_case_type");
        assert_eq!(case.case_name, "updated case name");
        assert_eq!(
            case.properties,
            [("dynamic".to_owned(), "something dynamic".to_owned())]
        );
        assert_eq!(case.date_modified, "2011-12-07T13:42:50.000000Z");
        assert_eq!(case.date_opened, "2011-12-06T13:42:50.000000Z");

        submit(&mut store, "basic_close.xml", "2011-12-08T14:00:00.000000Z");
        let case = &store["foo-case-id"];
        assert!(case.closed);
        assert_eq!(
            case.date_closed.as_deref(),
            Some("2011-12-06T13:42:50.000000Z")
        );
        assert_eq!(case.closed_by.as_deref(), Some("bar-user-id"));
        assert_eq!(
            case.date_modified, "2011-12-07T13:42:50.000000Z",
            "an older device time does not move it back"
        );
        assert_eq!(case.server_date_modified, "2011-12-08T14:00:00.000000Z");
        assert_eq!(
            case.xform_ids,
            ["basic_create.xml", "basic_update.xml", "basic_close.xml"]
        );
    }

    #[test]
    fn index_update_adds_replaces_and_removes() {
        let mut store = CaseStore::new();
        submit(
            &mut store,
            "basic_create.xml",
            "2011-12-06T14:00:00.000000Z",
        );
        submit(
            &mut store,
            "index_update.xml",
            "2011-12-07T14:00:00.000000Z",
        );
        let case = &store["foo-case-id"];
        let identifiers: Vec<_> = case
            .indices
            .iter()
            .map(|index| index.identifier.as_str())
            .collect();
        assert_eq!(identifiers, ["foo_ref", "baz_ref"]);
        assert_eq!(case.indices[0].case_type, "bar");
        assert_eq!(case.indices[0].case_id, "some_referenced_id");
        assert_eq!(case.indices[0].relationship, "child");
        assert_eq!(case.indices[1].case_id, "some_other_referenced_id");

        let change = |identifier: &str, case_id: &str, relationship: Option<&str>| IndexChange {
            identifier: identifier.to_owned(),
            case_type: "host_type".to_owned(),
            case_id: case_id.to_owned(),
            relationship: relationship.map(str::to_owned),
        };
        let block = CaseBlock {
            case_id: "foo-case-id".to_owned(),
            indices: vec![
                change("foo_ref", "", None),
                change("baz_ref", "new_host", Some("extension")),
                change("never_there", "", None),
            ],
            ..CaseBlock::default()
        };
        let context = FormContext {
            domain: "demo",
            form_id: "index-change",
            received_on: "2011-12-08T00:00:00.000000Z",
            form_user_id: None,
            form_time_end: None,
        };
        let case = apply_block(store.remove("foo-case-id"), &block, &context);
        assert_eq!(
            case.indices,
            [CaseIndex {
                identifier: "baz_ref".to_owned(),
                case_type: "host_type".to_owned(),
                case_id: "new_host".to_owned(),
                relationship: "extension".to_owned(),
            }]
        );
        assert_eq!(
            case.user_id, "bar-user-id",
            "no user in the block or form keeps the last one"
        );
        assert_eq!(
            case.date_modified, "2011-12-08T00:00:00.000000Z",
            "falls back to receipt time"
        );
    }

    #[test]
    fn v1_blocks_of_case_in_repeats_create_three_cases() {
        let mut store = CaseStore::new();
        submit(
            &mut store,
            "case_in_repeats.xml",
            "2011-09-19T23:00:00.000000Z",
        );
        assert_eq!(store.len(), 3);
        let child = &store["32337c03-2b73-497f-ab18-2b587f8c21df"];
        assert_eq!(child.case_type, "newborn_hiv_child");
        assert_eq!(child.case_name, "ADG");
        assert_eq!(
            child.external_id.as_deref(),
            Some("32337c03-2b73-497f-ab18-2b587f8c21df")
        );
        assert_eq!(child.owner_id, "2XC1EINEJV1NZ7QXHVUMHUQQV");
        assert_eq!(child.date_modified, "2011-09-19T22:29:48.096000Z");
        assert_eq!(property(child, "user_id"), None);
        assert_eq!(property(child, "unique_id"), Some("234"));
        let mother = &store["CMYOSI95QCED3ZWIP9ZK1QNQ6"];
        assert!(mother.closed);
        assert_eq!(
            mother.date_closed.as_deref(),
            Some("2011-09-19T22:31:48.902000Z")
        );
        assert_eq!(
            mother.closed_by.as_deref(),
            Some("2XC1EINEJV1NZ7QXHVUMHUQQV")
        );
    }

    #[test]
    fn known_properties_and_time_fallbacks() {
        let xml = br#"<f xmlns="urn:f"><meta><instanceID>f1</instanceID><userID>form-user</userID>
            <timeEnd>2015-04-17T16:04:54.950-04</timeEnd></meta>
            <case xmlns="http://commcarehq.org/case/transaction/v2" case_id="k">
              <create><case_type>t</case_type><case_name>n</case_name><date_opened>2015-01-01T00:00:00+01:00</date_opened></create>
              <update><case_name/><external_id>ext</external_id><case_id>ignored</case_id>
                <date_modified>ignored</date_modified><hq_user_id>hq</hq_user_id><color>red</color><color>blue</color></update>
            </case></f>"#;
        let mut store = CaseStore::new();
        submit_xml(&mut store, xml, "unused", "2015-04-18T00:00:00.000000Z");
        let case = &store["k"];
        assert_eq!(
            case.case_name, "n",
            "an empty known property does not blank the field"
        );
        assert_eq!(
            case.external_id.as_deref(),
            Some("hq"),
            "hq_user_id also sets external_id"
        );
        assert_eq!(case.date_opened, "2014-12-31T23:00:00.000000Z");
        assert_eq!(
            case.date_modified, "2015-04-17T20:04:54.950000Z",
            "from the form's timeEnd"
        );
        assert_eq!(case.user_id, "form-user");
        assert_eq!(case.owner_id, "form-user");
        assert_eq!(
            case.properties,
            [
                ("hq_user_id".to_owned(), "hq".to_owned()),
                ("color".to_owned(), "blue".to_owned())
            ]
        );
    }

    #[test]
    fn create_on_an_existing_case_keeps_its_opening() {
        let context = |form_id, received_on| FormContext {
            domain: "demo",
            form_id,
            received_on,
            form_user_id: Some("u1"),
            form_time_end: None,
        };
        let block = |date_modified: &str, case_name: &str| CaseBlock {
            case_id: "c".to_owned(),
            date_modified: Some(date_modified.to_owned()),
            create: Some(CreateBlock {
                case_name: Some(case_name.to_owned()),
                ..CreateBlock::default()
            }),
            ..CaseBlock::default()
        };
        let first = apply_block(
            None,
            &block("2020-01-01", "first"),
            &context("a", "2020-01-02T00:00:00.000000Z"),
        );
        let second = apply_block(
            Some(first),
            &block("2020-02-01", "second"),
            &context("b", "2020-02-02T00:00:00.000000Z"),
        );
        assert_eq!(second.case_name, "second");
        assert_eq!(second.date_opened, "2020-01-01T00:00:00.000000Z");
        assert_eq!(second.server_date_opened, "2020-01-02T00:00:00.000000Z");
        assert_eq!(second.date_modified, "2020-02-01T00:00:00.000000Z");
        assert_eq!(second.xform_ids, ["a", "b"]);
        let again = apply_block(
            Some(second),
            &block("2020-02-01", "second"),
            &context("b", "2020-02-03T00:00:00.000000Z"),
        );
        assert_eq!(again.xform_ids, ["a", "b"], "a form id is listed once");
    }
}
