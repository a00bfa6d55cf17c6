//! A payload format that panics on every form: a trap the host must contain.

include!("../../form_format.rs");

form_format!(wit: "../../../wit", description: "panics on every form");

fn build_form(event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
    let form_id = match event {
        Event::Form(form) => form.form_id,
        _ => String::new(),
    };
    panic!("the trapping plugin panics on form {form_id}");
}
