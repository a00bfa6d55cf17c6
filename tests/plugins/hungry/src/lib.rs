//! A payload format that allocates without bound: the host's memory cap must
//! stop it. With the repeater setting `mib = N` it instead allocates (and
//! touches) N MiB and then sends `{"allocated_mib": N}`, to test the
//! `[plugins] memory` key.

include!("../../form_format.rs");

form_format!(
    wit: "../../../wit",
    description: "allocates without bound (or mib mebibytes)",
);

const MIB: usize = 1 << 20;

fn build_form(_event: Event, settings: Vec<Pair>) -> Result<Payload, String> {
    let mib = setting::<usize>(&settings, "mib")?;
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
    Ok(send(
        format!("{{\"allocated_mib\":{}}}", total / MIB).into_bytes(),
        "application/json",
    ))
}
