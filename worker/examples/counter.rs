//! The seed's sample: a `Counter` actor whose constructor reads `counter_name`
//! from the job's runtime environment, incremented five times.
//!
//! `cargo run --release -p manta --example counter` — embedded, or against a
//! cluster when `MANTA_ADDRESS` / `MANTA_TEMP_DIR` point at one.

struct Counter {
    name: String,
    count: u64,
}

#[manta::actor]
impl Counter {
    fn new() -> Self {
        let name = std::env::var("counter_name").unwrap_or_else(|_| "counter".to_string());
        Counter { name, count: 0 }
    }

    fn increment(&mut self) -> String {
        self.count += 1;
        format!("{} got {}", self.name, self.count)
    }
}

#[manta::main]
fn main() -> Result<(), manta::Error> {
    let runtime_env = manta::RuntimeEnv::from_json(r#"{"env_vars": {"counter_name": "test_counter"}}"#)?;
    let _job = manta::Builder::new().runtime_env(runtime_env).init()?;
    let counter = Counter::remote()?;
    let replies: Vec<_> = (0..5).map(|_| counter.increment()).collect();
    for reply in replies {
        println!("{}", reply.get()?);
    }
    Ok(())
}
