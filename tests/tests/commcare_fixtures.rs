//! The gateway against CommCare's own test data, which the project does not
//! carry: CommCare HQ's case fixtures submitted raw and as OpenRosa multipart
//! build the case states HQ builds, field by field; the acceptance seed form is
//! forwarded and its case built as HQ does; the project's case-list example
//! has the shape of HQ's Case API answer.
//!
//! Not part of `./test.sh`: `.ci/run` runs it where the project's `shared`
//! folder sits beside the repository, as
//! `REPEATD_SHARED=../shared cargo nextest run -p repeatd-tests --features commcare-fixtures --test commcare_fixtures`.
//! Without `REPEATD_SHARED` naming that folder every test here fails, saying so.

use std::collections::BTreeSet;
use std::path::PathBuf;

use repeatd_tests::fixture_session::*;
use repeatd_tests::*;
use serde_json::Value;

/// The `shared` folder named by `REPEATD_SHARED`; panics if it is unset or
/// is not that folder.
fn shared() -> PathBuf {
    let Some(dir) = std::env::var_os("REPEATD_SHARED") else {
        panic!(
            "REPEATD_SHARED is not set: set it to the project's shared folder \
             (the one holding fixtures/commcare and acceptance/seed_form.xml)"
        );
    };
    let dir = PathBuf::from(dir);
    let marker = dir.join("fixtures/commcare/SOURCES.md");
    assert!(
        marker.is_file(),
        "REPEATD_SHARED={} is not the shared folder: {} is missing",
        dir.display(),
        marker.display()
    );
    dir
}

// ---- the case states CommCare builds -----------------------------------------------------

const MOTHER: &str = "9dbce942-0163-438b-b3e5-67b473d2f719";
const FIRST_CHILD: &str = "17e36de1-b9de-423c-a6a6-605d291ec976";
const SECOND_CHILD: &str = "7b58fd8f-1bb8-4978-99a6-7b5d9826c1f9";
const SHEEL: &str = "67bffa913b38e7901851d863ededa475";
const REG1: &str = "8c4a4668-6be0-4f32-a1fd-e4d4e3ba2019";
const REG2: &str = "91d014c5-02d9-4bfe-bd4c-c72f8624f6d2";
const CF: &str = "d66482bf-874e-42d9-b2b7-620ba6e4b3b3";
const CLOSE: &str = "b45aeae8-ba55-4541-ae2e-0ead6b5e1f31";

fn mother_properties_reg1() -> Vec<(&'static str, &'static str)> {
    vec![
        ("last_visit_type", "new"),
        ("date_last_visit", "2012-05-25"),
        ("date_next_reg", "2012-05-25"),
        ("mother_alive", "yes"),
        ("mother_name", "Ad"),
        ("husband_name", ""),
        ("hh_number", ""),
        ("family_number", "2"),
        ("mother_dob", "1990-05-25"),
    ]
}

