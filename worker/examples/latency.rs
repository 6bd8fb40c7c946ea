//! Latency bench: embedded `init`, the seed's Counter scenario, no-op task and
//! actor-call round trips, next to a plain msgpack round trip between two
//! processes measured in the same run (the baseline the targets are set against).
//!
//! `cargo run --release -p manta --example latency [iterations]`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[manta::remote]
fn noop() -> u8 {
    0
}

struct Pinger;

#[manta::actor]
impl Pinger {
    fn new() -> Self {
        Pinger
    }

    fn ping(&self) -> u8 {
        0
    }
}

struct Counter {
    count: u64,
}

#[manta::actor]
impl Counter {
    fn new() -> Self {
        Counter { count: 0 }
    }

    fn increment(&mut self) -> String {
        self.count += 1;
        format!("counter got {}", self.count)
    }
}

#[derive(Serialize, Deserialize)]
struct Message {
    id: u64,
    method: String,
    payload: Vec<u8>,
}

fn write_frame(stream: &mut TcpStream, message: &Message) {
    let body = rmp_serde::to_vec_named(message).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame).unwrap();
}

fn read_frame(stream: &mut TcpStream) -> Option<Message> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).ok()?;
    rmp_serde::from_slice(&body).ok()
}

/// The baseline's other process: echo msgpack frames back.
fn echo_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", listener.local_addr().unwrap());
    let (mut stream, _) = listener.accept().unwrap();
    stream.set_nodelay(true).unwrap();
    while let Some(message) = read_frame(&mut stream) {
        write_frame(&mut stream, &message);
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() as f64 * fraction) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

fn measure(iterations: usize, mut operation: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..iterations / 10 {
        operation();
    }
    let samples = (0..iterations)
        .map(|_| {
            let started = Instant::now();
            operation();
            started.elapsed()
        })
        .collect();
    percentiles(samples)
}

#[manta::main]
fn main() -> Result<(), manta::Error> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("echo-server") {
        echo_server();
        return Ok(());
    }
    let iterations: usize = first.and_then(|text| text.parse().ok()).unwrap_or(2000);

    let mut server = Command::new(std::env::current_exe().unwrap())
        .arg("echo-server")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the echo server");
    let mut address = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut address).unwrap();
    let mut stream = TcpStream::connect(address.trim()).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut id = 0;
    let baseline = measure(iterations, || {
        id += 1;
        write_frame(&mut stream, &Message { id, method: "ping".into(), payload: vec![0] });
        read_frame(&mut stream).unwrap();
    });
    drop(stream);
    let _ = server.wait();

    let started = Instant::now();
    let job = manta::init()?;
    let init = started.elapsed();

    let started = Instant::now();
    let counter = Counter::remote()?;
    let replies: Vec<_> = (0..5).map(|_| counter.increment()).collect();
    for reply in replies {
        reply.get()?;
    }
    let counter_time = started.elapsed();

    let task = measure(iterations, || {
        noop::remote().get().unwrap();
    });
    let pinger = Pinger::remote()?;
    let actor = measure(iterations, || {
        pinger.ping().get().unwrap();
    });
    drop(job);

    println!("iterations per round-trip line: {iterations}");
    println!("baseline msgpack round trip (2 processes): p50 {:?}  p99 {:?}", baseline.0, baseline.1);
    println!("embedded init:                             {init:?}");
    println!("Counter actor + 5 calls:                   {counter_time:?}");
    println!("no-op task round trip:                     p50 {:?}  p99 {:?}", task.0, task.1);
    println!("actor call round trip:                     p50 {:?}  p99 {:?}", actor.0, actor.1);
    println!("actor call / baseline (p50):               {:.2}x", actor.0.as_secs_f64() / baseline.0.as_secs_f64());
    Ok(())
}
