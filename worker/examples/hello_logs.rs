//! What tasks and actors print reaches the driver, prefixed with who printed it:
//! `(hello pid=1234, ip=127.0.0.1) hello from task 0`. The same line printed by
//! many workers is shown once, then as `... [repeated 19x across cluster]`.
//!
//! `cargo run -p manta --example hello_logs` (a local cluster in this process), or
//! against a running one: `cargo run -p manta --example hello_logs` after `manta start --head`.

#[manta::remote]
fn hello(index: u32) -> u32 {
    println!("hello from task {index}");
    index
}

#[manta::remote]
fn same_line() -> u32 {
    println!("the same line from many tasks");
    std::process::id()
}

struct Greeter;

#[manta::actor]
impl Greeter {
    fn new() -> Self {
        Greeter
    }

    fn greet(&self) -> u32 {
        println!("greeter says hi");
        std::process::id()
    }
}

#[manta::main]
fn main() -> manta::Result<()> {
    let _job = manta::init()?;
    for index in 0..4 {
        hello::remote(index).get()?;
    }
    let greeter = Greeter::remote()?;
    for _ in 0..3 {
        greeter.greet().get()?;
    }
    let spread = manta::TaskOptions::default().scheduling_strategy(manta::SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..20).map(|_| same_line::with_options(spread.clone())).collect();
    let pids: std::collections::BTreeSet<u32> = manta::get_all(&refs)?.into_iter().collect();
    eprintln!("hello_logs: 20 tasks ran in {} worker processes", pids.len());
    Ok(())
}
