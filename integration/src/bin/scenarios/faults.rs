//! Scenarios for fault tolerance: a head restart under a running job, retries
//! after worker and node deaths, actor restarts, lineage reconstruction.

use manta::ActorOptions;

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
    check("the actor kept its state and its process", tally.add(1).get()? == 102 && tally.pid().get()? == actor_pid, ());
    let found = manta::get_actor::<Tally>("survivor")?;
    check("the named actor is found in the recovered directory", found.total().get()? == 102, ());
    let after: Vec<i64> = manta::get_all(&(100..200).map(increment::remote).collect::<Vec<_>>())?;
    check("the job's later tasks succeed", after == (101..=200).collect::<Vec<_>>(), after.len());
    let later_pids: Vec<u32> = manta::get_all(&(0..4).map(|_| my_pid::remote()).collect::<Vec<_>>())?;
    println!("later pids: {}", later_pids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
    Ok(())
}
