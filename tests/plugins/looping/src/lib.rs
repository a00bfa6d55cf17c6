//! A payload format that loops forever: the host's CPU deadline must stop it.
//! With the repeater setting `spin_ms = N` it instead spins for N ms and then
//! sends `{"spun_ms": N}`, to test the `[plugins] timeout` key.

include!("../../form_format.rs");

form_format!(
    wit: "../../../wit",
    description: "loops forever (or spins spin_ms milliseconds)",
);

fn build_form(_event: Event, settings: Vec<Pair>) -> Result<Payload, String> {
    let Some(spin_ms) = setting::<u64>(&settings, "spin_ms")? else {
        let mut turns: u64 = 0;
        loop {
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    };
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(spin_ms) {
        std::hint::black_box(&started);
    }
    Ok(send(
        format!("{{\"spun_ms\":{spin_ms}}}").into_bytes(),
        "application/json",
    ))
}
