//! Runtime environments on real clusters: a job's working dir reaches other
//! nodes (uploaded once, unpacked once per node), the program itself is shipped
//! (nodes never run a path from a message), scopes and inheritance, setup
//! failures, and the per-node cache's garbage collection.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use manta_integration::{InteractiveDriver, TestCluster, driver_command, phase, scenarios_bin, wait_until};

fn printed(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A working dir with `data.txt`, a `.gitignore`d log and a file `excludes` drops.
fn working_dir(content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.txt"), content).unwrap();
    std::fs::write(dir.path().join(".gitignore"), "*.log\n").unwrap();
    std::fs::write(dir.path().join("noise.log"), "not shipped").unwrap();
    dir
}

/// Every item folder of `kind` (`working_dir`, `exe`) in the node caches under `temp_dir`.
fn cached(temp_dir: &Path, kind: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for node in std::fs::read_dir(temp_dir.join("nodes")).into_iter().flatten().flatten() {
        let folder = node.path().join("runtime_resources").join(kind);
        for item in std::fs::read_dir(folder).into_iter().flatten().flatten() {
            if !item.file_name().to_string_lossy().starts_with('.') {
                found.push(item.path());
            }
        }
    }
    found.sort();
    found
}

/// The distinct log lines of all nodes that contain `needle`.
fn log_lines(temp_dir: &Path, needle: &str) -> std::collections::BTreeSet<String> {
    manta_integration::node_logs(temp_dir)
        .into_iter()
        .flat_map(|(_, log)| log.lines().filter(|line| line.contains(needle)).map(str::to_string).collect::<Vec<_>>())
        .collect()
}

#[test]
fn cluster_working_dir_reaches_other_nodes_uploaded_once_and_unpacked_once_per_node() {
    let cluster = TestCluster::start_with(&["--num-cpus", "0"], &[vec!["--num-cpus", "2"], vec!["--num-cpus", "2"]]);
    let dir = working_dir("data from the driver's folder");
    let path = dir.path().to_str().unwrap();

    phase("two jobs with the same working dir: tasks and an actor on other nodes read its file");
    for _ in 0..2 {
        let output = cluster.scenario(&["runtime-env-working-dir", path, "data from the driver's folder"]);
        let text = printed(&output);
        assert!(output.status.success() && text.matches("ok: ").count() == 6, "{text}");
        assert!(text.contains("nodes used: 2"), "SPREAD tasks on both worker nodes: {text}");
    }

    phase("uploaded once, unpacked once on each node, without what .gitignore leaves out");
    let stored = cluster
        .head_log()
        .lines()
        .filter(|line| line.contains("stored package") && line.contains("_manta_pkg_"))
        .count();
    assert_eq!(stored, 1, "the head stored the working dir once:\n{}", cluster.head_log());
    // With eager_install (the default) the head sets it up too, though it runs nothing here.
    let unpacks = log_lines(cluster.temp_dir(), "unpacked package");
    let folders: std::collections::BTreeSet<&str> =
        unpacks.iter().filter_map(|line| line.split("path=").nth(1)).collect();
    assert!(unpacks.len() == 3 && folders.len() == 3, "one unpack on each of the three nodes: {unpacks:#?}");
    let unpacked = cached(cluster.temp_dir(), "working_dir");
    assert_eq!(unpacked.len(), 3, "{unpacked:?}");
    for folder in &unpacked {
        assert!(folder.join("data.txt").exists() && !folder.join("noise.log").exists(), "{folder:?}");
    }
}

#[test]
fn cluster_eager_install_sets_up_every_node_at_job_start_unless_turned_off() {
    let cluster = TestCluster::start_with(&["--num-cpus", "0"], &[vec!["--num-cpus", "1"], vec!["--num-cpus", "1"]]);
    let unpacked_for = |dir: &tempfile::TempDir| {
        cached(cluster.temp_dir(), "working_dir")
            .into_iter()
            .filter(|folder| {
                std::fs::read_to_string(folder.join("data.txt"))
                    .is_ok_and(|text| text == format!("data {}", dir.path().display()))
            })
            .count()
    };
    for eager in [true, false] {
        phase(&format!("eager_install {eager}: one task on one node; the job waits"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.txt"), format!("data {}", dir.path().display())).unwrap();
        let mut driver = InteractiveDriver::start(
            cluster.temp_dir(),
            &["runtime-env-eager", dir.path().to_str().unwrap(), if eager { "true" } else { "false" }],
        );
        if driver.read_until_prefix("waiting").is_none() {
            let stderr = driver.read_stderr();
            panic!("the driver failed: {}{stderr}", driver.stdout);
        }
        if eager {
            wait_until("every node set up the working dir", Duration::from_secs(20), || unpacked_for(&dir) == 3);
        } else {
            assert_eq!(unpacked_for(&dir), 1, "only the node that ran the task set it up");
        }
        let (success, stdout, stderr) = driver.finish();
        assert!(success, "{stdout}{stderr}");
    }
}

#[test]
fn cluster_runs_a_program_whose_binary_is_gone_on_nodes_with_their_own_temp_dirs() {
    let mut cluster = TestCluster::start_with(&["--num-cpus", "0"], &[]);
    let elsewhere = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for dir in &elsewhere {
        cluster.add_node_elsewhere(dir.path(), &["--num-cpus", "1"]);
    }
    cluster.wait_for_alive(3);

    phase("the driver runs from a copy of its binary and deletes it after init");
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("driver-copy");
    std::fs::copy(scenarios_bin(), &copy).unwrap();
    let output = driver_command(&copy, cluster.temp_dir(), &["runtime-env-shipped"]).output().unwrap();
    let text = printed(&output);
    assert!(output.status.success() && text.matches("ok: ").count() == 6, "{text}");
    assert!(!copy.exists());

    phase("each node started it from its own cache, fetched from the cluster");
    for dir in &elsewhere {
        let executables = cached(dir.path(), "exe");
        assert_eq!(executables.len(), 1, "{executables:?}");
        assert!(executables[0].file_name().unwrap().to_string_lossy().starts_with("_manta_exe_"));
    }
}

#[test]
fn cluster_runtime_env_setup_failures_report_the_reason_promptly_and_a_venv_works() {
    let cluster = TestCluster::start(0);

    phase("a missing package, an unresolvable pip requirement, a local folder at task level; a good venv");
    let started = Instant::now();
    let output = cluster.scenario(&["runtime-env-failures"]);
    let text = printed(&output);
    assert!(output.status.success() && text.matches("ok: ").count() == 7, "{text}");
    assert!(started.elapsed() < Duration::from_secs(90), "took {:?}", started.elapsed());

    phase("manta list tasks shows the failures with the agent's message");
    let listed = cluster.manta(&["list", "tasks"]);
    let listed = printed(&listed);
    assert!(listed.matches("RuntimeEnvSetupFailed on node").count() >= 2, "{listed}");

    phase("init refuses a working_dir that does not exist");
    let output = cluster.scenario(&["runtime-env-missing-dir", "/nonexistent/manta-working-dir"]);
    let text = printed(&output);
    assert!(output.status.success() && text.contains("ok: init refuses"), "{text}");
}

#[test]
fn cluster_py_modules_reach_python_and_job_level_conflicts_are_named() {
    let cluster = TestCluster::start(0);

    phase("a py_modules folder, packed with its name, is importable in the workers");
    let modules = tempfile::tempdir().unwrap();
    let module = modules.path().join("shipped_module");
    std::fs::create_dir(&module).unwrap();
    std::fs::write(module.join("__init__.py"), "ANSWER = 42\n").unwrap();
    let output = cluster.scenario(&["runtime-env-py-modules", module.to_str().unwrap()]);
    let text = printed(&output);
    assert!(output.status.success() && text.contains("ok: a py_modules folder is importable"), "{text}");

    phase("the job's environment from `manta job submit` and the program's disagree: init says where");
    let output = driver_command(&scenarios_bin(), cluster.temp_dir(), &["runtime-env-conflict"])
        .env("MANTA_JOB_RUNTIME_ENV", r#"{"env_vars": {"A": "1"}}"#)
        .output()
        .unwrap();
    let text = printed(&output);
    assert!(output.status.success() && text.contains("ok: init names the conflicting variable"), "{text}");
}

#[test]
fn cluster_runtime_env_cache_shrinks_after_jobs_and_never_drops_what_is_in_use() {
    let limit = ["--runtime-env-cache-bytes", "1"];
    let cluster = TestCluster::start_with(
        &["--num-cpus", "0", limit[0], limit[1]],
        &[vec!["--num-cpus", "2", limit[0], limit[1]]],
    );
    // Working dirs on any node whose data.txt says `text`.
    let holding = |text: &str| {
        cached(cluster.temp_dir(), "working_dir")
            .iter()
            .filter(|folder| std::fs::read_to_string(folder.join("data.txt")).is_ok_and(|data| data == text))
            .count()
    };
    let held_dir = working_dir("data held");
    let passing_dir = working_dir("data passing");

    phase("job B holds an actor in its working dir; job C comes and goes");
    let mut holder =
        InteractiveDriver::start(cluster.temp_dir(), &["runtime-env-hold", held_dir.path().to_str().unwrap()]);
    if holder.read_until_prefix("holding ").is_none() {
        let stderr = holder.read_stderr();
        panic!("the holder did not start: {}{stderr}", holder.stdout);
    }
    let output = cluster.scenario(&["runtime-env-working-dir", passing_dir.path().to_str().unwrap(), "data passing"]);
    assert!(output.status.success(), "{}", printed(&output));

    phase("over their 1-byte limit, the caches drop job C's folder and keep job B's and the program");
    wait_until("job C's working dir is deleted", Duration::from_secs(20), || holding("data passing") == 0);
    assert_eq!(holding("data held"), 2, "job B's folder stays on both nodes (eager install put it on the head)");
    assert_eq!(cached(cluster.temp_dir(), "exe").len(), 2, "the program job B runs stays");

    phase("job B ends: nothing in use, the cache empties below its limit");
    holder.send_line("go on");
    let (success, stdout, stderr) = holder.finish();
    assert!(success && stdout.contains("ok: the held actor still reads"), "{stdout}{stderr}");
    wait_until("the cache is empty", Duration::from_secs(20), || {
        cached(cluster.temp_dir(), "working_dir").is_empty() && cached(cluster.temp_dir(), "exe").is_empty()
    });
}
