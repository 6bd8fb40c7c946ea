//! Secrets stay where they belong: the token is in no node's command line or
//! environment, and no task (nor what it starts) inherits a worker's variables.

use manta_integration::{DaemonGuard, TestCluster, manta_command, phase, recorded_node_pids};

/// The NUL-separated entries of a /proc file.
fn proc_entries(pid: u32, file: &str) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
    bytes.split(|byte| *byte == 0).map(|entry| String::from_utf8_lossy(entry).into_owned()).collect()
}

#[test]
fn cluster_token_is_not_in_the_node_command_line_or_environment() {
    let temp = tempfile::tempdir().unwrap();
    let _guard = DaemonGuard(temp.path().to_path_buf());
    let token = "t35-token-given-on-the-command-line";

    phase("manta start --head --token T (daemonized)");
    let output = manta_command(temp.path(), &["start", "--head", "--port", "0", "--token", token]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let pids = recorded_node_pids(temp.path());
    assert_eq!(pids.len(), 1);
    let command_line = proc_entries(pids[0], "cmdline");
    assert!(!command_line.iter().any(|entry| entry.contains(token)), "token in argv: {command_line:?}");
    let environment = proc_entries(pids[0], "environ");
    assert!(!environment.iter().any(|entry| entry.contains(token)), "token in the node's environment");

    phase("the node took the given token");
    let status = manta_command(temp.path(), &["status"]).env("MANTA_TOKEN", token).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let output = manta_command(temp.path(), &["stop"]).output().unwrap();
    assert!(output.status.success());
}

#[test]
fn cluster_tasks_see_no_worker_variables() {
    let cluster = TestCluster::start(0);
    let output = cluster.scenario(&["worker-environment"]);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn cluster_session_folder_others_can_write_to_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let open = root.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(open.join("token"), "planted-by-someone-else").unwrap();
    let _guard = DaemonGuard(open.clone());

    phase("a 0777 temp dir with a planted token: manta start --head exits 1 and says why");
    let output = manta_command(&open, &["start", "--head", "--port", "0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("others may write to it") && stderr.contains("chmod 700"), "{stderr}");
    assert!(recorded_node_pids(&open).is_empty());

    phase("a 0700 temp dir stays 0700 after a node starts");
    let private = root.path().join("private");
    let _private_guard = DaemonGuard(private.clone());
    let output = manta_command(&private, &["start", "--head", "--port", "0"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o700);
    let output = manta_command(&private, &["stop"]).output().unwrap();
    assert!(output.status.success());
}

#[test]
fn cluster_a_cli_link_cannot_act_as_the_gcs_or_kill_workers() {
    use manta_proto::cluster::ClusterTarget;
    use manta_proto::gcs::ClusterViewEvent;
    use manta_proto::message::Event;
    use manta_proto::task::{JobFinishedEvent, KillWorkerRequest};

    let cluster = TestCluster::start(0);
    phase("a job holds a named actor");
    let (mut holder, _) = manta_integration::hold_named_actor(cluster.temp_dir(), "guarded");
    let actors = cluster.manta(&["list", "actors", "--filter", "name=guarded", "--format", "json"]);
    let actors: Vec<serde_json::Value> = serde_json::from_slice(&actors.stdout).unwrap();
    let worker_id: manta::WorkerId = actors[0]["worker_id"].as_str().unwrap().parse().unwrap();
    let jobs = cluster.manta(&["list", "jobs", "--filter", "state=RUNNING", "--format", "json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&jobs.stdout).unwrap();
    let job_id: manta::JobId = jobs[0]["job_id"].as_str().unwrap().parse().unwrap();
    let status = cluster.status_json();
    let node_address = status["nodes"][0]["address"].as_str().unwrap().to_string();

    phase("a CLI link to the node sends a fake cluster view, a job-finished event and a KillWorker");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let target = ClusterTarget { address: None, token: None, temp_dir: cluster.temp_dir().to_path_buf(), tls: None };
    let refused = runtime.block_on(async {
        let node = target.connect_to(&node_address, "t35 impostor").await.unwrap();
        let wait = std::time::Duration::from_secs(5);
        let view = Event::ClusterView(ClusterViewEvent::whole(u64::MAX, u64::MAX, Vec::new()));
        node.send_event_when_up(view, wait).await.unwrap();
        node.send_event_when_up(Event::JobFinished(JobFinishedEvent { job_id }), wait).await.unwrap();
        let kill = KillWorkerRequest { worker_id, reason: "impostor".into() };
        node.rpc(kill, std::time::Duration::from_secs(5)).await
    });
    let error = refused.expect_err("KillWorker from a CLI link must be refused");
    assert_eq!(error.code(), manta_proto::ErrorCode::PermissionDenied, "{error}");

    phase("links with the token and the right roles, but not the owners: each refusal names its rule");
    let token = std::fs::read_to_string(cluster.temp_dir().join("token")).unwrap();
    let head_id: manta::NodeId = status["nodes"][0]["node_id"].as_str().unwrap().parse().unwrap();
    let refusals = runtime.block_on(async {
        use manta_proto::frame::PeerRole;
        use manta_proto::gcs::DrainNodeRequest;
        use manta_proto::net::{self, NetConfig, NoService};
        use manta_proto::task::{FinishJobRequest, ReturnWorkerLeaseRequest};
        let link = |address: String, role| {
            let mut config = NetConfig::new(token.trim(), role, "t35 impostor");
            config.reconnect = false;
            async move {
                let timeout = std::time::Duration::from_secs(5);
                net::connect(&address, std::sync::Arc::new(config), std::sync::Arc::new(NoService), None, timeout)
                    .await
                    .unwrap()
            }
        };
        let wait = std::time::Duration::from_secs(5);
        let worker = link(node_address.clone(), PeerRole::Worker).await;
        let kill = worker.rpc(KillWorkerRequest { worker_id, reason: "impostor".into() }, wait).await;
        let give_back = worker.rpc(ReturnWorkerLeaseRequest { worker_id }, wait).await;
        let driver = link(cluster.address.clone(), PeerRole::Worker).await;
        let finish = driver.rpc(FinishJobRequest { job_id }, wait).await;
        let node = link(cluster.address.clone(), PeerRole::Node).await;
        let drain = node.rpc(DrainNodeRequest { node_id: head_id, reason: "impostor".into() }, wait).await;
        [("KillWorker", kill), ("ReturnWorkerLease", give_back), ("FinishJob", finish), ("DrainNode", drain)]
    });
    for (name, outcome) in refusals {
        let error = outcome.expect_err(name);
        assert_eq!(error.code(), manta_proto::ErrorCode::PermissionDenied, "{name}: {error}");
        assert!(error.to_string().contains(name) && error.to_string().contains("only"), "{name}: {error}");
    }
    assert_eq!(cluster.nodes_in_state("ALIVE").len(), 1, "the head was not drained");

    phase("the actor still answers");
    let call = cluster.scenario(&["named-call", "guarded"]);
    assert!(call.status.success(), "{}", String::from_utf8_lossy(&call.stderr));
    assert!(String::from_utf8_lossy(&call.stdout).contains("total: 101"));
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
}

/// A throwaway cluster CA and one certificate for 127.0.0.1 (server and client
/// use), as PEM files under `dir`: (cert, key, ca).
fn write_test_ca(dir: &std::path::Path) -> [String; 3] {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = ["cert.pem", "key.pem", "ca.pem"].map(|name| dir.join(name).to_string_lossy().into_owned());
    std::fs::write(&paths[0], cert.pem()).unwrap();
    std::fs::write(&paths[1], key.serialize_pem()).unwrap();
    std::fs::write(&paths[2], ca_cert.pem()).unwrap();
    paths
}

/// Every file and folder under `dir` whose mode lets anyone but the owner in.
fn not_private(dir: &std::path::Path, skip: &[&str]) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        let Ok(metadata) = std::fs::symlink_metadata(entry.path()) else { continue };
        let mode = metadata.permissions().mode() & 0o777;
        if metadata.is_dir() {
            if mode != 0o700 {
                found.push(format!("{} {mode:o}", entry.path().display()));
            }
            found.extend(not_private(&entry.path(), skip));
        } else if mode & 0o077 != 0 {
            found.push(format!("{} {mode:o}", entry.path().display()));
        }
    }
    found
}

#[test]
fn cluster_two_nodes_over_tls_with_every_file_private() {
    let certs = tempfile::tempdir().unwrap();
    let [cert, key, ca] = write_test_ca(certs.path());
    let flags = vec!["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca, "--num-cpus", "1"];

    phase("a head and a node with --tls-*: the node joins over TLS");
    let cluster = TestCluster::start_with(&flags, std::slice::from_ref(&flags));

    phase("tasks on both nodes and 8 MiB objects between them, over TLS");
    let output = cluster.scenario(&["two-nodes"]);
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && printed.matches("ok: ").count() == 4, "{printed}");

    phase("a clear-text client with the right token is refused, and told why");
    let token = std::fs::read_to_string(cluster.temp_dir().join("token")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let output = manta_command(elsewhere.path(), &["status", "--address", &cluster.address])
        .env("MANTA_TOKEN", token.trim())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("requires TLS"), "{stderr}");

    phase("every file the nodes wrote is 0600, every folder 0700 (session and object stores)");
    let loose = not_private(cluster.temp_dir(), &["foreground-nodes.log"]);
    assert!(loose.is_empty(), "readable by others: {loose:#?}");
    let pids: Vec<u32> = std::iter::once(cluster.head.pid).chain(cluster.nodes.iter().map(|node| node.pid)).collect();
    let stores: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_else(|_| Vec::new());
    for store in stores.iter().filter(|path| {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        pids.iter().any(|pid| name.starts_with(&format!("manta-{pid}-")))
    }) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(store).unwrap().permissions()) & 0o777;
        assert_eq!(mode, 0o700, "{}", store.display());
        let loose = not_private(store, &[]);
        assert!(loose.is_empty(), "objects readable by others: {loose:#?}");
    }
}
