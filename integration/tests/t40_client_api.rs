//! The `manta` crate's cluster client against a real cluster.

use manta_integration::{TestCluster, phase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_client_reads_nodes_and_uses_the_kv() {
    let cluster =
        tokio::task::spawn_blocking(|| TestCluster::start_with(&["--num-cpus", "2"], &[vec!["--num-cpus", "3"]]))
            .await
            .unwrap();
    let options =
        manta::ConnectOptions { address: None, token: None, temp_dir: Some(cluster.temp_dir().to_path_buf()) };

    phase("connect through the session folder and read the node table");
    let client = manta::Cluster::connect(options.clone()).await.unwrap();
    let nodes = client.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    let resources = client.cluster_resources().await.unwrap();
    assert_eq!(resources.get("CPU"), manta::Quantity::from_whole(5));

    phase("the internal KV round-trips, with namespaces and prefixes");
    assert!(client.kv_put("jobs", "job:1", "one", false).await.unwrap());
    assert!(!client.kv_put("jobs", "job:1", "uno", false).await.unwrap());
    assert_eq!(client.kv_get("jobs", "job:1").await.unwrap().unwrap(), "one");
    client.kv_put("jobs", "job:2", "two", false).await.unwrap();
    assert_eq!(client.kv_keys("jobs", "job:").await.unwrap(), vec!["job:1", "job:2"]);
    assert!(client.kv_get("other", "job:1").await.unwrap().is_none());
    assert_eq!(client.kv_del("jobs", "job:", true).await.unwrap(), 2);

    phase("a wrong token is refused with a clear error");
    let wrong = manta::ConnectOptions { token: Some("wrong".into()), ..options };
    let error = manta::Cluster::connect(wrong).await.unwrap_err();
    assert!(error.to_string().contains("authentication failed"), "{error}");
    drop(cluster);
}
