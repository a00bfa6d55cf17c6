//! A payload format built against repeatd:plugin@1.0.0, the first version of
//! the WIT package, which has no `event-context`: it must keep loading in a
//! host of a later 1.x. Sends the body `previous-minor`.

include!("../../form_format.rs");

form_format!(wit: "../wit-1.0", description: "built against repeatd:plugin@1.0.0");

fn build_form(_event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
    Ok(send(b"previous-minor".to_vec(), "text/plain"))
}