async fn pregnancy_life_cycle(session: &mut Session<'_>) {
    let mother = Want {
        case_id: MOTHER,
        case_type: "cc_bihar_pregnancy",
        case_name: "Ad",
        owner_id: "main_user",
        user_id: SHEEL,
        date_opened: "2012-05-25T09:57:38.490000Z",
        date_modified: "2012-05-25T09:57:38.490000Z",
        properties: mother_properties_reg1(),
        xform_ids: ids(&[REG1]),
        ..Want::default()
    };

    session.submit("reg1.xml", Some(REG1), &[MOTHER]).await;
    session.expect(&mother).await;
    for child in [FIRST_CHILD, SECOND_CHILD] {
        let (status, _) = get_case(session.gateway, &session.domain, child).await;
        assert_eq!(status, 404, "the children do not exist before reg2");
    }

    session
        .submit("reg2.xml", Some(REG2), &[MOTHER, FIRST_CHILD, SECOND_CHILD])
        .await;
    let mother_properties_reg2 = with(
        mother_properties_reg1(),
        &[
            ("mobile_number", "358623242"),
            ("mother_dob", "1990-05-25"),
            ("num_boys", "0"),
            ("add", "2011-11-25"),
            ("last_visit_type", "reg"),
            ("date_last_visit", "2012-05-25"),
            ("family_planning_type", "no_fp_adopted_at_delivery"),
            ("edd", ""),
            ("age", "22"),
            ("lmp", ""),
            ("birth_place", "transit"),
            ("how_many_children", "2"),
            ("eats_meat", "no"),
            ("date_next_cf", "2012-05-26"),
        ],
    );
    let mother = Want {
        date_modified: "2012-05-25T10:00:31.704000Z",
        properties: mother_properties_reg2.clone(),
        xform_ids: ids(&[REG1, REG2]),
        ..mother
    };
    session.expect(&mother).await;
    let child = |case_id: &'static str, case_name: &'static str| Want {
        case_id,
        case_type: "cc_bihar_newborn",
        case_name,
        owner_id: "main_user",
        user_id: SHEEL,
        date_opened: "2012-05-25T10:00:31.704000Z",
        date_modified: "2012-05-25T10:00:31.704000Z",
        properties: vec![("gender", "female"), ("dob", "2011-11-25")],
        indices: vec![("mother_id", "cc_bihar_pregnancy", MOTHER, "child")],
        xform_ids: ids(&[REG2]),
        ..Want::default()
    };
    let children = [child(FIRST_CHILD, "C1"), child(SECOND_CHILD, "C2")];
    for want in &children {
        session.expect(want).await;
    }

    // cf updates the second child before the first.
    session
        .submit("cf.xml", Some(CF), &[MOTHER, SECOND_CHILD, FIRST_CHILD])
        .await;
    let mother = Want {
        date_modified: "2012-05-25T10:01:38.109000Z",
        properties: with(
            mother_properties_reg2,
            &[
                ("last_visit_type", "cf"),
                ("date_last_visit", "2012-05-25"),
                ("date_cf_1", "2012-05-25"),
                ("date_next_cf", "2012-06-24"),
            ],
        ),
        xform_ids: ids(&[REG1, REG2, CF]),
        ..mother
    };
    session.expect(&mother).await;
    let children = children.map(|want| Want {
        date_modified: "2012-05-25T10:01:38.109000Z",
        properties: with(want.properties.clone(), &[("baby_measles", "")]),
        xform_ids: ids(&[REG2, CF]),
        ..want
    });
    for want in &children {
        session.expect(want).await;
    }

    // close: an empty update and a close on each; indices and properties stay.
    session
        .submit(
            "close.xml",
            Some(CLOSE),
            &[MOTHER, FIRST_CHILD, SECOND_CHILD],
        )
        .await;
    let closed_at = "2012-05-26T03:11:37.259000Z";
    let mother = Want {
        date_modified: closed_at,
        date_closed: Some(closed_at),
        xform_ids: ids(&[REG1, REG2, CF, CLOSE]),
        ..mother
    };
    session.expect(&mother).await;
    for want in children {
        session
            .expect(&Want {
                date_modified: closed_at,
                date_closed: Some(closed_at),
                xform_ids: ids(&[REG2, CF, CLOSE]),
                ..want
            })
            .await;
    }
}

