//! Scenarios for fault tolerance: a head restart under a running job, retries
//! after worker and node deaths, actor restarts, lineage reconstruction.

use manta::{ActorOptions, TaskOptions};

use super::{Tally, check, increment, my_pid, sleeps};

fn wait_for_line(what: &str) {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap_or_else(|_| panic!("the test says when {what}"));
}

/// Runs work through a head restart: the driver, its actor and its running
/// task live on a node that is not the head.
pub fn head_restart() -> manta::Result<()> {
    let before: Vec<i64> = manta::get_all(&(0..20).map(increment::remote).collect::<Vec<_>>())?;
    check("tasks run before the restart", before == (1..=20).collect::<Vec<_>>(), &before);
    let tally = Tally::options(ActorOptions::new().name("survivor")).remote(100i64)?;
    let actor_pid = tally.pid().get()?;
    check("the actor answers before the restart", tally.add(1).get()? == 101, ());
    let task_pids: Vec<u32> = manta::get_all(&(0..4).map(|_| my_pid::remote()).collect::<Vec<_>>())?;
    let running = sleeps::remote(4000u64);
    println!("pids: {actor_pid} {}", task_pids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
    println!("ready for the head restart");
    wait_for_line("the head is back");

    let worker = running.get()?;
    let alive = std::path::Path::new(&format!("/proc/{worker}")).exists();
    check("a task running through the head restart delivers its result, from a worker that lives on", alive, worker);
    check(
        "the actor kept its state and its process",
        tally.add(1).get()? == 102 && tally.pid().get()? == actor_pid,
        (),
    );
    let found = manta::get_actor::<Tally>("survivor")?;
    check("the named actor is found in the recovered directory", found.total().get()? == 102, ());
    let after: Vec<i64> = manta::get_all(&(100..200).map(increment::remote).collect::<Vec<_>>())?;
    check("the job's later tasks succeed", after == (101..=200).collect::<Vec<_>>(), after.len());
    let later_pids: Vec<u32> = manta::get_all(&(0..4).map(|_| my_pid::remote()).collect::<Vec<_>>())?;
    println!("later pids: {}", later_pids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));

    // A node that joins the restarted head: this driver's node must learn of it from
    // the new GCS's views (which count versions from 0 again).
    println!("ready for a new node");
    wait_for_line("a node with the resource `fresh` joined");
    let started = std::time::Instant::now();
    let fresh = my_pid::with_options(TaskOptions::default().resource("fresh", 1.0));
    let ran = fresh.get_timeout(std::time::Duration::from_secs(10));
    check("a task needing a resource only the new node has runs within 10 s", ran.is_ok(), (&ran, started.elapsed()));
    Ok(())
}

/// Appends this worker's pid to `path`, sleeps, and returns how many attempts wrote there.
#[manta::remote]
fn record_attempt(path: String, millis: u64) -> usize {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    writeln!(file, "{}", std::process::id()).unwrap();
    drop(file);
    std::thread::sleep(std::time::Duration::from_millis(millis));
    std::fs::read_to_string(&path).unwrap().lines().count()
}

/// A task whose worker the test kills with SIGKILL: it succeeds on its retry.
pub fn worker_retry(path: &str) -> manta::Result<()> {
    let attempts = record_attempt::remote(path.to_string(), 1500u64).get()?;
    check("a task whose worker was killed mid-task succeeds on its retry", attempts == 2, attempts);
    let options = manta::TaskOptions::default().max_retries(0);
    let second = format!("{path}.no-retry");
    let failed = record_attempt::with_options(options, second, 1500u64).get();
    let message = failed.as_ref().err().map(ToString::to_string).unwrap_or_default();
    check(
        "without retries the task fails with a worker-crashed error naming its attempts",
        matches!(failed, Err(manta::Error::WorkerCrashed(_))) && message.contains("1 attempt"),
        message,
    );
    Ok(())
}

/// An actor with `max_restarts = 2` that panics: restarted twice, then dead with the cause.
pub fn actor_panics() -> manta::Result<()> {
    // Calls sent behind a panicking one (sync and async) are not lost: they run,
    // in order, on the restarted instance.
    let queued = Tally::options(ActorOptions::new().max_restarts(1)).remote(10i64)?;
    let first = queued.add(1);
    let boom = queued.explode();
    let behind: Vec<_> = (0..50).map(|_| queued.add(1)).collect();
    let mixed = queued.await_ref(manta::put(&0i64)?);
    let after = queued.add(1);
    let results = (first.get()?, boom.get().is_err(), manta::get_all(&behind)?, mixed.get()?, after.get()?);
    check(
        "calls queued behind a panic run in order on the restarted instance",
        results == (11, true, (11..=60).collect(), 60, 61),
        &results,
    );
    let tally = Tally::options(ActorOptions::new().max_restarts(2)).remote(5i64)?;
    tally.add(1).get()?;
    for restart in 1..=2 {
        let failed = tally.explode().get();
        check(
            "a panicking method fails its call",
            matches!(failed, Err(manta::Error::Task { panicked: true, .. })),
            (),
        );
        let total = tally.total().get()?;
        check("the actor is restarted with its constructor", total == 5 && tally.restarted().get()?, (restart, total));
    }
    let _ = tally.explode().get();
    check_actor_died("after its last restart the actor is dead, with the cause", tally.total().get(), "max_restarts");
    Ok(())
}

