//! Which repeaters want which payloads: the repeater filters of SPEC section 5
//! as plain predicates over a form or a case.

use crate::model::{Case, StoredForm};
use crate::repeater::{CaseEvents, PayloadKind, RepeaterSpec};

/// Whether a form or form-stub repeater forwards this form.
pub fn wants_form(repeater: &RepeaterSpec, form: &StoredForm) -> bool {
    if !matches!(repeater.kind, PayloadKind::Form | PayloadKind::FormStub) || form.is_device_report
    {
        return false;
    }
    if !repeater.xmlns.is_empty() && !repeater.xmlns.contains(&form.xmlns) {
        return false;
    }
    !is_blocked(repeater, form.meta.user_id.as_deref())
}

/// Whether a case repeater forwards this case after a form touched it.
/// `created` says whether that form created the case.
pub fn wants_case(repeater: &RepeaterSpec, case: &Case, created: bool, form: &StoredForm) -> bool {
    if repeater.kind != PayloadKind::Case || form.is_device_report {
        return false;
    }
    if !repeater.case_types.is_empty() && !repeater.case_types.contains(&case.case_type) {
        return false;
    }
    let event_wanted = match repeater.case_events {
        CaseEvents::Any => true,
        CaseEvents::Create => created,
        CaseEvents::Update => !created,
    };
    event_wanted && !is_blocked(repeater, form.meta.user_id.as_deref())
}

fn is_blocked(repeater: &RepeaterSpec, user_id: Option<&str>) -> bool {
    user_id.is_some_and(|user| {
        repeater
            .user_blocklist
            .iter()
            .any(|blocked| blocked == user)
    })
}
