//! Monte Carlo π: many tasks each throw darts at the unit square and count the
//! hits inside the quarter circle; the driver sums the counts.
//!
//! `cargo run --release -p manta --example pi [tasks] [samples-per-task]`

use std::time::Instant;

#[manta::remote]
fn count_hits(seed: u64, samples: u64) -> u64 {
    // A small xorshift generator: deterministic per seed, no dependency.
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..samples)
        .filter(|_| {
            let (x, y) = (next(), next());
            x * x + y * y <= 1.0
        })
        .count() as u64
}

#[manta::main]
fn main() -> Result<(), manta::Error> {
    let mut args = std::env::args().skip(1);
    let tasks: u64 = args.next().and_then(|text| text.parse().ok()).unwrap_or(100);
    let samples: u64 = args.next().and_then(|text| text.parse().ok()).unwrap_or(1_000_000);
    let _job = manta::init()?;
    let started = Instant::now();
    let counts: Vec<_> = (0..tasks).map(|seed| count_hits::remote(seed + 1, samples)).collect();
    let hits: u64 = manta::get_all(&counts)?.into_iter().sum();
    let pi = 4.0 * hits as f64 / (tasks * samples) as f64;
    println!("pi ≈ {pi:.6} from {} samples over {tasks} tasks in {:?}", tasks * samples, started.elapsed());
    Ok(())
}