async fn lots_of_subcases(session: &mut Session<'_>) {
    const FORM: &str = "e9d6bb33-783d-4978-a2e0-762b42e87b9d";
    const PARENT: &str = "f8b34e0c744f8f45dfa12e28617e5716";
    const NEWBORN: &str = "7554c7f4-fc96-4b1d-aec8-8890e96ffc54";
    const OWNER: &str = "3c5a80e4db53049dfc110c368a0d282b";
    const USER: &str = "67bffa913b38e7901851d863eded2ba3";
    const TASKS: [(&str, &str, &str); 9] = [
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c1", "DPT 1", "dpt_1"),
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c2", "BCG", "bcg"),
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c3", "OPV 0", "opv_0"),
        (
            "763ca815-df9c-4037-9f0e-6edd2af8ba6c4",
            "HEP B 0",
            "hep_b_0",
        ),
        (
            "763ca815-df9c-4037-9f0e-6edd2af8ba6c5",
            "Measles",
            "measles",
        ),
        (
            "763ca815-df9c-4037-9f0e-6edd2af8ba6c6",
            "VIT A 1",
            "vit_a_1",
        ),
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c7", "JE", "je"),
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c8", "TT 1", "tt_1"),
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c9", "ANC 1", "anc_1"),
    ];
    let mut touched = vec![PARENT, NEWBORN];
    touched.extend(TASKS.iter().map(|(id, _, _)| *id));
    assert_eq!(touched.len(), 11);
    session
        .submit("lots_of_subcases.xml", Some(FORM), &touched)
        .await;

    session
        .expect(&Want {
            case_id: PARENT,
            case_type: "cc_bihar_pregnancy",
            case_name: "Ashish",
            owner_id: OWNER,
            user_id: USER,
            // A device date without a time is its midnight UTC, as in HQ.
            date_opened: "2012-04-19T00:00:00.000000Z",
            date_modified: "2012-04-19T00:00:00.000000Z",
            properties: vec![
                ("add", "2012-01-30"),
                ("age", "25"),
                ("date_last_visit", "2012-04-12"),
                ("date_next_bp", "2012-04-19"),
                ("date_next_cf", "2012-04-19"),
                ("date_next_reg", "2012-04-19"),
                ("edd", ""),
                ("family_number", "2"),
                ("family_planning_type", "ppiud_at_delivery"),
                ("hh_number", "5"),
                ("husband_name", "MOHAN"),
                ("last_preg_tt", "no"),
                ("last_visit_type", "reg"),
                ("lmp", ""),
                ("mobile_number", "258411"),
                ("mother_alive", "yes"),
                ("mother_dob", "1986-10-10"),
                ("mother_name", "Ashish"),
                ("num_boys", "1"),
                ("tt_1_date", "2012-04-30"),
            ],
            xform_ids: ids(&[FORM]),
            ..Want::default()
        })
        .await;
    session
        .expect(&Want {
            case_id: NEWBORN,
            case_type: "cc_bihar_newborn",
            case_name: "jayant",
            owner_id: OWNER,
            user_id: USER,
            date_opened: "2012-04-12T00:00:00.000000Z",
            date_modified: "2012-04-12T00:00:00.000000Z",
            properties: vec![
                ("bcg_date", "2012-05-01"),
                ("dob", "2011-09-19"),
                ("gender", "male"),
                ("opv_1_date", "2012-04-10"),
            ],
            indices: vec![("mother_id", "cc_bihar_pregnancy", PARENT, "child")],
            xform_ids: ids(&[FORM]),
            ..Want::default()
        })
        .await;
    for (n, (case_id, case_name, task_id)) in TASKS.into_iter().enumerate() {
        // The last two tasks hang off the mother, the others off the newborn.
        let person = if n < 7 {
            ("person_id", "cc_bihar_newborn", NEWBORN, "child")
        } else {
            ("person_id", "cc_bihar_pregnancy", PARENT, "child")
        };
        session
            .expect(&Want {
                case_id,
                case_type: "task",
                case_name,
                owner_id: OWNER,
                user_id: USER,
                date_opened: "2012-05-28T00:00:00.000000Z",
                date_modified: "2012-05-28T00:00:00.000000Z",
                properties: vec![
                    ("date_eligible", "2012-05-28"),
                    ("date_expires", "2013-09-19"),
                    ("task_id", task_id),
                ],
                indices: vec![person],
                xform_ids: ids(&[FORM]),
                ..Want::default()
            })
            .await;
    }
}

