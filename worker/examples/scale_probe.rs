//! Issue 20's scale probes, on the embedded local cluster:
//!
//! - **queued tasks**: the driver submits 100,000 tasks that wait on one slow
//!   task's result, and reports its RSS growth per queued task (run it against
//!   a separate cluster, as `benches/scale_probe.sh` does, so the RSS is the
//!   driver's alone);
//! - **result bandwidth**: 200 tasks each return 1 MiB, gathered by the driver
//!   with `get_all`, in MiB/s (three rounds; the first starts the workers).
//!
//! `cargo run --release -p manta --example scale_probe [QUEUED] [RESULTS] [plain]`

use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

#[manta::remote]
fn gate(millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    millis
}

#[manta::remote]
fn after(gate: u64, index: u64) -> u64 {
    gate + index
}

#[manta::remote]
fn megabyte(index: u64) -> ByteBuf {
    ByteBuf::from(vec![(index % 251) as u8; 1 << 20])
}

/// The process's resident memory and its peak, in bytes (Linux).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[manta::main]
fn main() -> Result<(), manta::Error> {
    let mut args = std::env::args().skip(1);
    let queued: u64 = args.next().and_then(|value| value.parse().ok()).unwrap_or(100_000);
    let results: u64 = args.next().and_then(|value| value.parse().ok()).unwrap_or(200);
    // `plain`: the queued tasks take a plain value, so they queue for workers
    // rather than for an argument.
    let plain = args.next().as_deref() == Some("plain");
    let _job = manta::init()?;

    // Measured first, in a fresh process: memory freed by earlier work would
    // be reused without showing in the RSS.
    let (before, _) = rss();
    let gate_ref = gate::remote(3_000u64);
    let started = Instant::now();
    let waiting: Vec<_> = if plain {
        (0..queued).map(|index| after::remote(3_000u64, index)).collect()
    } else {
        (0..queued).map(|index| after::remote(&gate_ref, index)).collect()
    };
    let submitted = started.elapsed();
    let (queued_rss, peak) = rss();
    println!(
        "queued ({}): {queued} tasks submitted in {:.3} s; driver RSS {:.1} MiB -> {:.1} MiB (peak {:.1} MiB): {:.0} bytes per queued task",
        if plain { "on plain values" } else { "on one slow task's result" },
        submitted.as_secs_f64(),
        before as f64 / (1 << 20) as f64,
        queued_rss as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64,
        queued_rss.saturating_sub(before) as f64 / queued as f64
    );
    let started = Instant::now();
    let values = manta::get_all(&waiting)?;
    assert!(values.iter().enumerate().all(|(index, value)| *value == 3_000 + index as u64));
    let (_, peak) = rss();
    println!(
        "queued: all {queued} done {:.3} s later; driver peak RSS {:.1} MiB",
        started.elapsed().as_secs_f64(),
        peak as f64 / (1 << 20) as f64
    );
    for round in 1..=3 {
        let started = Instant::now();
        let refs: Vec<_> = (0..results).map(megabyte::remote).collect();
        let values = manta::get_all(&refs)?;
        let elapsed = started.elapsed();
        let correct = values.iter().enumerate().all(|(index, value)| {
            value.len() == 1 << 20 && value.iter().all(|byte| *byte == (index as u64 % 251) as u8)
        });
        assert!(correct, "a result came back wrong");
        let bytes = (results << 20) as f64;
        println!(
            "results round {round}: {results} x 1 MiB in {:.3} s = {:.0} MiB/s ({:.2} GB/s)",
            elapsed.as_secs_f64(),
            bytes / (1 << 20) as f64 / elapsed.as_secs_f64(),
            bytes / 1e9 / elapsed.as_secs_f64()
        );
    }

    Ok(())
}
