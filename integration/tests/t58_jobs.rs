//! Submitted jobs on real clusters: `manta job …` against the head's Jobs
//! REST API (Ray's paths), the supervisor on the node that has the
//! entrypoint's resources, stop ending the whole process group, the HTTP
//! server's refusals, and job records surviving a head restart.

use std::process::Output;
use std::time::{Duration, Instant};

use manta_integration::{TestCluster, example_bin, phase, processes_in_group, wait_until};
use serde_json::Value;

const SEED_LINES: &str =
    "test_counter got 1\ntest_counter got 2\ntest_counter got 3\ntest_counter got 4\ntest_counter got 5\n";

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The id `manta job submit` printed.
fn submitted_id(stderr: &str) -> String {
    let start = stderr.find("Job '").expect("a submitted line") + 5;
    stderr[start..].split('\'').next().unwrap().to_string()
}

/// `GET /api/jobs/{id}` with the token.
fn job_details(cluster: &TestCluster, id: &str) -> Value {
    let output = cluster.manta_in_session(&["job", "list"]);
    assert!(output.status.success(), "{}", text(&output).1);
    let jobs: Value = serde_json::from_slice(&output.stdout).expect("job list JSON");
    jobs.as_array().unwrap().iter().find(|job| job["submission_id"] == id).cloned().unwrap_or(Value::Null)
}

#[test]
fn jobs_counter_failure_stop_list_delete() {
    let cluster = TestCluster::start(0);

    phase("the seed's Counter sample, submitted with its runtime env");
    let counter = example_bin("counter");
    let started = Instant::now();
    let output = cluster.manta_in_session(&[
        "job",
        "submit",
        "--submission-id",
        "counter-1",
        "--runtime-env-json",
        r#"{"env_vars": {"counter_name": "test_counter"}}"#,
        "--",
        counter.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&output);
    eprintln!("counter job: {:?} from submit to SUCCEEDED", started.elapsed());
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, SEED_LINES);
    assert!(stderr.contains("Job 'counter-1' submitted successfully") && stderr.contains("succeeded"), "{stderr}");
    let details = job_details(&cluster, "counter-1");
    assert_eq!(details["status"], "SUCCEEDED");
    assert_eq!(details["driver_exit_code"], 0);
    assert!(details["job_id"].is_string(), "the driver's manta job is linked: {details}");
    assert_eq!(details["runtime_env"]["env_vars"]["counter_name"], "test_counter");

    phase("--runtime-env FILE.yaml and a local --working-dir, uploaded by the CLI");
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("data.txt"), "shipped data\n").unwrap();
    let yaml = cluster.temp_dir().join("env.yaml");
    std::fs::write(&yaml, "env_vars:\n  GREETING: hello from yaml\n").unwrap();
    let output = cluster.manta_in_session(&[
        "job",
        "submit",
        "--runtime-env",
        yaml.to_str().unwrap(),
        "--working-dir",
        project.path().to_str().unwrap(),
        "--",
        "cat data.txt; echo $GREETING",
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, "shipped data\nhello from yaml\n");
    let shipped_id = submitted_id(&stderr);
    let shipped = job_details(&cluster, &shipped_id);
    let working_dir = shipped["runtime_env"]["working_dir"].as_str().unwrap();
    assert!(working_dir.starts_with("gcs://_manta_pkg_"), "{working_dir}");

    phase("a failing entrypoint is FAILED with its exit code and the end of its log");
    let output = cluster.manta_in_session(&["job", "submit", "--", "echo something broke; exit 3"]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let failed = submitted_id(&stderr);
    let details = job_details(&cluster, &failed);
    assert_eq!(details["status"], "FAILED");
    assert_eq!(details["driver_exit_code"], 3);
    let message = details["message"].as_str().unwrap();
    assert!(message.contains("exit code 3") && message.contains("something broke"), "{message}");
    let logs = cluster.manta_in_session(&["job", "logs", &failed]);
    assert_eq!(text(&logs).0, "something broke\n");
    let followed = cluster.manta_in_session(&["job", "logs", "--follow", &failed]);
    assert_eq!(text(&followed).0, "something broke\n", "an ended job's stream is its whole log, then closes");

    phase("stop: SIGTERM reaches the whole process group, the job is STOPPED");
    let pid_file = cluster.temp_dir().join("long-job.pid");
    let entrypoint = format!("echo $$ > {}; sleep 300 & sleep 301; wait", pid_file.display());
    let output =
        cluster.manta_in_session(&["job", "submit", "--no-wait", "--submission-id", "long", "--", &entrypoint]);
    assert!(output.status.success(), "{}", text(&output).1);
    wait_until("the long job wrote its pid", Duration::from_secs(30), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|text| text.ends_with('\n'))
    });
    let group: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    wait_until("the shell and both sleeps run", Duration::from_secs(10), || processes_in_group(group).len() >= 3);
    wait_until("the long job is RUNNING", Duration::from_secs(10), || {
        job_details(&cluster, "long")["status"] == "RUNNING"
    });
    let deleting_running = cluster.manta_in_session(&["job", "delete", "long"]);
    assert!(!deleting_running.status.success());
    assert!(text(&deleting_running).1.contains("non-terminal"), "{}", text(&deleting_running).1);
    let output = cluster.manta_in_session(&["job", "stop", "long"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("STOPPED"), "{stdout}");
    wait_until("the job's process group is gone", Duration::from_secs(10), || processes_in_group(group).is_empty());
    assert_eq!(job_details(&cluster, "long")["status"], "STOPPED");

    phase("list and delete");
    let output = cluster.manta_in_session(&["job", "list"]);
    let jobs: Value = serde_json::from_slice(&output.stdout).unwrap();
    let ids: Vec<&str> = jobs.as_array().unwrap().iter().filter_map(|job| job["submission_id"].as_str()).collect();
    assert_eq!(ids, vec!["counter-1", shipped_id.as_str(), failed.as_str(), "long"], "oldest first");
    assert!(
        jobs.as_array().unwrap().iter().all(|job| job["type"] == "SUBMISSION"),
        "the counter's driver is its submission's"
    );
    assert!(cluster.manta_in_session(&["job", "delete", "long"]).status.success());
    let gone = cluster.manta_in_session(&["job", "status", "long"]);
    assert!(!gone.status.success());
    assert!(text(&gone).1.contains("404"), "{}", text(&gone).1);
    let duplicate = cluster.manta_in_session(&["job", "submit", "--submission-id", "counter-1", "--", "true"]);
    assert!(text(&duplicate).1.contains("already exists"), "{}", text(&duplicate).1);
}

