//! Worker output at the driver: prefixes, deduplication, no lost lines, the rate
//! limit, and `manta logs`.

use manta_integration::{TestCluster, driver_command, example_bin, phase, scenarios_bin};

/// Lines printed for `text`, counting `[repeated Nx across cluster]` summaries.
fn total(stdout: &str, text: &str) -> usize {
    stdout
        .lines()
        .filter(|line| line.contains(text))
        .map(|line| match line.split(" [repeated ").nth(1) {
            Some(rest) => rest.split('x').next().and_then(|count| count.parse().ok()).unwrap_or(0),
            None => 1,
        })
        .sum()
}

#[test]
fn cluster_worker_logs_reach_the_driver() {
    let cpus = ["--num-cpus", "2"];
    let cluster = TestCluster::start_with(&cpus, &[cpus.to_vec()]);
    phase("hello_logs: task and actor lines with their prefix, one deduplicated line, nothing lost");
    let output = driver_command(&example_bin("hello_logs"), cluster.temp_dir(), &[]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let task_line = stdout.lines().find(|line| line.contains("hello from task")).expect("a task line");
    assert!(task_line.starts_with("(hello pid=") && task_line.contains(", ip=127.0.0.1) hello from task "), "{stdout}");
    let actor_line = stdout.lines().find(|line| line.contains("greeter says hi")).expect("an actor line");
    assert!(
        actor_line.starts_with("(Greeter pid=") && actor_line.ends_with(", ip=127.0.0.1) greeter says hi"),
        "{stdout}"
    );
    assert_eq!(total(&stdout, "hello from task"), 4, "{stdout}");
    assert_eq!(total(&stdout, "greeter says hi"), 3, "{stdout}");
    assert_eq!(total(&stdout, "the same line from many tasks"), 20, "{stdout}");
    assert!(
        stdout.lines().any(|line| line.contains("the same line from many tasks [repeated ")),
        "one deduplicated line expected (the tasks ran in several workers):\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains(":manta_task_name:"), "markers are consumed: {stdout}");

    phase("manta logs lists the files and prints a worker's output");
    let listed = cluster.manta(&["logs"]);
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success() && listing.contains("worker-") && listing.contains(".out"), "{listing}");
    let file = listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .find(|name| name.starts_with("worker-") && name.ends_with(".out"))
        .unwrap()
        .to_string();
    let read = cluster.manta(&["logs", &file, "--tail", "1000"]);
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let missing = cluster.manta(&["logs", "worker-nope.out"]);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("manta logs"));
}

#[test]
fn cluster_log_rate_limit_holds_excess_lines_back() {
    let cluster = TestCluster::start_with(&["--num-cpus", "1", "--log-lines-per-second", "1000"], &[]);
    phase("a worker printing 5000 lines at once: the excess stays in its file, the driver is told");
    let output = driver_command(&scenarios_bin(), cluster.temp_dir(), &["log-flood"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let shown = stdout.lines().filter(|line| line.contains("flood line")).count();
    let held: usize = stderr
        .lines()
        .filter_map(|line| line.split("[manta: ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(shown < 5000 && held > 0, "shown {shown}, held back {held}:\n{stderr}");
    assert!(shown + held <= 5000, "shown {shown} + held back {held}");
}

#[test]
fn cluster_rotated_log_files_lose_no_line() {
    let rotation = ["--log-rotation-max-bytes", "20000", "--log-rotation-backups", "5"];
    let cluster = TestCluster::start_with(&[&["--num-cpus", "1"][..], &rotation[..]].concat(), &[]);
    phase("5000 lines (79 kB) through a file rotated every 20 kB: every line reaches the driver");
    let output = driver_command(&scenarios_bin(), cluster.temp_dir(), &["log-flood"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<usize> = stdout
        .lines()
        .filter_map(|line| line.split("flood line ").nth(1))
        .filter_map(|number| number.parse().ok())
        .collect();
    assert_eq!(lines, (0..5000).collect::<Vec<_>>(), "every line, in order");
    let listed = cluster.manta(&["logs"]);
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(listing.contains(".out.1") && listing.contains(".out.3") && !listing.contains(".out.4"), "{listing}");
}

#[test]
fn cluster_logs_of_exited_workers_go_after_the_retention() {
    let cluster = TestCluster::start_with(&["--num-cpus", "1", "--log-retention", "2s"], &[]);
    let worker_logs = || -> Vec<String> {
        let nodes = std::fs::read_dir(cluster.temp_dir().join("nodes")).unwrap();
        nodes
            .flatten()
            .flat_map(|node| std::fs::read_dir(node.path().join("logs")).into_iter().flatten().flatten())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("worker-"))
            .collect()
    };
    phase("a worker runs an actor and ends: its log files exist");
    let output = driver_command(&scenarios_bin(), cluster.temp_dir(), &["many-workers", "1"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!worker_logs().is_empty());
    phase("2 s after its last line they are removed");
    manta_integration::wait_until("the exited worker's logs are removed", std::time::Duration::from_secs(40), || {
        worker_logs().is_empty()
    });
}
