//! A payload format built against repeatd:plugin@1.2.0, a version of the WIT
//! package the host was not built with. Sends the body `next-minor`.

include!("../../form_format.rs");

form_format!(wit: "../wit-1.2", description: "built against repeatd:plugin@1.2.0");

fn build_form(_event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
    Ok(send(b"next-minor".to_vec(), "text/plain"))
}
