//! Metrics on real processes: a real Prometheus server (Debian's `prometheus`)
//! reads the head's service-discovery file, scrapes every node's `/metrics`,
//! and answers queries for a user counter incremented by tasks, the built-in
//! `manta_tasks` by state, and the nodes' resources.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use manta_integration::{InteractiveDriver, TestCluster, phase, wait_until};
use serde_json::Value;

/// A Prometheus server scraping one cluster, killed by pid when dropped.
struct Prometheus {
    child: Option<Child>,
    address: String,
    /// The SD-file link made in a shared server's folder (removed when dropped).
    link: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// The server `.ci/run` started (`MANTA_TEST_PROMETHEUS`, reading the files
    /// in `MANTA_TEST_PROMETHEUS_SD_DIR`), or a new one.
    fn for_cluster(sd_file: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        if let (Ok(address), Ok(sd_dir)) =
            (std::env::var("MANTA_TEST_PROMETHEUS"), std::env::var("MANTA_TEST_PROMETHEUS_SD_DIR"))
        {
            let link = PathBuf::from(sd_dir).join(format!("cluster-{}.json", std::process::id()));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(sd_file, &link).unwrap();
            let server = Prometheus { child: None, address, link: Some(link), _dir: dir };
            wait_until("Prometheus is ready", Duration::from_secs(30), || {
                http_get(&server.address, "/-/ready").is_some()
            });
            return server;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("prometheus.yml");
        let yaml = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: manta\n    file_sd_configs:\n      \
             - files: ['{}']\n        refresh_interval: 1s\n",
            sd_file.display()
        );
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is needed: `apt-get install prometheus`, or set MANTA_TEST_PROMETHEUS");
        let address = format!("127.0.0.1:{port}");
        let server = Prometheus { child: Some(child), address, link: None, _dir: dir };
        wait_until("Prometheus is ready", Duration::from_secs(30), || http_get(&server.address, "/-/ready").is_some());
        server
    }

    /// The result vector of an instant query.
    fn query(&self, expression: &str) -> Vec<Value> {
        let encoded: String = expression
            .bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (byte as char).to_string(),
                _ => format!("%{byte:02X}"),
            })
            .collect();
        let Some(body) = http_get(&self.address, &format!("/api/v1/query?query={encoded}")) else {
            return Vec::new();
        };
        let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        value["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The numbers an instant query returns.
    fn values(&self, expression: &str) -> Vec<f64> {
        self.query(expression).iter().filter_map(|row| row["value"][1].as_str()?.parse().ok()).collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            let _ = std::fs::remove_file(link);
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.0 GET; the body when the status is 200.
fn http_get(address: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

#[test]
fn cluster_metrics_reach_prometheus() {
    let cluster = TestCluster::start(1);
    let sd_file = cluster.temp_dir().join("prom_metrics_service_discovery.json");
    phase("the head lists every node's metrics endpoint in the service-discovery file");
    let status = cluster.status_json();
    let endpoints: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["metrics_address"].as_str().expect("each node has a metrics endpoint").to_string())
        .collect();
    wait_until("the SD file lists both nodes", Duration::from_secs(10), || {
        std::fs::read_to_string(&sd_file).is_ok_and(|text| endpoints.iter().all(|endpoint| text.contains(endpoint)))
    });
    let page = http_get(&endpoints[0], "/metrics").expect("/metrics answers without a token");
    assert!(page.contains("manta_resources"), "{page}");

    phase("a job whose tasks increment a user counter");
    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["metrics"]);
    assert!(driver.read_until("counted"), "{}", driver.stdout);

    phase("Prometheus scrapes both nodes and answers queries");
    let prometheus = Prometheus::for_cluster(&sd_file);
    wait_until("both nodes are up in Prometheus", Duration::from_secs(60), || {
        prometheus.values("up{job=\"manta\"}").iter().filter(|value| **value == 1.0).count() == 2
    });
    wait_until("the user counter adds up to 10", Duration::from_secs(60), || {
        prometheus.values("sum(manta_scenario_tasks_done_total{kind=\"square\"})") == [10.0]
    });
    wait_until("the driver's gauge and histogram", Duration::from_secs(60), || {
        prometheus.values("manta_scenario_driver_gauge") == [42.0]
            && prometheus.values("sum(manta_scenario_sizes_count)") == [3.0]
    });
    wait_until("manta_tasks by state counts the finished tasks", Duration::from_secs(60), || {
        prometheus.values("sum(manta_tasks{State=\"FINISHED\"})").first().is_some_and(|count| *count >= 10.0)
    });
    wait_until("node resources from both nodes", Duration::from_secs(60), || {
        prometheus.query("manta_resources{Name=\"CPU\",State=\"AVAILABLE\"}").len() == 2
    });
    let labels = &prometheus.query("manta_scenario_tasks_done_total")[0]["metric"];
    assert_eq!(labels["Component"], "worker", "{labels}");
    assert!(labels["JobId"].is_string() && labels["NodeId"].is_string(), "{labels}");
    driver.send_line("done");
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
}
