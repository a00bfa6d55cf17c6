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

    const HOUSEHOLD: &str = "hh-7d2c4a10-3e5f-4b6a-9c8d-0e1f2a3b4c5d";
    const CHIDI: &str = "mb-1c9a8b7d-6e5f-4a3b-2c1d-0e9f8a7b6c51";
    const ADA: &str = "mb-2d0b9c8e-7f6a-4b5c-3d2e-1f0a9b8c7d62";
    const ASHA: &str = "5b1f0c9e2d7a4e3b8c6f1a2d3e4f5a6b";

    /// A domain's cases, as the store would hold them.
    type CaseStore = BTreeMap<String, Case>;

    /// One of the project's own test forms, `tests/fixtures/forms/`.
    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/forms/{}"),
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

    /// The cases the form `name` builds in an empty store, and the form's id.
    fn store_after(name: &str, received_on: &str) -> (CaseStore, String) {
        let mut store = CaseStore::new();
        let form_id = submit(&mut store, name, received_on);
        (store, form_id)
    }

    /// Checks that `case` is closed, at `at` by `by`.
    fn assert_closed(case: &Case, at: &str, by: &str) {
        assert!(case.closed, "{} is closed", case.case_id);
        assert_eq!(case.date_closed.as_deref(), Some(at), "{}", case.case_id);
        assert_eq!(case.closed_by.as_deref(), Some(by), "{}", case.case_id);
    }

    /// Checks `date_opened`, `date_modified`, `server_date_opened` and
    /// `server_date_modified`, in that order.
    fn assert_dates(case: &Case, expected: [&str; 4]) {
        let actual = [
            case.date_opened.as_str(),
            case.date_modified.as_str(),
            case.server_date_opened.as_str(),
            case.server_date_modified.as_str(),
        ];
        assert_eq!(
            actual, expected,
            "{}: opened, modified, server opened, server modified",
            case.case_id
        );
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

    /// A child index `identifier` to the case `case_id` of type `case_type`.
    fn child_index(identifier: &str, case_type: &str, case_id: &str) -> CaseIndex {
        CaseIndex {
            identifier: identifier.to_owned(),
            case_type: case_type.to_owned(),
            case_id: case_id.to_owned(),
            relationship: "child".to_owned(),
        }
    }

    #[test]
    fn household_life_cycle_register_members_visit_close() {
        let mut store = CaseStore::new();
        let register = submit(
            &mut store,
            "household_register.xml",
            "2023-03-14T03:40:00.000000Z",
        );
        assert_eq!(register, "0f6c2d1e-8a4b-4c3d-9e2f-1a0b3c4d5e61");
        assert_eq!(store.len(), 1);
        let household = &store[HOUSEHOLD];
        assert_eq!(household.domain, "demo");
        assert_eq!(household.case_type, "household");
        assert_eq!(household.case_name, "Okafor");
        assert_eq!(household.owner_id, "team_north");
        assert_eq!(household.user_id, ASHA);
        assert_eq!(household.opened_by, ASHA);
        assert_eq!(household.external_id, None);
        assert_dates(
            household,
            [
                "2023-03-14T03:35:47.318000Z",
                "2023-03-14T03:35:47.318000Z",
                "2023-03-14T03:40:00.000000Z",
                "2023-03-14T03:40:00.000000Z",
            ],
        );
        assert!(
            !household.closed && household.date_closed.is_none() && household.closed_by.is_none()
        );
        assert_eq!(
            property_names(household),
            [
                "village",
                "head_name",
                "water_source",
                "phone",
                "members",
                "latrine",
                "visit_kind",
                "date_registered"
            ]
        );
        assert_eq!(property(household, "visit_kind"), Some("register"));
        assert_eq!(property(household, "phone"), Some(""));
        assert!(household.indices.is_empty() && household.attachments.is_empty());
        assert_eq!(household.xform_ids, [register.as_str()]);

        let members = submit(
            &mut store,
            "household_members.xml",
            "2023-03-14T03:45:00.000000Z",
        );
        assert_eq!(store.len(), 3);
        let household = &store[HOUSEHOLD];
        assert_eq!(
            household.case_name, "Okafor",
            "an update without case_name keeps it"
        );
        assert_dates(
            household,
            [
                "2023-03-14T03:35:47.318000Z",
                "2023-03-14T03:42:05.904000Z",
                "2023-03-14T03:40:00.000000Z",
                "2023-03-14T03:45:00.000000Z",
            ],
        );
        assert_eq!(household.properties.len(), 12);
        assert_eq!(
            household.properties[4],
            ("members".to_owned(), "5".to_owned()),
            "replaced in place"
        );
        assert_eq!(
            &property_names(household)[8..10],
            ["income_source", "children_under_five"]
        );
        assert_eq!(property(household, "date_next_visit"), Some("2023-04-14"));
        assert_eq!(property(household, "bed_nets"), Some(""));
        assert_eq!(household.xform_ids, [register.clone(), members.clone()]);
        for (member_id, name, sex, dob) in [
            (CHIDI, "Chidi", "male", "2019-08-02"),
            (ADA, "Ada", "female", "2021-01-20"),
        ] {
            let member = &store[member_id];
            assert_eq!(member.case_type, "member");
            assert_eq!(member.case_name, name);
            assert_eq!(member.owner_id, "team_north");
            assert_eq!(member.opened_by, ASHA);
            assert_eq!(member.date_opened, "2023-03-14T03:42:05.904000Z");
            assert_eq!(member.server_date_opened, "2023-03-14T03:45:00.000000Z");
            assert_eq!(
                member.properties,
                [
                    ("sex".to_owned(), sex.to_owned()),
                    ("dob".to_owned(), dob.to_owned())
                ]
            );
            assert_eq!(
                member.indices,
                [child_index("household_id", "household", HOUSEHOLD)]
            );
            assert_eq!(member.xform_ids, [members.as_str()]);
        }
        assert_eq!(store[CHIDI].attachments, ["portrait"]);
        assert!(store[ADA].attachments.is_empty());

        let visit = submit(
            &mut store,
            "household_visit.xml",
            "2023-04-14T05:00:00.000000Z",
        );
        let household = &store[HOUSEHOLD];
        assert_eq!(property(household, "visit_kind"), Some("followup"));
        assert_eq!(property(household, "date_last_visit"), Some("2023-04-14"));
        assert_eq!(property(household, "date_next_visit"), Some("2023-05-14"));
        assert_eq!(household.properties.len(), 14);
        assert_eq!(household.date_modified, "2023-04-14T04:50:30.512000Z");
        assert_eq!(
            household.xform_ids,
            [register.clone(), members.clone(), visit.clone()]
        );
        for member_id in [CHIDI, ADA] {
            let member = &store[member_id];
            assert_eq!(property(member, "last_fever"), Some(""));
            assert_eq!(property(member, "weighed"), Some("yes"));
            assert_eq!(
                member.indices,
                [child_index("household_id", "household", HOUSEHOLD)],
                "an update keeps indices"
            );
            assert_eq!(member.xform_ids, [members.clone(), visit.clone()]);
        }
        assert_eq!(
            store[CHIDI].attachments,
            ["portrait"],
            "an update keeps attachments"
        );

        let close = submit(
            &mut store,
            "household_close.xml",
            "2023-06-01T03:00:00.000000Z",
        );
        for case_id in [HOUSEHOLD, CHIDI, ADA] {
            let case = &store[case_id];
            assert_closed(case, "2023-06-01T02:45:00.125000Z", ASHA);
            assert_eq!(case.date_modified, "2023-06-01T02:45:00.125000Z");
            assert_eq!(case.server_date_modified, "2023-06-01T03:00:00.000000Z");
            assert_eq!(case.xform_ids.last(), Some(&close));
        }
        assert_eq!(store[HOUSEHOLD].xform_ids.len(), 4);
        assert_eq!(
            store[HOUSEHOLD].properties.len(),
            14,
            "an empty update changes nothing"
        );
        assert_eq!(store[CHIDI].case_name, "Chidi");
    }

    #[test]
    fn clinic_tasks_creates_eleven_linked_cases() {
        const CLIENT: &str = "a41c7e0b95d24f6e8a3b1c2d3e4f5a60";
        let (store, form_id) = store_after("clinic_tasks.xml", "2023-02-20T08:05:00.000000Z");
        assert_eq!(store.len(), 11);
        let parent = &store[CLIENT];
        assert_eq!(parent.case_type, "client");
        assert_eq!(
            parent.date_opened, "2023-02-10T00:00:00.000000Z",
            "a date without time is its midnight UTC"
        );
        assert_eq!(parent.properties.len(), 10);
        assert_eq!(property(parent, "village"), Some("Hillside"));
        let infant = &store["b52d8f1c-a6e3-4b7f-9c4d-2e3f4a5b6c71"];
        assert_eq!(infant.indices, [child_index("mother_id", "client", CLIENT)]);
        let tasks: Vec<&Case> = store
            .values()
            .filter(|case| case.case_type == "task")
            .collect();
        assert_eq!(tasks.len(), 9);
        for task in tasks {
            assert_eq!(task.owner_id, "clinic_east_0f1e2d3c4b5a69788796");
            assert_eq!(task.user_id, "e7d6c5b4a3928170f6e5d4c3b2a19080");
            assert_eq!(task.date_modified, "2023-02-20T00:00:00.000000Z");
            assert_eq!(task.indices.len(), 1);
            assert_eq!(task.indices[0].identifier, "person_id");
            assert_eq!(task.xform_ids, [form_id.as_str()]);
            assert!(property(task, "task_code").is_some());
        }
        assert_eq!(store["task-2023-02-20-09"].indices[0].case_type, "client");
    }

    #[test]
    fn two_blocks_without_create_make_one_case() {
        let (store, form_id) =
            store_after("two_blocks_one_case.xml", "2023-05-02T07:00:00.000000Z");
        assert_eq!(store.len(), 1);
        let case = &store["VLG-2023-0077"];
        let user = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";
        assert_eq!(case.case_type, "");
        assert_eq!(case.case_name, "");
        assert_eq!(case.owner_id, user, "owner defaults to the user");
        assert_eq!(case.opened_by, user);
        assert_eq!(case.date_opened, "2023-05-02T06:45:12.040000Z");
        assert_eq!(case.server_date_opened, "2023-05-02T07:00:00.000000Z");
        assert_eq!(property(case, "village_name"), Some("Kisoro"));
        assert_eq!(case.properties.len(), 3);
        assert_eq!(case.xform_ids, [form_id], "one form id for two blocks");
    }

    #[test]
    fn bare_create_update_close() {
        let mut store = CaseStore::new();
        submit(&mut store, "bare_create.xml", "2021-07-01T09:00:00.000000Z");
        let case = &store["bare-case-1"];
        assert_eq!(case.case_type, "site_visit");
        assert_eq!(case.case_name, "first visit");
        assert_eq!(
            case.owner_id, "bare-user-1",
            "owner defaults to the block's user"
        );
        assert_eq!(case.opened_by, "bare-user-1");
        assert_dates(
            case,
            [
                "2021-07-01T08:00:00.000000Z",
                "2021-07-01T08:00:00.000000Z",
                "2021-07-01T09:00:00.000000Z",
                "2021-07-01T09:00:00.000000Z",
            ],
        );

        submit(&mut store, "bare_update.xml", "2021-07-02T09:00:00.000000Z");
        let case = &store["bare-case-1"];
        assert_eq!(case.case_type, "site_inspection");
        assert_eq!(case.case_name, "renamed visit");
        assert_eq!(
            case.properties,
            [("outcome".to_owned(), "passed with notes".to_owned())]
        );
        assert_eq!(case.date_modified, "2021-07-02T08:00:00.000000Z");
        assert_eq!(case.date_opened, "2021-07-01T08:00:00.000000Z");

        submit(&mut store, "bare_close.xml", "2021-07-03T09:00:00.000000Z");
        let case = &store["bare-case-1"];
        assert_closed(case, "2021-07-01T08:00:00.000000Z", "bare-user-1");
        assert_eq!(
            case.date_modified, "2021-07-02T08:00:00.000000Z",
            "an older device time does not move it back"
        );
        assert_eq!(case.server_date_modified, "2021-07-03T09:00:00.000000Z");
        assert_eq!(
            case.xform_ids,
            ["bare_create.xml", "bare_update.xml", "bare_close.xml"]
        );
    }

    #[test]
    fn index_update_adds_replaces_and_removes() {
        let mut store = CaseStore::new();
        submit(&mut store, "bare_create.xml", "2021-07-01T09:00:00.000000Z");
        submit(&mut store, "bare_index.xml", "2021-07-02T09:00:00.000000Z");
        let case = &store["bare-case-1"];
        let identifiers: Vec<_> = case
            .indices
            .iter()
            .map(|index| index.identifier.as_str())
            .collect();
        assert_eq!(identifiers, ["site_ref", "host_ref"]);
        assert_eq!(case.indices[0].case_type, "site");
        assert_eq!(case.indices[0].case_id, "site-17");
        assert_eq!(case.indices[0].relationship, "child");
        assert_eq!(case.indices[1].case_id, "site-18");
        assert_eq!(case.indices[1].relationship, "extension");

        let change = |identifier: &str, case_id: &str, relationship: Option<&str>| IndexChange {
            identifier: identifier.to_owned(),
            case_type: "host_type".to_owned(),
            case_id: case_id.to_owned(),
            relationship: relationship.map(str::to_owned),
        };
        let block = CaseBlock {
            case_id: "bare-case-1".to_owned(),
            indices: vec![
                change("site_ref", "", None),
                change("host_ref", "new_host", Some("extension")),
                change("never_there", "", None),
            ],
            ..CaseBlock::default()
        };
        let context = FormContext {
            domain: "demo",
            form_id: "index-change",
            received_on: "2021-07-03T00:00:00.000000Z",
            form_user_id: None,
            form_time_end: None,
        };
        let case = apply_block(store.remove("bare-case-1"), &block, &context);
        assert_eq!(
            case.indices,
            [CaseIndex {
                identifier: "host_ref".to_owned(),
                case_type: "host_type".to_owned(),
                case_id: "new_host".to_owned(),
                relationship: "extension".to_owned(),
            }]
        );
        assert_eq!(
            case.user_id, "bare-user-1",
            "no user in the block or form keeps the last one"
        );
        assert_eq!(
            case.date_modified, "2021-07-03T00:00:00.000000Z",
            "falls back to receipt time"
        );
    }

    #[test]
    fn v1_blocks_in_repeats_create_three_cases() {
        let (store, _) = store_after("v1_cases_in_repeats.xml", "2020-10-05T18:00:00.000000Z");
        assert_eq!(store.len(), 3);
        let piglet = &store["v1-piglet-0001"];
        assert_eq!(piglet.case_type, "piglet");
        assert_eq!(piglet.case_name, "S-88 litter");
        assert_eq!(piglet.external_id.as_deref(), Some("v1-piglet-0001"));
        assert_eq!(piglet.owner_id, "V1USER00000000000000000AA");
        assert_eq!(piglet.date_modified, "2020-10-05T17:45:10.250000Z");
        assert_eq!(property(piglet, "user_id"), None);
        assert_eq!(property(piglet, "pen"), Some("7"));
        let sow = &store["V1SOW0000000000000000S88"];
        assert_closed(
            sow,
            "2020-10-05T17:48:02.900000Z",
            "V1USER00000000000000000AA",
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