async fn multiple_case_blocks(session: &mut Session<'_>) {
    const FORM: &str = "50cd023e-652c-4e8b-82a9-e0e13a9c0ce8";
    const CASE: &str = "MCLPZ69ON942EKNIBR5WF1G2L";
    const USER: &str = "de7abbf6d898ae2d7dcd2bdc79f2785c";
    // Two blocks, no create: one case, one record, the form listed once.
    session
        .submit("multiple_case_blocks.xml", Some(FORM), &[CASE])
        .await;
    session
        .expect(&Want {
            case_id: CASE,
            case_type: "",
            case_name: "",
            owner_id: USER,
            user_id: USER,
            date_opened: "2012-05-31T07:06:31.379000Z",
            date_modified: "2012-05-31T07:06:31.379000Z",
            properties: vec![
                ("community_code", "1630005"),
                ("district_name", "SantaMariaCahabon"),
                ("community_name", "TAMERLO"),
            ],
            xform_ids: ids(&[FORM]),
            ..Want::default()
        })
        .await;
}

async fn form_with_case(session: &mut Session<'_>) {
    const FORM: &str = "ad38211be256653bceac8e2156475666";
    const CASE: &str = "ad38211be256653bceac8e2156475667";
    const USER: &str = "ad38211be256653bceac8e2156475665";
    session
        .submit("form_with_case.xml", Some(FORM), &[CASE])
        .await;
    session
        .expect(&Want {
            case_id: CASE,
            case_type: "test_case_type",
            case_name: "test case name",
            owner_id: USER,
            user_id: USER,
            // A device time without an offset is UTC, as in HQ.
            date_opened: "2010-06-29T13:42:50.000000Z",
            date_modified: "2010-06-29T13:42:50.000000Z",
            external_id: Some("someexternal"),
            xform_ids: ids(&[FORM]),
            ..Want::default()
        })
        .await;
    let (_, form) = get_form(session.gateway, &session.domain, FORM).await;
    assert_eq!(form["xmlns"], "http://commcarehq.org/test/submit");
    assert_eq!(form["username"], "someuser");
    assert_eq!(form["user_id"], USER);
    assert_eq!(form["device_id"], "Chalimbana");
    assert_eq!(form["time_end"], "2010-06-29T13:55:50.137");
}

async fn case_ledger_form(session: &mut Session<'_>) {
    // No instanceID: the legacy `uid` is the form id.
    const FORM: &str = "ad38211be256653bceac8e2156475664";
    const CLOSED: &str = "fbb69a88-1eca-463a-883e-1148b96fb03b";
    const OPEN: &str = "fbb69a88-1eca-463a-883e-1148b96fb03c";
    session
        .submit("case_ledger_form.xml", Some(FORM), &[CLOSED, OPEN])
        .await;
    let invoice = |case_id| Want {
        case_id,
        case_type: "invoice",
        case_name: "school-program",
        // The update's owner_id replaces the create's "-".
        owner_id: "91cadfa4cb957cf021c76dfe31d206a6",
        user_id: "e499e67838e9efb6fe210c147045b1dc",
        // 10:21:48.715+01 in UTC.
        date_opened: "2016-03-02T09:21:48.715000Z",
        date_modified: "2016-03-02T09:21:48.715000Z",
        properties: vec![
            ("amount-owed-to-entrepreneur", "119600"),
            ("entrepreneur", "joe"),
            ("month", "2"),
            ("year", "2016"),
        ],
        xform_ids: ids(&[FORM]),
        ..Want::default()
    };
    session
        .expect(&Want {
            date_closed: Some("2016-03-02T09:21:48.715000Z"),
            ..invoice(CLOSED)
        })
        .await;
    session.expect(&invoice(OPEN)).await;
    let (_, form) = get_form(session.gateway, &session.domain, FORM).await;
    assert_eq!(
        form["device_id"], "myphone",
        "meta fields match ignoring case"
    );
}

