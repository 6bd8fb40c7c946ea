//! `manta microbenchmark`: Ray's `ray microbenchmark` lines, doing the same work
//! (see `../shared/bench/ray-microbenchmark.md`), printed as
//! `<name> per second <mean> +- <std>`, plus a plain msgpack round trip between
//! two processes measured in the same run, and task / actor round-trip percentiles.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use manta::{ActorOptions, ObjectRef, TaskOptions};
use manta_node::cli::MicrobenchmarkArgs;
use serde::{Deserialize, Serialize};

/// Set when the binary is started as the baseline's echo server.
pub const ECHO_SERVER_ENV: &str = "MANTA_BENCH_ECHO_SERVER";

#[manta::remote]
fn small_value() -> Vec<u8> {
    b"ok".to_vec()
}

#[manta::remote(num_cpus = 0.0)]
fn put_many(count: u32) -> u32 {
    for _ in 0..count {
        manta::put(&0i64).unwrap();
    }
    count
}

#[manta::remote(num_cpus = 0.0)]
fn put_large(count: u32, bytes: usize) -> u32 {
    let value = vec![0u8; bytes];
    for _ in 0..count {
        manta::put(&serde_bytes::Bytes::new(&value)).unwrap();
    }
    count
}

#[manta::remote]
fn create_refs(count: u32) -> Vec<ObjectRef<i64>> {
    (0..count).map(|_| manta::put(&1i64).unwrap()).collect()
}

#[manta::remote(num_cpus = 0.0)]
fn call_actors(actors: Vec<BenchActorHandle>, calls: u32) -> u32 {
    let refs: Vec<_> = (0..calls).map(|index| actors[index as usize % actors.len()].small_value()).collect();
    manta::get_all(&refs).unwrap();
    calls
}

#[manta::remote(num_cpus = 0.0)]
fn call_async_actors(actors: Vec<BenchAsyncActorHandle>, calls: u32) -> u32 {
    let refs: Vec<_> = (0..calls).map(|index| actors[index as usize % actors.len()].small_value()).collect();
    manta::get_all(&refs).unwrap();
    calls
}

struct BenchActor;

#[manta::actor]
impl BenchActor {
    fn new() -> Self {
        BenchActor
    }

    fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }

    fn small_value_arg(&self, _value: i64) -> Vec<u8> {
        b"ok".to_vec()
    }

    /// Submits `count` tasks itself and waits for them (multi client tasks).
    fn submit_tasks(&self, count: u32) -> u32 {
        let refs: Vec<_> = (0..count).map(|_| small_value::remote()).collect();
        manta::get_all(&refs).unwrap();
        count
    }

    /// Calls `servers` `count` times each (1:n).
    fn call_servers(&self, servers: Vec<BenchActorHandle>, count: u32) -> u32 {
        let refs: Vec<_> = servers.iter().flat_map(|server| (0..count).map(|_| server.small_value())).collect();
        manta::get_all(&refs).unwrap();
        count
    }

    /// Puts one object and passes it `count` times to `server` (n:n with arg).
    fn call_with_arg(&self, server: BenchActorHandle, count: u32) -> u32 {
        let value = manta::put(&0i64).unwrap();
        let refs: Vec<_> = (0..count).map(|_| server.small_value_arg(&value)).collect();
        manta::get_all(&refs).unwrap();
        count
    }

    /// Calls async actors `count` times each (1:n async actors).
    fn call_async_servers(&self, servers: Vec<BenchAsyncActorHandle>, count: u32) -> u32 {
        let refs: Vec<_> = servers.iter().flat_map(|server| (0..count).map(|_| server.small_value())).collect();
        manta::get_all(&refs).unwrap();
        count
    }
}

struct BenchAsyncActor;

#[manta::actor]
impl BenchAsyncActor {
    fn new() -> Self {
        BenchAsyncActor
    }

    async fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }

    async fn small_value_with_arg(&self, _value: i64) -> Vec<u8> {
        b"ok".to_vec()
    }
}

#[derive(Serialize, Deserialize)]
struct EchoMessage {
    id: u64,
    method: String,
    payload: Vec<u8>,
}

fn write_frame(stream: &mut TcpStream, message: &EchoMessage) -> std::io::Result<()> {
    let body = rmp_serde::to_vec_named(message).expect("encode");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame)
}

fn read_frame(stream: &mut TcpStream) -> Option<EchoMessage> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).ok()?;
    rmp_serde::from_slice(&body).ok()
}

/// The baseline's second process: echoes msgpack frames until the client leaves.
pub fn echo_server() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("address"));
    let Ok((mut stream, _)) = listener.accept() else { return };
    let _ = stream.set_nodelay(true);
    while let Some(message) = read_frame(&mut stream) {
        if write_frame(&mut stream, &message).is_err() {
            break;
        }
    }
}

struct Bench {
    filter: Option<String>,
    duration: Duration,
}

