//! A payload format that loops forever: the host's CPU deadline must stop it.
//! With the repeater setting `spin_ms = N` it instead spins for N ms and then
//! sends `{"spun_ms": N}`, to test the `[plugins] timeout` key.

wit_bindgen::generate!({ world: "payload-format", path: "../../../wit" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{Event, FormatInfo, Pair, Payload, PayloadKind, Request};

struct Looping;

impl Guest for Looping {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "loops forever (or spins spin_ms milliseconds)".to_string(),
            kinds: vec![PayloadKind::Form],
        }
    }

    fn build(_kind: PayloadKind, _event: Event, settings: Vec<Pair>) -> Result<Payload, String> {
        let spin_ms = settings
            .iter()
            .find(|pair| pair.name == "spin_ms")
            .map(|pair| {
                pair.value
                    .parse::<u64>()
                    .map_err(|error| format!("spin_ms: {error}"))
            })
            .transpose()?;
        let Some(spin_ms) = spin_ms else {
            let mut turns: u64 = 0;
            loop {
                turns = std::hint::black_box(turns.wrapping_add(1));
            }
        };
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(spin_ms) {
            std::hint::black_box(&started);
        }
        Ok(Payload::Send(Request {
            body: format!("{{\"spun_ms\":{spin_ms}}}").into_bytes(),
            content_type: "application/json".to_string(),
            headers: Vec::new(),
            query: Vec::new(),
        }))
    }
}

export!(Looping);