async fn basic_create_update_close_and_index_update(session: &mut Session<'_>) {
    const CASE: &str = "foo-case-id";
    const USER: &str = "bar-user-id";
    let n = session.form_ids.len();
    // These fixtures have no meta: each gets a generated form id.
    session.submit("basic_create.xml", None, &[CASE]).await;
    let created = Want {
        case_id: CASE,
        case_type: "v2_case_type",
        case_name: "test case name",
        owner_id: USER,
        user_id: USER,
        date_opened: "2011-12-06T13:42:50.000000Z",
        date_modified: "2011-12-06T13:42:50.000000Z",
        xform_ids: vec![session.form(n)],
        ..Want::default()
    };
    session.expect(&created).await;

    session.submit("basic_update.xml", None, &[CASE]).await;
    let updated = Want {
        case_type: "updated_v2_case_type",
        case_name: "updated case name",
        date_modified: "2011-12-07T13:42:50.000000Z",
        properties: vec![("dynamic", "something dynamic")],
        xform_ids: vec![session.form(n), session.form(n + 1)],
        ..created
    };
    session.expect(&updated).await;

    // The close carries an older device time: date_modified does not go back.
    session.submit("basic_close.xml", None, &[CASE]).await;
    let closed = Want {
        date_closed: Some("2011-12-06T13:42:50.000000Z"),
        xform_ids: vec![session.form(n), session.form(n + 1), session.form(n + 2)],
        ..updated
    };
    session.expect(&closed).await;

    session.submit("index_update.xml", None, &[CASE]).await;
    session
        .expect(&Want {
            indices: vec![
                ("foo_ref", "bar", "some_referenced_id", "child"),
                ("baz_ref", "bop", "some_other_referenced_id", "child"),
            ],
            xform_ids: (n..n + 4).map(|i| session.form(i)).collect(),
            ..closed
        })
        .await;
}

async fn case_in_repeats(session: &mut Session<'_>) {
    const FORM: &str = "JLP8BS71HFU3VGMIWW610W80T";
    const FIRST: &str = "32337c03-2b73-497f-ab18-2b587f8c21df";
    const SECOND: &str = "581b0506-7c94-4af5-ac67-f934566d5418";
    const MOM: &str = "CMYOSI95QCED3ZWIP9ZK1QNQ6";
    const USER: &str = "2XC1EINEJV1NZ7QXHVUMHUQQV";
    session
        .submit("case_in_repeats.xml", Some(FORM), &[FIRST, SECOND, MOM])
        .await;
    let child = |case_id, sex| Want {
        case_id,
        case_type: "newborn_hiv_child",
        case_name: "ADG",
        owner_id: USER,
        user_id: USER,
        date_opened: "2011-09-19T22:29:48.096000Z",
        date_modified: "2011-09-19T22:29:48.096000Z",
        external_id: Some(case_id),
        properties: vec![
            ("sex", sex),
            ("breastfeeding", "2"),
            ("taluka", "athani"),
            ("age", "23"),
            ("address", "DAG"),
            ("number", "234234234"),
            ("result1", ""),
            ("result2", ""),
            ("unique_id", "234"),
        ],
        xform_ids: ids(&[FORM]),
        ..Want::default()
    };
    session.expect(&child(FIRST, "1")).await;
    session.expect(&child(SECOND, "2")).await;
    session
        .expect(&Want {
            case_id: MOM,
            case_type: "mother",
            case_name: "mom",
            owner_id: USER,
            user_id: USER,
            date_opened: "2011-09-19T22:31:48.902000Z",
            date_modified: "2011-09-19T22:31:48.902000Z",
            date_closed: Some("2011-09-19T22:31:48.902000Z"),
            properties: vec![
                ("delivery_type", "1"),
                ("delivery_form_complete", "OK"),
                ("nevirapine", "1"),
                ("place", "1"),
                ("birth_type", "other"),
                ("delivery_date", "2011-09-19"),
            ],
            xform_ids: ids(&[FORM]),
            ..Want::default()
        })
        .await;
}

/// Every fixture, in an order that builds on earlier ones.
const FIXTURES_SUBMITTED: [&str; 13] = [
    "reg1.xml",
    "reg2.xml",
    "cf.xml",
    "close.xml",
    "lots_of_subcases.xml",
    "multiple_case_blocks.xml",
    "form_with_case.xml",
    "case_ledger_form.xml",
    "basic_create.xml",
    "basic_update.xml",
    "basic_close.xml",
    "index_update.xml",
    "case_in_repeats.xml",
];

