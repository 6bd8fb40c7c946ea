//! Rust and Python in one cluster: the Rust half of the cross-language demo.
//!
//! As a driver (`cross_language TALLY_NAME PY_DIR`, with `MANTA_ADDRESS` and
//! `MANTA_TOKEN` set) it creates the detached actor `TALLY_NAME` in namespace
//! `xlang`, then calls Python functions by name — `double` and `total` of the
//! module `xlang_helpers` in `PY_DIR`, shipped as the job's `working_dir` — one
//! with a plain value, one with an `ObjectRef` made in Rust.
//!
//! As a job's program (`manta.init(rust_program="…/cross_language")` in Python)
//! it gives Python `add`, `total` and the `Tally` actor, called by name.

use manta::{ActorOptions, Arg, IntoArg, Lifetime};

/// Adds two numbers (Python: `manta.rust_function("add").remote(2, 3)`).
#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Sums a list (Python passes a ref to a list it put).
#[manta::remote]
fn total(values: Vec<i64>) -> i64 {
    values.iter().sum()
}

/// A running total, looked up by name from Python (`manta.get_actor`).
struct Tally {
    sum: i64,
}

#[manta::actor]
impl Tally {
    fn new() -> Self {
        Tally { sum: 0 }
    }

    fn add(&mut self, amount: i64) -> i64 {
        self.sum += amount;
        self.sum
    }
}

#[manta::main]
fn main() -> Result<(), manta::Error> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(name), Some(py_dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: cross_language TALLY_NAME PY_DIR (with MANTA_ADDRESS and MANTA_TOKEN set)");
        std::process::exit(2);
    };
    let env = manta::RuntimeEnv::default().working_dir(py_dir.clone());
    let _job = manta::Builder::new().namespace("xlang").runtime_env(env).init()?;
    let options = ActorOptions::default().name(name.clone()).lifetime(Lifetime::Detached);
    let tally = Tally::options(options).remote()?;
    println!("rust tally {name}: {}", tally.add(1).get()?);
    let doubled: i64 = manta::python_function("xlang_helpers", "double").remote(vec![Arg::value(&21i64)]).get()?;
    println!("python double(21) = {doubled}");
    let numbers = manta::put(&vec![1i64, 2, 3, 4])?;
    let arg = IntoArg::<Vec<i64>>::into_arg(&numbers);
    let summed: i64 = manta::python_function("xlang_helpers", "total").remote(vec![arg]).get()?;
    println!("python total(rust ref) = {summed}");
    Ok(())
}