impl Bench {
    fn wants(&self, name: &str) -> bool {
        self.filter.as_ref().is_none_or(|filter| filter.split('|').any(|part| name.contains(part)))
    }

    fn wants_any(&self, names: &[&str]) -> bool {
        names.iter().any(|name| self.wants(name))
    }

    /// Ray's `timeit`: warm up, then 4 samples; prints `multiplier × calls / s`.
    fn timeit(&self, name: &str, multiplier: f64, mut operation: impl FnMut()) {
        if !self.wants(name) {
            return;
        }
        let warm_until = Instant::now() + self.duration / 10;
        operation();
        while Instant::now() < warm_until {
            operation();
        }
        let sample_length = self.duration / 4;
        let rates: Vec<f64> = (0..4)
            .map(|_| {
                let started = Instant::now();
                let mut calls = 0u64;
                while calls == 0 || started.elapsed() < sample_length {
                    operation();
                    calls += 1;
                }
                multiplier * calls as f64 / started.elapsed().as_secs_f64()
            })
            .collect();
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let variance = rates.iter().map(|rate| (rate - mean).powi(2)).sum::<f64>() / rates.len() as f64;
        println!("{name} per second {mean:.2} +- {:.2}", variance.sqrt());
    }

    /// Round-trip percentiles of `operation`.
    fn percentiles(&self, name: &str, mut operation: impl FnMut()) {
        if !self.wants(name) {
            return;
        }
        for _ in 0..100 {
            operation();
        }
        let mut samples = Vec::new();
        let until = Instant::now() + self.duration;
        while samples.is_empty() || Instant::now() < until {
            let started = Instant::now();
            operation();
            samples.push(started.elapsed());
        }
        samples.sort();
        let at = |fraction: f64| samples[((samples.len() as f64 * fraction) as usize).min(samples.len() - 1)];
        println!(
            "{name} p50 {:.1} us p99 {:.1} us ({} samples)",
            at(0.5).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6,
            samples.len()
        );
    }
}