async fn every_fixture(session: &mut Session<'_>) {
    pregnancy_life_cycle(session).await;
    lots_of_subcases(session).await;
    multiple_case_blocks(session).await;
    form_with_case(session).await;
    case_ledger_form(session).await;
    basic_create_update_close_and_index_update(session).await;
    case_in_repeats(session).await;
    assert_eq!(session.form_ids.len(), FIXTURES_SUBMITTED.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commcare_fixture_raw_and_multipart_builds_commcare_case_states() {
    let dir = shared().join("fixtures/commcare");
    let submitted: BTreeSet<String> = FIXTURES_SUBMITTED
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
    assert_eq!(xml_files_in(&dir), submitted, "every fixture is submitted");

    let receiver = Receiver::start().await;
    let config = format!(
        "{}{}",
        project("raw", &receiver, ""),
        project("multi", &receiver, "")
    );
    let gateway = Gateway::start(&config).await;
    let mut raw = Session::new(&gateway, &receiver, "raw", Mode::Raw, &dir);
    let mut multi = Session::new(&gateway, &receiver, "multi", Mode::Multipart, &dir);
    every_fixture(&mut raw).await;
    every_fixture(&mut multi).await;
    gateway.stop().await;
}

// ---- the acceptance seed form ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acceptance_seed_form_is_forwarded_and_builds_its_case() {
    const FORM: &str = "afcb3026-c4b3-463f-85ec-0cb9a2737fc5";
    const CASE: &str = "b0916685-7247-4c44-b712-633d3d64e0c0";
    const USER: &str = "d0e472a6b36dfd3ee5059222e12b8c1b";
    let dir = shared().join("acceptance");
    let receiver = Receiver::start().await;
    let config = format!(
        "{}{}",
        project("raw", &receiver, ""),
        project("multi", &receiver, "")
    );
    let gateway = Gateway::start(&config).await;
    for (domain, mode) in [("raw", Mode::Raw), ("multi", Mode::Multipart)] {
        let mut session = Session::new(&gateway, &receiver, domain, mode, &dir);
        session.submit("seed_form.xml", Some(FORM), &[CASE]).await;
        session
            .expect(&Want {
                case_id: CASE,
                case_type: "mscase",
                case_name: "Trees",
                owner_id: USER,
                user_id: USER,
                // 16:04:54.950-04 in UTC.
                date_opened: "2015-04-17T20:04:54.950000Z",
                date_modified: "2015-04-17T20:04:54.950000Z",
                xform_ids: ids(&[FORM]),
                ..Want::default()
            })
            .await;
        let (_, form) = get_form(&gateway, domain, FORM).await;
        assert_eq!(
            form["xmlns"],
            "http://openrosa.org/formdesigner/B9C4EB51-A7CC-49B5-B7D5-10E9F10B450B"
        );
        assert_eq!(form["username"], "danny");
        assert_eq!(form["device_id"], "990005013558458");
    }
    gateway.stop().await;
}

// ---- the case-list example ---------------------------------------------------------------

/// The keys of a JSON object, sorted.
fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[test]
fn the_projects_case_list_example_has_the_shape_of_commcares() {
    let read = |path: PathBuf| -> Value {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()))
    };
    let commcare = read(shared().join("fixtures/commcare/case_v1/list_response.json"));
    let ours = read(fixture("case_list.json"));
    assert_eq!(keys(&ours), keys(&commcare), "the envelope");
    assert_eq!(keys(&ours["meta"]), keys(&commcare["meta"]), "meta");
    let (ours, commcare) = (&ours["objects"][0], &commcare["objects"][0]);
    assert_eq!(keys(ours), keys(commcare), "a case object");
    for key in [
        "case_name",
        "case_type",
        "date_opened",
        "external_id",
        "owner_id",
    ] {
        assert!(
            commcare["properties"].get(key).is_some(),
            "CommCare's properties.{key}"
        );
        assert!(
            ours["properties"].get(key).is_some(),
            "our properties.{key}"
        );
    }
}
