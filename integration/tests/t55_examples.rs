//! The examples users run first: `counter` (the seed's sample) and the embedded
//! cluster, which must leave no process behind.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use manta_integration::{
    TestCluster, driver_command, example_bin, phase, processes_in_group, scenarios_bin, wait_until,
};

const SEED_LINES: &str =
    "test_counter got 1\ntest_counter got 2\ntest_counter got 3\ntest_counter got 4\ntest_counter got 5\n";

#[test]
fn cluster_counter_embedded_and_against_a_cluster() {
    let temp = tempfile::tempdir().unwrap();
    phase("counter with nothing running: an embedded cluster");
    let output = driver_command(&example_bin("counter"), temp.path(), &[]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), SEED_LINES);

    phase("counter against a 3-node cluster started with manta start");
    let cluster = TestCluster::start(2);
    let output = driver_command(&example_bin("counter"), cluster.temp_dir(), &[])
        .env("MANTA_ADDRESS", &cluster.address)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), SEED_LINES);
}

/// The seed's GPU sample, with the options a Ray user types: `#[manta::actor(num_gpus = 1)]`,
/// `#[manta::remote(num_gpus = 1)]` and `Builder::num_gpus(2)` on the embedded cluster.
#[test]
fn cluster_gpu_sample_gets_one_device_each() {
    let temp = tempfile::tempdir().unwrap();
    let output =
        driver_command(&example_bin("gpus"), temp.path(), &[]).env_remove("CUDA_VISIBLE_DEVICES").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "actor GPU ids: [0], CUDA_VISIBLE_DEVICES: 0\ntask GPU ids: [1], CUDA_VISIBLE_DEVICES: 1\n"
    );
}

#[test]
fn cluster_embedded_leaves_no_process_behind() {
    let temp = tempfile::tempdir().unwrap();
    let mut child = driver_command(&scenarios_bin(), temp.path(), &["embedded"]).process_group(0).spawn().unwrap();
    let group = child.id() as i32;
    let status = child.wait().unwrap();
    assert!(status.success(), "the embedded scenario failed");
    wait_until("the driver's process group is empty", Duration::from_secs(10), || processes_in_group(group).is_empty());
}

#[test]
fn cluster_quickstart_and_pi_run() {
    let temp = tempfile::tempdir().unwrap();
    for (example, args, expected) in
        [("quickstart", vec![], "accumulator total: 106"), ("pi", vec!["8", "20000"], "pi ≈ 3.1")]
    {
        let output = Command::new(example_bin(example)).args(args).env("MANTA_TEMP_DIR", temp.path()).output().unwrap();
        assert!(output.status.success(), "{example}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(
            String::from_utf8_lossy(&output.stdout).contains(expected),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}
