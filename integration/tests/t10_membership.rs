//! Membership: nodes join with their resources and labels; wrong tokens and
//! garbage bytes are refused without disturbing the cluster.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use manta_integration::{TestCluster, manta_command, phase, wait_until};

#[test]
fn cluster_three_nodes_join_with_custom_resources() {
    phase("start a head and three nodes with custom resources and labels");
    let cluster = TestCluster::start_with(
        &["--num-cpus", "2", "--resources", r#"{"head_only": 1}"#],
        &[
            vec!["--num-cpus", "1", "--resources", r#"{"disk": 2}"#, "--labels", "zone=a"],
            vec!["--num-cpus", "1", "--resources", r#"{"disk": 3.5}"#, "--labels", "zone=b"],
            vec!["--num-cpus", "4", "--num-gpus", "2", "--labels", "zone=c,tier=gpu"],
        ],
    );

    phase("manta status --format json shows every node ALIVE with its resources");
    let status = cluster.status_json();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    assert!(nodes.iter().all(|node| node["state"] == "ALIVE"));
    let heads: Vec<_> = nodes.iter().filter(|node| node["is_head"] == true).collect();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0]["resources_total"]["head_only"], 1.0);
    assert_eq!(heads[0]["pid"], cluster.head.pid);
    for (index, (disk, zone)) in [(Some(2.0), "a"), (Some(3.5), "b"), (None, "c")].iter().enumerate() {
        let row = cluster.node_by_pid(cluster.nodes[index].pid).expect("row for node");
        assert_eq!(row["labels"]["zone"], *zone);
        assert!(row["address"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(row["resources_total"]["node:127.0.0.1"], 1.0);
        match disk {
            Some(disk) => assert_eq!(row["resources_total"]["disk"], *disk),
            None => assert!(row["resources_total"]["disk"].is_null()),
        }
        assert_eq!(row["resources_total"], row["resources_available"]);
    }
    let gpu_row = cluster.node_by_pid(cluster.nodes[2].pid).unwrap();
    assert_eq!(gpu_row["resources_total"]["GPU"], 2.0);
    assert_eq!(gpu_row["resources_total"]["CPU"], 4.0);
    assert_eq!(gpu_row["labels"]["tier"], "gpu");

    phase("the text form sums the cluster's resources");
    let text = cluster.manta(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(" 0.0/8.0 CPU"), "{text}");
    assert!(text.contains(" 0.0/5.5 disk"), "{text}");
    assert!(text.contains(" 0.0/2.0 GPU"), "{text}");
}

#[test]
fn cluster_wrong_token_is_refused() {
    let cluster = TestCluster::start(0);

    phase("a node with the wrong token exits 1 at once with 'authentication failed'");
    let started = std::time::Instant::now();
    let output = cluster.manta(&["start", "--address", &cluster.address, "--token", "not-the-token", "--block"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "a refused token must not be retried");

    phase("the same through the daemonizing start");
    let output = cluster.manta(&["start", "--address", &cluster.address, "--token", "wrong"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("authentication failed"));

    phase("manta status with a wrong token fails the same way");
    let output = cluster.manta(&["status", "--token", "wrong"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("authentication failed"));

    phase("the head logged a warning, and the cluster still has one node");
    wait_until("the head logs the refusal", Duration::from_secs(5), || {
        cluster.head_log().contains("authentication failed")
    });
    assert_eq!(cluster.status_json()["nodes"].as_array().unwrap().len(), 1);
}

#[test]
fn cluster_garbage_on_the_gcs_port_does_not_disturb_it() {
    let mut cluster = TestCluster::start(1);

    phase("send garbage, an HTTP request, a huge length prefix and a bad msgpack body");
    let garbage: [&[u8]; 4] = [
        b"\x00\x01\x02 hello garbage \xff\xfe",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0x7f, 0xff, 0xff, 0xff, 1, 2],
        &[0, 0, 0, 4, 0xc1, 0xc1, 0xc1, 0xc1],
    ];
    for bytes in garbage {
        let mut socket = TcpStream::connect(&cluster.address).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        socket.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer); // refused and closed, never hung
    }
    phase("a socket that connects and says nothing is closed by the handshake timeout, not kept");
    let idle = TcpStream::connect(&cluster.address).unwrap();

    phase("the cluster still answers and still accepts nodes");
    assert_eq!(cluster.nodes_in_state("ALIVE").len(), 2);
    cluster.add_node(&[]);
    cluster.wait_for_alive(3);
    assert!(cluster.nodes_in_state("DEAD").is_empty());
    drop(idle);

    phase("garbage to a node's own port is refused too");
    let node_address = cluster.node_by_pid(cluster.nodes[0].pid).unwrap()["address"].as_str().unwrap().to_string();
    let mut socket = TcpStream::connect(&node_address).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    socket.write_all(b"\xde\xad\xbe\xef garbage").unwrap();
    let _ = socket.read_to_end(&mut Vec::new());
    assert_eq!(cluster.nodes_in_state("ALIVE").len(), 3);
}

#[test]
fn cluster_bad_flags_exit_2_naming_the_flag() {
    let temp = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (vec!["start", "--head", "--resources", "{not json"], "--resources"),
        (vec!["start", "--head", "--resources", r#"{"disk": -1}"#], "--resources"),
        (vec!["start", "--head", "--num-cpus", "-2"], "--num-cpus"),
        (vec!["start", "--head", "--labels", "novalue"], "--labels"),
    ] {
        let output = manta_command(temp.path(), &args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    let output = manta_command(temp.path(), &["start"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--head"));
}

#[test]
fn cluster_unreachable_seeds_and_busy_port() {
    let cluster = TestCluster::start(0);

    phase("no seed reachable: retries until --connect-timeout, then exits 1 naming every address");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_address = dead.local_addr().unwrap().to_string();
    drop(dead);
    let seeds = format!("{dead_address},127.0.0.1:1");
    let output = cluster.manta(&["start", "--address", &seeds, "--connect-timeout", "1", "--block"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&dead_address) && stderr.contains("127.0.0.1:1"), "{stderr}");

    phase("a later seed that answers is used");
    let seeds = format!("{dead_address},{}", cluster.address);
    let output = cluster.manta(&["start", "--address", &seeds]);
    let _guard = manta_integration::DaemonGuard(cluster.temp_dir().to_path_buf());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    cluster.wait_for_alive(2);

    phase("a port in use is named");
    let port = cluster.address.rsplit(':').next().unwrap();
    let other = tempfile::tempdir().unwrap();
    let output = manta_command(other.path(), &["start", "--head", "--port", port, "--block"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("port {port} is already in use")), "{stderr}");
}
