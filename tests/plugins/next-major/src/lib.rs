//! A payload format built against repeatd:plugin@2.0.0, a version of the WIT
//! package the host was not built with. Sends the body `next-major`.

include!("../../form_format.rs");

form_format!(wit: "../wit-2.0", description: "built against repeatd:plugin@2.0.0");

fn build_form(_event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
    Ok(send(b"next-major".to_vec(), "text/plain"))
}
