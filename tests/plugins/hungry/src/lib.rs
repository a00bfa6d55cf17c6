//! A payload format that allocates without bound: the host's memory cap must
//! stop it. With the repeater setting `mib = N` it instead allocates (and
//! touches) N MiB and then sends `{"allocated_mib": N}`, to test the
//! `[plugins] memory` key.

wit_bindgen::generate!({ world: "payload-format", path: "../../../wit" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{Event, FormatInfo, Pair, Payload, PayloadKind, Request};

const MIB: usize = 1 << 20;

struct Hungry;

impl Guest for Hungry {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "allocates without bound (or mib mebibytes)".to_string(),
            kinds: vec![PayloadKind::Form],
        }
    }

    fn build(_kind: PayloadKind, _event: Event, settings: Vec<Pair>) -> Result<Payload, String> {
        let mib = settings
            .iter()
            .find(|pair| pair.name == "mib")
            .map(|pair| {
                pair.value
                    .parse::<usize>()
                    .map_err(|error| format!("mib: {error}"))
            })
            .transpose()?;
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        match mib {
            // Asks for memory in large pieces without touching it, so the
            // cap is what stops it (quickly), not the CPU deadline, however
            // loaded the machine is.
            None => loop {
                hoard.push(Vec::with_capacity(16 * MIB));
                std::hint::black_box(&hoard);
            },
            Some(mib) => {
                for _ in 0..mib {
                    hoard.push(vec![1u8; MIB]);
                }
            }
        }
        let total: usize = std::hint::black_box(&hoard)
            .iter()
            .map(|chunk| chunk.len())
            .sum();
        Ok(Payload::Send(Request {
            body: format!("{{\"allocated_mib\":{}}}", total / MIB).into_bytes(),
            content_type: "application/json".to_string(),
            headers: Vec::new(),
            query: Vec::new(),
        }))
    }
}

export!(Hungry);
