//! Objects on real clusters: 1 GiB values between nodes, refs nested in values and
//! passed across nodes, reference counting that empties every node's store, the
//! store-full error, an owner's death, and `manta list objects` for a running job.

use std::process::Output;
use std::time::Duration;

use manta_integration::{InteractiveDriver, TestCluster, phase, wait_until};
use serde_json::Value;

const STORE: &str = "2500000000";

fn list_objects(cluster: &TestCluster) -> Vec<Value> {
    let output = cluster.manta(&["list", "objects", "--format", "json", "--limit", "10000"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice::<Value>(&output.stdout).expect("json").as_array().cloned().unwrap_or_default()
}

fn in_stores(rows: &[Value]) -> Vec<&Value> {
    rows.iter().filter(|row| row["state"] != "OWNED").collect()
}

fn assert_checks(output: &Output, stdout: &str, expected: usize) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "driver failed ({:?}):\n{stdout}\n{stderr}", output.status);
    let checks = stdout.lines().filter(|line| line.starts_with("ok: ")).count();
    assert_eq!(checks, expected, "{stdout}\n{stderr}");
}

#[test]
fn cluster_large_objects_nested_refs_and_refcounting() {
    // Four CPUs a node: one busy CPU leaves a node under the 50 % spread threshold.
    let store = ["--num-cpus", "4", "--object-store-memory", STORE];
    let cluster = TestCluster::start_with(&store, &[store.to_vec(), store.to_vec()]);
    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["big-objects"]);

    phase("1 GiB objects between nodes; nested refs across three nodes; owner death");
    assert!(driver.read_until("holding"), "driver ended early:\n{}", driver.stdout);

    phase("manta list objects shows the running job's objects: owners and store copies");
    let rows = list_objects(&cluster);
    let driver_pid = driver.pid();
    let owned_by_driver = rows.iter().filter(|row| row["state"] == "OWNED" && row["pid"] == driver_pid).count();
    assert!(owned_by_driver >= 1, "the driver owns objects: {rows:#?}");
    let worker_owned: Vec<_> = rows
        .iter()
        .filter(|row| row["state"] == "OWNED" && row["pid"] != driver_pid && row["location"] == "store")
        .collect();
    assert!(worker_owned.iter().any(|row| row["borrowers"].as_u64().unwrap_or(0) >= 1), "{rows:#?}");
    let primaries: Vec<_> = rows.iter().filter(|row| row["state"] == "PRIMARY").collect();
    let copies: Vec<_> = rows.iter().filter(|row| row["state"] == "COPY").collect();
    assert!(!primaries.is_empty() && !copies.is_empty(), "store copies expected: {rows:#?}");
    let text = cluster.manta(&["list", "objects"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("OBJECT_ID"), "{text:?}");

    phase("dropping every ref frees the copies on every node (the job still runs)");
    driver.send_line("drop");
    assert!(driver.read_until("dropped"), "{}", driver.stdout);
    wait_until("every node's store is empty", Duration::from_secs(30), || {
        in_stores(&list_objects(&cluster)).is_empty()
    });
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 13, "{stdout}");
}

#[test]
fn cluster_store_full_refuses_with_the_sizes_and_memory_returns() {
    let cluster = TestCluster::start_with(
        &[
            "--num-cpus",
            "1",
            "--object-store-memory",
            "300000000",
            "--object-store-full-timeout-ms",
            "500",
            "--object-spilling-max-bytes",
            "100000000",
        ],
        &[],
    );
    phase("store and spill budget full: put waits then fails; frees are reused; 10 GiB in 100 MiB objects");
    let output = cluster.scenario(&["store-full"]);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_checks(&output, &stdout, 5);
    assert!(in_stores(&list_objects(&cluster)).is_empty(), "the store is empty after the job");
}

#[test]
fn cluster_spills_10_gib_through_a_1_gib_store_and_reads_every_byte_back() {
    let spill_root = tempfile::tempdir().expect("a spill folder");
    let spill_dir = spill_root.path().to_string_lossy().into_owned();
    let cluster = TestCluster::start_with(
        &["--num-cpus", "2", "--object-store-memory", "1073741824", "--object-spilling-directory", &spill_dir],
        &[vec!["--num-cpus", "1", "--object-store-memory", "600000000"]],
    );
    let spill_files = || -> usize {
        std::fs::read_dir(spill_root.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|node_dir| std::fs::read_dir(node_dir.path()).map(|files| files.count()).unwrap_or(0))
            .sum()
    };
    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["spill"]);

    phase("10 GiB of live objects put into a 1 GiB store spill to disk");
    assert!(driver.read_until("holding"), "driver ended early:\n{}", driver.stdout);
    let rows = list_objects(&cluster);
    let bytes = |state: &str| -> u64 {
        rows.iter().filter(|row| row["state"] == state).map(|row| row["size"].as_u64().unwrap_or(0)).sum()
    };
    assert!(bytes("PRIMARY") <= 1 << 30, "at most the store's 1 GiB stays in memory: {}", bytes("PRIMARY"));
    assert!(bytes("PRIMARY") + bytes("SPILLED") >= 10 << 30, "all 10 GiB are live: {rows:#?}");
    assert!(spill_files() >= 144, "a spill file per spilled object: {}", spill_files());

    phase("every byte read back on the driver's node and on another node; freed objects leave no spill files");
    driver.send_line("read");
    assert!(driver.read_until("dropped"), "{}", driver.stdout);
    wait_until("every node's store is empty", Duration::from_secs(60), || {
        in_stores(&list_objects(&cluster)).is_empty()
    });
    wait_until("no spill files are left", Duration::from_secs(30), || spill_files() == 0);
    driver.send_line("end");
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 4, "{stdout}");
    for timing in stdout.lines().filter(|line| line.contains("10 GiB ")) {
        eprintln!("{timing}");
    }
}
