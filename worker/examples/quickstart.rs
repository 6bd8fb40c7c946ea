//! The quick start: remote functions, `wait`, an ObjectRef chain, and an actor.
//!
//! `cargo run --release -p manta --example quickstart` — with no cluster running,
//! it starts one inside this process and stops it at the end.

use std::time::{Duration, Instant};

#[manta::remote]
fn square(x: i64) -> i64 {
    x * x
}

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[manta::remote]
fn slow_echo(text: String, millis: u64) -> String {
    std::thread::sleep(Duration::from_millis(millis));
    text
}

struct Accumulator {
    total: i64,
}

#[manta::actor]
impl Accumulator {
    fn new(start: i64) -> Self {
        Accumulator { total: start }
    }

    fn add(&mut self, amount: i64) -> i64 {
        self.total += amount;
        self.total
    }

    fn total(&self) -> i64 {
        self.total
    }
}

#[manta::main]
fn main() -> Result<(), manta::Error> {
    let started = Instant::now();
    let _job = manta::init()?;
    println!("connected in {:?}", started.elapsed());

    // Tasks run in parallel on the cluster's workers.
    let squares: Vec<_> = (1..=8).map(square::remote).collect();
    println!("squares of 1..=8: {:?}", manta::get_all(&squares)?);

    // An ObjectRef passed to another task is resolved to its value first.
    let sum = add::remote(&squares[2], &squares[3]);
    println!("9 + 16 = {}", sum.get()?);

    // wait returns the ready references first, in input order.
    let echoes = vec![slow_echo::remote("slow".to_string(), 500u64), slow_echo::remote("fast".to_string(), 10u64)];
    let (ready, not_ready) = manta::wait(&echoes, 1, Some(Duration::from_secs(5)))?;
    println!("first ready: {:?} ({} still running)", ready[0].get()?, not_ready.len());

    // An actor keeps state between calls; calls from one caller run in order.
    let accumulator = Accumulator::remote(100)?;
    for amount in [1, 2, 3] {
        accumulator.add(amount);
    }
    println!("accumulator total: {}", accumulator.total().get()?);
    println!("done in {:?}", started.elapsed());
    Ok(())
}