/// Checks that `result` is `ActorDied` with a cause mentioning `cause`.
fn check_actor_died(name: &str, result: manta::Result<i64>, cause: &str) {
    let message = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
    check(name, matches!(result, Err(manta::Error::ActorDied { .. })) && message.contains(cause), message);
}

fn print_actor(label: &str, tally: &super::TallyHandle) -> manta::Result<()> {
    println!("{label}: {} {}", tally.node().get()?, tally.pid().get()?);
    Ok(())
}

/// An actor whose worker, then whose node, the test kills: the GCS restarts it
/// on a live node, under its name; in-flight calls fail as unavailable.
pub fn actor_restarts() -> manta::Result<()> {
    let options = ActorOptions::new().name("phoenix").max_restarts(2).max_concurrency(4);
    let tally = Tally::options(options).remote(100i64)?;
    tally.add(1).get()?;
    let in_flight = tally.slow_total(60_000);
    // Calls go out in order on one link: once this answers, the slow one is in flight.
    tally.total().get()?;
    print_actor("actor", &tally)?;
    wait_for_line("the actor's worker was killed");
    let lost = in_flight.get();
    check(
        "a call in flight when the process died fails as unavailable (max_task_retries = 0)",
        matches!(lost, Err(manta::Error::ActorUnavailable { .. })),
        lost.err(),
    );
    let total = tally.add(1).get()?;
    check("the restarted actor ran its constructor again", total == 101 && tally.restarted().get()?, total);
    print_actor("restarted", &tally)?;
    wait_for_line("the actor's node was killed");
    let found = manta::get_actor::<Tally>("phoenix")?;
    let total = found.add(2).get()?;
    check("after its node died the actor answers again, found by its name", total == 102, total);
    let total = tally.add(3).get()?;
    check("the old handle reaches the new instance too", total == 105, total);
    print_actor("moved", &tally)?;
    wait_for_line("the actor's worker was killed again");
    let name = "with its restarts spent, calls fail with actor-died and the cause";
    check_actor_died(name, tally.total().get(), "restarted 2 times");
    Ok(())
}

/// A call in flight when the actor's process dies is sent again to the
/// restarted instance when `max_task_retries` allows.
pub fn actor_call_retry() -> manta::Result<()> {
    let options = ActorOptions::new().max_restarts(1).max_task_retries(1).max_concurrency(4);
    let tally = Tally::options(options).remote(7i64)?;
    tally.add(1).get()?;
    let in_flight = tally.slow_total(3000);
    // Calls go out in order on one link: once this answers, the slow one is in flight.
    tally.total().get()?;
    print_actor("actor", &tally)?;
    wait_for_line("the actor's worker was killed");
    let total = in_flight.get()?;
    check("the in-flight call was retried on the restarted instance (max_task_retries = 1)", total == 7, total);
    Ok(())
}

/// Squares a number after a short sleep (work that spreads over the nodes).
#[manta::remote]
fn square_slowly(value: u64, millis: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(millis));
    value * value
}

/// `count` tasks while the test kills a node: every result is correct.
pub fn tasks_through_node_death(count: u64) -> manta::Result<()> {
    let refs: Vec<_> = (0..count).map(|value| square_slowly::remote(value, 10u64)).collect();
    let first = manta::get_all(&refs[..(count as usize / 10).max(1)])?;
    check("the first results arrive", first.iter().enumerate().all(|(i, v)| *v == (i * i) as u64), first.len());
    println!("running");
    let all = manta::get_all(&refs)?;
    let wrong = all.iter().enumerate().filter(|(i, v)| **v != (*i as u64) * (*i as u64)).count();
    check("every result is correct after a node died mid-run", wrong == 0 && all.len() == count as usize, wrong);
    Ok(())
}

/// A large result (stored in its node's object store).
#[manta::remote]
fn make_numbers(len: u64, seed: u64) -> (String, Vec<u64>) {
    let node = manta::context().unwrap().node_id.to_string();
    (node, (0..len).map(|value| value ^ seed).collect())
}

