//! Chaos (ignored by default; `benches/chaos.sh` runs it at full size, `.ci/run`
//! once small): a job of `MANTA_CHAOS_TASKS` tasks (default 10,000) while a
//! random node is SIGKILLed every `MANTA_CHAOS_INTERVAL_MS` (default 3000) and
//! replaced by a fresh one. Every result must be correct; the run's figures
//! (kills, retries, time lost against the same job without kills) are printed,
//! and appended to `MANTA_CHAOS_REPORT` when set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manta_integration::{InteractiveDriver, TestCluster, phase};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// Runs the chaos job; returns (seconds, retried) from the driver's report line.
fn run_job(temp_dir: &std::path::Path, scenario: &str, tasks: u64) -> (f64, u64) {
    let driver = InteractiveDriver::start(temp_dir, &[scenario, &tasks.to_string()]);
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    let line = stdout.lines().find(|line| line.starts_with("chaos: ")).expect("the driver's report");
    let field = |name: &str| {
        line.split(' ').find_map(|pair| pair.strip_prefix(&format!("{name}="))).expect("a field").to_string()
    };
    (field("seconds").parse().unwrap(), field("retried").parse().unwrap())
}

#[test]
#[ignore = "chaos benchmark: run by benches/chaos.sh, and once small by .ci/run"]
fn chaos_random_node_kills() {
    let tasks = env_number("MANTA_CHAOS_TASKS", 10_000);
    let interval = Duration::from_millis(env_number("MANTA_CHAOS_INTERVAL_MS", 3000));
    chaos("chaos", tasks, interval, "2", 4, u32::MAX);
}

/// Many tiny tasks in flight on each node (Ray's default `max_retries = 3`): a
/// head and three 1-CPU nodes, three node kills `MANTA_CHAOS_INTERVAL_MS` apart
/// (default 2000). One node's death must cost a task at most one attempt.
#[test]
#[ignore = "chaos benchmark: run by benches/chaos.sh tiny, and once small by .ci/run"]
fn chaos_many_tiny_tasks() {
    let tasks = env_number("MANTA_CHAOS_TASKS", 100_000);
    let interval = Duration::from_millis(env_number("MANTA_CHAOS_INTERVAL_MS", 2000));
    chaos("chaos-tiny", tasks, interval, "1", 3, 3);
}

/// Runs `scenario` once without kills, then again while a random node is killed
/// every `interval` (at most `max_kills` times) and replaced.
fn chaos(scenario: &str, tasks: u64, interval: Duration, cpus: &str, nodes: usize, max_kills: u32) {
    let node = vec!["--num-cpus", cpus];
    let cluster = TestCluster::start_with(&["--num-cpus", "0"], &vec![node; nodes]);

    phase("baseline: the job with no failures");
    let temp_dir = cluster.temp_dir().to_path_buf();
    let (baseline, _) = run_job(&temp_dir, scenario, tasks);

    phase("chaos: the same job while nodes die");
    let cluster = Arc::new(Mutex::new(cluster));
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (cluster, done, cpus) = (cluster.clone(), done.clone(), cpus.to_string());
        std::thread::spawn(move || {
            let mut kills = 0u32;
            let mut seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64 | 1;
            let mut next = Instant::now() + interval;
            while !done.load(Ordering::SeqCst) && kills < max_kills {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                next += interval;
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut cluster = cluster.lock().unwrap();
                let alive: Vec<usize> =
                    (0..cluster.nodes.len()).filter(|index| !cluster.nodes[*index].has_exited()).collect();
                let victim = alive[(seed % alive.len() as u64) as usize];
                cluster.nodes[victim].signal(rustix::process::Signal::KILL);
                let _ = cluster.nodes[victim].child.wait();
                kills += 1;
                cluster.add_node(&["--num-cpus", &cpus]);
            }
            kills
        })
    };
    let (seconds, retried) = run_job(&temp_dir, scenario, tasks);
    done.store(true, Ordering::SeqCst);
    let kills = killer.join().unwrap();
    let report = format!(
        "| {scenario} | {tasks} | {:.1} s | {kills} | {retried} | {:.2} s | {:.2} s |",
        interval.as_secs_f64(),
        baseline,
        seconds - baseline
    );
    println!("chaos: tasks={tasks} kills={kills} retried={retried} baseline={baseline:.2}s chaos={seconds:.2}s");
    println!("{report}");
    if let Ok(path) = std::env::var("MANTA_CHAOS_REPORT") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(file, "{report}").unwrap();
    }
}