/// Runs `manta microbenchmark`.
pub fn run(args: MicrobenchmarkArgs) -> ExitCode {
    match run_lines(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

fn baseline(bench: &Bench) -> Result<(), String> {
    if !bench.wants("baseline msgpack round trip") {
        return Ok(());
    }
    let executable = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut server = Command::new(executable)
        .env(ECHO_SERVER_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start the echo server: {error}"))?;
    let mut address = String::new();
    BufReader::new(server.stdout.take().expect("piped")).read_line(&mut address).map_err(|error| error.to_string())?;
    let mut stream = TcpStream::connect(address.trim()).map_err(|error| error.to_string())?;
    stream.set_nodelay(true).map_err(|error| error.to_string())?;
    let mut id = 0;
    let mut round_trip = || {
        id += 1;
        write_frame(&mut stream, &EchoMessage { id, method: "ping".into(), payload: b"ok".to_vec() }).expect("write");
        read_frame(&mut stream).expect("echo");
    };
    bench.timeit("baseline msgpack round trip", 1.0, &mut round_trip);
    bench.percentiles("baseline msgpack round trip", &mut round_trip);
    drop(stream);
    let _ = server.wait();
    Ok(())
}

fn run_lines(args: MicrobenchmarkArgs) -> manta::Result<()> {
    let bench = Bench { filter: args.filter, duration: Duration::from_secs_f64(args.duration.max(0.04)) };
    baseline(&bench).map_err(manta::Error::Init)?;
    let cores = std::thread::available_parallelism().map(|count| count.get()).unwrap_or(2);
    let mut builder = manta::Builder::new().temp_dir(std::env::temp_dir().join("manta-no-such-session"));
    builder = builder.num_cpus(args.num_cpus.unwrap_or(cores as f64)).resource("custom", 100.0);
    let _job = builder.init()?;
    let n_cpu = (cores / 2).max(1);

    let value = manta::put(&0i64)?;
    bench.timeit("single client get calls", 1.0, || {
        value.get().unwrap();
    });
    bench.timeit("single client put calls", 1.0, || {
        manta::put(&0i64).unwrap();
    });
    bench.timeit("multi client put calls", 1000.0, || {
        let refs: Vec<_> = (0..10).map(|_| put_many::remote(100u32)).collect();
        manta::get_all(&refs).unwrap();
    });
    let big = vec![0u8; 100 << 20];
    bench.timeit("single client put gigabytes", 0.1, || {
        manta::put(&serde_bytes::Bytes::new(&big)).unwrap();
    });
    bench.timeit("multi client put gigabytes", 8.0, || {
        let refs: Vec<_> = (0..10).map(|_| put_large::remote(10u32, 80usize << 20)).collect();
        manta::get_all(&refs).unwrap();
    });
    bench.timeit("single client tasks and get batch", 1.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        manta::get_all(&refs).unwrap();
    });
    if bench.wants("single client get object containing 10k refs") {
        // As Ray's: the task runs once; each operation gets (decodes) its result again.
        let containing = create_refs::remote(10_000u32);
        bench.timeit("single client get object containing 10k refs", 1.0, || {
            let refs = containing.get().unwrap();
            assert_eq!(refs.len(), 10_000);
        });
    }
    bench.timeit("single client wait 1k refs", 1.0, || {
        let mut not_ready: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        while !not_ready.is_empty() {
            let (_, rest) = manta::wait(&not_ready, 1, None).unwrap();
            not_ready = rest;
        }
    });
    bench.timeit("single client tasks sync", 1.0, || {
        small_value::remote().get().unwrap();
    });
    bench.timeit("single client tasks async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        manta::get_all(&refs).unwrap();
    });
    if bench.wants("multi client tasks async") {
        let clients: Vec<_> = (0..4).map(|_| BenchActor::remote()).collect::<manta::Result<_>>()?;
        bench.timeit("multi client tasks async", 4.0 * 1000.0, || {
            let refs: Vec<_> = clients.iter().map(|client| client.submit_tasks(1000u32)).collect();
            manta::get_all(&refs).unwrap();
        });
    }

    let actor = BenchActor::remote()?;
    bench.timeit("1:1 actor calls sync", 1.0, || {
        actor.small_value().get().unwrap();
    });
    bench.timeit("1:1 actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| actor.small_value()).collect();
        manta::get_all(&refs).unwrap();
    });
    let concurrent = BenchActor::options(ActorOptions::new().max_concurrency(16)).remote()?;
    bench.timeit("1:1 actor calls concurrent", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| concurrent.small_value()).collect();
        manta::get_all(&refs).unwrap();
    });
    if bench.wants_any(&["1:n actor calls async", "n:n actor calls async", "n:n actor calls with arg async"]) {
        let servers: Vec<_> = (0..n_cpu).map(|_| BenchActor::remote()).collect::<manta::Result<_>>()?;
        let client = BenchActor::remote()?;
        bench.timeit("1:n actor calls async", 1000.0 * n_cpu as f64, || {
            client.call_servers(servers.clone(), 1000u32).get().unwrap();
        });
        bench.timeit("n:n actor calls async", 4.0 * 1000.0, || {
            let refs: Vec<_> = (0..4).map(|_| call_actors::remote(servers.clone(), 1000u32)).collect();
            manta::get_all(&refs).unwrap();
        });
        let clients: Vec<_> = (0..n_cpu).map(|_| BenchActor::remote()).collect::<manta::Result<_>>()?;
        bench.timeit("n:n actor calls with arg async", 1000.0 * n_cpu as f64, || {
            let refs: Vec<_> = clients
                .iter()
                .zip(&servers)
                .map(|(client, server)| client.call_with_arg(server.clone(), 1000u32))
                .collect();
            manta::get_all(&refs).unwrap();
        });
    }

    let async_actor = BenchAsyncActor::remote()?;
    bench.timeit("1:1 async-actor calls sync", 1.0, || {
        async_actor.small_value().get().unwrap();
    });
    bench.timeit("1:1 async-actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| async_actor.small_value()).collect();
        manta::get_all(&refs).unwrap();
    });
    bench.timeit("1:1 async-actor calls with args async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|index| async_actor.small_value_with_arg(index as i64)).collect();
        manta::get_all(&refs).unwrap();
    });
    if bench.wants_any(&["1:n async-actor calls async", "n:n async-actor calls async"]) {
        let servers: Vec<_> = (0..n_cpu).map(|_| BenchAsyncActor::remote()).collect::<manta::Result<_>>()?;
        let client = BenchActor::remote()?;
        bench.timeit("1:n async-actor calls async", 1000.0 * n_cpu as f64, || {
            client.call_async_servers(servers.clone(), 1000u32).get().unwrap();
        });
        bench.timeit("n:n async-actor calls async", 4.0 * 1000.0, || {
            let refs: Vec<_> = (0..4).map(|_| call_async_actors::remote(servers.clone(), 1000u32)).collect();
            manta::get_all(&refs).unwrap();
        });
    }

    // As Ray's: 100 groups of one {"custom": 0.001} bundle, waited for, then removed.
    bench.timeit("placement group create/removal", 100.0, || {
        let groups: Vec<_> = (0..100)
            .map(|_| manta::placement_group(vec![manta::bundle([("custom", 0.001)])], manta::PlacementStrategy::Pack))
            .collect::<manta::Result<_>>()
            .unwrap();
        for group in &groups {
            assert!(group.wait(Duration::from_secs(30)).unwrap(), "a placement group was not created");
        }
        for group in &groups {
            manta::remove_placement_group(group).unwrap();
        }
    });

    bench.percentiles("no-op task round trip", || {
        small_value::with_options(TaskOptions::default()).get().unwrap();
    });
    bench.percentiles("no-op actor call round trip", || {
        actor.small_value().get().unwrap();
    });
    Ok(())
}