#[manta::remote]
fn sum_numbers(numbers: (String, Vec<u64>)) -> u64 {
    numbers.1.iter().sum()
}

/// Large results whose node the test kills are rebuilt by lineage, through
/// `get` and as a task argument.
pub fn lineage() -> manta::Result<()> {
    let len = 60_000u64;
    let expected: u64 = (0..len).map(|value| value ^ 7).sum();
    let here = |node: &str| {
        let node_id: manta::NodeId = node.parse().unwrap();
        manta::TaskOptions::default()
            .scheduling_strategy(manta::SchedulingStrategy::NodeAffinity { node_id, soft: true })
    };
    let probe = make_numbers::remote(1u64, 0u64).get()?.0;
    let first = make_numbers::with_options(here(&probe), len, 7u64);
    let second = make_numbers::with_options(here(&probe), len, 7u64);
    manta::wait_with(&[first.clone(), second.clone()], 2, None, false)?;
    println!("made on: {probe}");
    wait_for_line("the node holding them was killed");
    let total = sum_numbers::remote(first.clone()).get()?;
    check("a lost argument is rebuilt before its task runs", total == expected, total);
    let (node, numbers) = second.get()?;
    check("a lost object is rebuilt when read", numbers.iter().sum::<u64>() == expected && node != probe, node);
    Ok(())
}

/// `count` short tasks, all checked; prints the run's time and retries (the chaos benchmark).
pub fn chaos(count: u64, tiny: bool) -> manta::Result<()> {
    let started = std::time::Instant::now();
    // Tiny: no-op tasks of 0.01 CPU, so each node runs many at once (the retries of
    // one node's death must not be charged again by the same dying node).
    let options = if tiny { TaskOptions::default().num_cpus(0.01) } else { TaskOptions::default() };
    let millis = if tiny { 0u64 } else { 5 };
    let refs: Vec<_> = (0..count).map(|value| square_slowly::with_options(options.clone(), value, millis)).collect();
    let all = manta::get_all(&refs)?;
    let seconds = started.elapsed().as_secs_f64();
    let wrong = all.iter().enumerate().filter(|(i, v)| **v != (*i as u64) * (*i as u64)).count();
    check("every chaos result is correct", wrong == 0 && all.len() == count as usize, wrong);
    let stats = manta::stats();
    println!(
        "chaos: tasks={count} seconds={seconds:.2} retried={} rebuilt={}",
        stats.tasks_retried, stats.objects_rebuilt
    );
    Ok(())
}

/// A returned error a caller may choose to retry.
#[derive(Debug)]
pub struct Flaky(usize);

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "flaky failure on attempt {}", self.0)
    }
}

/// Fails with `Flaky` until it has been called `failures` times (counted in `path`).
#[manta::remote]
fn flaky(path: String, failures: usize) -> Result<usize, Flaky> {
    use std::io::Write;
    let attempt = std::fs::read_to_string(&path).map(|text| text.lines().count()).unwrap_or(0) + 1;
    writeln!(std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap(), "x").unwrap();
    if attempt <= failures { Err(Flaky(attempt)) } else { Ok(attempt) }
}

/// `retry_exceptions_of::<E>()` retries returned errors of type `E` only.
pub fn retry_errors(dir: &str) -> manta::Result<()> {
    let matching = manta::TaskOptions::default().retry_exceptions_of::<Flaky>();
    let attempts = flaky::with_options(matching, format!("{dir}/matching"), 2usize).get()?;
    check("an error of a listed type is retried until it succeeds", attempts == 3, attempts);
    let other = manta::TaskOptions::default().retry_exceptions_of::<std::io::Error>();
    let failed = flaky::with_options(other, format!("{dir}/other"), 2usize).get();
    check("an error of another type is not retried", matches!(failed, Err(manta::Error::Task { .. })), failed);
    let counted = std::fs::read_to_string(format!("{dir}/other")).unwrap_or_default().lines().count();
    check("so it ran once", counted == 1, counted);
    Ok(())
}

/// An actor on the node with resource `spot` answers calls in a loop, each
/// printed as `answer <pid> <unix ms>` (or `error <what>`), until stdin closes.
pub fn fenced_actor() -> manta::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let options = ActorOptions::new().resource("spot", 1.0).max_restarts(1).max_task_retries(-1);
    let tally = Tally::options(options).remote(0i64)?;
    println!("actor pid {}", tally.pid().get()?);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    std::thread::spawn(move || {
        wait_for_line("the test is done");
        stopper.store(true, Ordering::SeqCst);
    });
    while !stop.load(Ordering::SeqCst) {
        match tally.pid().get() {
            Ok(pid) => {
                let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                println!("answer {pid} {}", at.as_millis());
            }
            Err(error) => println!("error {error}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}