/// One HTTP request with an optional token; the status and the body.
fn http(method: &str, url: &str, token: Option<&str>, body: Option<Vec<u8>>) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut request = client.request(method.parse().unwrap(), url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

#[test]
fn jobs_http_refuses_without_the_token_and_names_bad_fields() {
    let cluster = TestCluster::start_with(&["--job-start-timeout", "2"], &[]);
    let base = cluster.dashboard_url();
    let token = cluster.token();
    let jobs = format!("{base}/api/jobs/");

    phase("version is open; everything else needs the token");
    let (status, body) = http("GET", &format!("{base}/api/version"), None, None);
    assert_eq!(status, 200);
    assert!(body.contains("ray_version"), "{body}");
    assert_eq!(http("GET", &jobs, None, None).0, 401);
    assert_eq!(http("GET", &jobs, Some("not-the-token"), None).0, 403);
    assert_eq!(http("POST", &jobs, Some("not-the-token"), Some(br#"{"entrypoint": "true"}"#.to_vec())).0, 403);
    assert_eq!(http("GET", &jobs, Some(&token), None), (200, "[]".into()));

    phase("unknown ids are 404; bad bodies are 400 naming the field");
    assert_eq!(http("GET", &format!("{jobs}nope"), Some(&token), None).0, 404);
    assert_eq!(http("POST", &format!("{jobs}nope/stop"), Some(&token), None).0, 404);
    assert_eq!(http("DELETE", &format!("{jobs}nope"), Some(&token), None).0, 404);
    for (body, field) in [
        (r#"{"entrypoint": 5}"#, "entrypoint"),
        (r#"{"entrypoint": "true", "runtime_env": {"env_vars": {"a": 1}}}"#, "runtime_env"),
        (r#"{"entrypoint": "true", "entrypoint_num_cpus": "x"}"#, "entrypoint_num_cpus"),
        (r#"{"entrypoint": "true", "surprise": 1}"#, "surprise"),
        ("{not json", "JSON"),
    ] {
        let (status, text) = http("POST", &jobs, Some(&token), Some(body.as_bytes().to_vec()));
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(field), "{body}: {text}");
    }
    let too_big = vec![b' '; manta_agents_json_cap() + 1];
    assert_eq!(http("POST", &jobs, Some(&token), Some(too_big)).0, 413);

    phase("a submission over REST runs, and a duplicate id is 400");
    let body = br#"{"entrypoint": "echo from rest", "submission_id": "rest-1", "metadata": {"owner": "test"}}"#;
    let (status, text) = http("POST", &jobs, Some(&token), Some(body.to_vec()));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("rest-1"));
    let (status, text) = http("POST", &jobs, Some(&token), Some(body.to_vec()));
    assert_eq!(status, 400, "{text}");
    wait_until("the REST job succeeded", Duration::from_secs(30), || {
        http("GET", &format!("{jobs}rest-1"), Some(&token), None).1.contains("SUCCEEDED")
    });
    let (_, logs) = http("GET", &format!("{jobs}rest-1/logs"), Some(&token), None);
    assert_eq!(serde_json::from_str::<Value>(&logs).unwrap()["logs"], "from rest\n");
    let (_, stopped) = http("POST", &format!("{jobs}rest-1/stop"), Some(&token), None);
    assert_eq!(serde_json::from_str::<Value>(&stopped).unwrap()["stopped"], false, "it had ended");

    phase("a job no node can take fails after --job-start-timeout (Ray: 900 s)");
    let body = br#"{"entrypoint": "echo never", "submission_id": "no-room", "entrypoint_resources": {"tpu": 1}}"#;
    assert_eq!(http("POST", &jobs, Some(&token), Some(body.to_vec())).0, 200);
    wait_until("the job failed to start in time", Duration::from_secs(20), || {
        http("GET", &format!("{jobs}no-room"), Some(&token), None).1.contains("START_TIMEOUT")
    });
    let (_, text) = http("GET", &format!("{jobs}no-room"), Some(&token), None);
    assert!(text.contains("FAILED") && text.contains("--job-start-timeout"), "{text}");

    phase("packages: a digest in the name must match the content");
    let bad = format!("{base}/api/packages/gcs/_manta_pkg_{}.zip", "0".repeat(64));
    let (status, text) = http("PUT", &bad, Some(&token), Some(b"PK not really".to_vec()));
    assert_eq!(status, 400, "{text}");
    assert_eq!(http("GET", &bad, Some(&token), None).0, 404);
    assert_eq!(http("GET", &format!("{base}/api/packages/s3/x.zip"), Some(&token), None).0, 400);

    phase("from another machine: --address http://… or the GCS address, and MANTA_TOKEN");
    let elsewhere = tempfile::tempdir().unwrap();
    let remote = |address: &str| {
        std::process::Command::new(manta_integration::manta_bin())
            .args(["job", "submit", "--address", address, "--", "echo remote"])
            .env("MANTA_TEMP_DIR", elsewhere.path())
            .env("MANTA_TOKEN", &token)
            .env_remove("MANTA_ADDRESS")
            .output()
            .unwrap()
    };
    for address in [base.as_str(), cluster.address.as_str()] {
        let output = remote(address);
        assert!(output.status.success(), "{address}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "remote\n");
    }
    let refused = std::process::Command::new(manta_integration::manta_bin())
        .args(["job", "list", "--address", &base, "--token", "wrong"])
        .env("MANTA_TEMP_DIR", elsewhere.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"), "{}", String::from_utf8_lossy(&refused.stderr));

    phase("a program that called init itself is listed as a DRIVER job");
    let output = manta_integration::driver_command(&example_bin("counter"), cluster.temp_dir(), &[])
        .env("MANTA_ADDRESS", &cluster.address)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    wait_until("the driver's job is listed, ended", Duration::from_secs(10), || {
        let (_, list) = http("GET", &jobs, Some(&token), None);
        let list: Value = serde_json::from_str(&list).unwrap();
        list.as_array().unwrap().iter().any(|job| job["type"] == "DRIVER" && job["status"] == "SUCCEEDED")
    });
}

/// The HTTP server's JSON body cap (kept in step with `manta_agents::http::MAX_JSON_BYTES`).
fn manta_agents_json_cap() -> usize {
    1 << 20
}

#[test]
fn jobs_run_where_their_resources_are_fail_with_their_node_and_survive_a_head_restart() {
    let mut cluster = TestCluster::start_with(&[], &[vec!["--resources", r#"{"disk": 1}"#]]);
    let worker_node =
        cluster.nodes_in_state("ALIVE").into_iter().find(|node| !node["is_head"].as_bool().unwrap()).unwrap();
    let worker_id = worker_node["node_id"].as_str().unwrap().to_string();

    phase("an entrypoint that needs a resource runs on the node that has it");
    let output = cluster.manta_in_session(&[
        "job",
        "submit",
        "--submission-id",
        "on-disk-node",
        "--entrypoint-resources",
        r#"{"disk": 1}"#,
        "--",
        "echo ran with $MANTA_SUBMISSION_ID",
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, "ran with on-disk-node\n");
    let details = job_details(&cluster, "on-disk-node");
    assert_eq!(details["driver_node_id"], worker_id.as_str(), "{details}");

    phase("a job whose supervisor's node dies is FAILED with the reason");
    let output = cluster.manta_in_session(&[
        "job",
        "submit",
        "--no-wait",
        "--submission-id",
        "doomed",
        "--entrypoint-resources",
        r#"{"disk": 1}"#,
        "--",
        "sleep 300",
    ]);
    assert!(output.status.success(), "{}", text(&output).1);
    wait_until("the doomed job runs", Duration::from_secs(30), || {
        job_details(&cluster, "doomed")["status"] == "RUNNING"
    });
    let disk_free = |cluster: &TestCluster| {
        let node = cluster.nodes_in_state("ALIVE").into_iter().find(|node| node["node_id"] == worker_id.as_str());
        node.map(|node| node["resources_available"]["disk"].as_f64().unwrap_or(0.0))
    };
    wait_until("the running entrypoint holds the node's disk", Duration::from_secs(10), || {
        disk_free(&cluster) == Some(0.0)
    });

    phase("a job that needs what no node has waits PENDING, and stops from there");
    let output = cluster.manta_in_session(&[
        "job",
        "submit",
        "--no-wait",
        "--submission-id",
        "waiting",
        "--entrypoint-resources",
        r#"{"tpu": 1}"#,
        "--",
        "echo never",
    ]);
    assert!(output.status.success(), "{}", text(&output).1);
    assert_eq!(job_details(&cluster, "waiting")["status"], "PENDING");
    assert!(cluster.manta_in_session(&["job", "stop", "waiting"]).status.success());
    assert_eq!(job_details(&cluster, "waiting")["status"], "STOPPED");
    assert!(cluster.manta_in_session(&["job", "delete", "waiting"]).status.success());
    cluster.nodes[0].signal(rustix::process::Signal::KILL);
    wait_until("the doomed job failed with its node", Duration::from_secs(30), || {
        job_details(&cluster, "doomed")["status"] == "FAILED"
    });
    let details = job_details(&cluster, "doomed");
    assert!(details["message"].as_str().unwrap().contains("died"), "{details}");

    phase("job records survive a head restart");
    cluster.restart_head();
    wait_until("both records are back", Duration::from_secs(30), || {
        let output = cluster.manta_in_session(&["job", "list"]);
        output.status.success() && {
            let jobs: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
            let statuses: Vec<String> = jobs
                .as_array()
                .into_iter()
                .flatten()
                .map(|job| format!("{}={}", job["submission_id"], job["status"]))
                .collect();
            statuses == vec![r#""on-disk-node"="SUCCEEDED""#, r#""doomed"="FAILED""#]
        }
    });
    let output = cluster.manta_in_session(&["job", "submit", "--", "echo after the restart"]);
    assert!(output.status.success(), "{}", text(&output).1);
    assert_eq!(text(&output).0, "after the restart\n");
}
