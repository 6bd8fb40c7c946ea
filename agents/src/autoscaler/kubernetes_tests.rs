//! The kubernetes provider against recorded API server exchanges: the pod it
//! asks for, the paths it calls, and how it reads real answers.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::*;

const CONFIG: &str = r#"
cluster_name: demo
head_node_type: head
max_workers: 4
provider: {type: kubernetes, namespace: ml, token_secret: demo-token}
available_node_types:
  head: {resources: {CPU: 0}, max_workers: 0}
  beta:
    resources: {CPU: 2, beta: 1}
    labels: {zone: b}
    node_config:
      metadata: {labels: {team: ml}}
      spec:
        containers:
          - name: manta
            image: registry.local/manta:0.1
"#;

/// A pod list as an API server (v1.31) answered it, trimmed to the fields read.
const RECORDED_LIST: &str = r#"{
  "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "48121"},
  "items": [
    {"metadata": {"name": "demo-beta-0a1b2c3d", "namespace": "ml",
                  "labels": {"manta.io/cluster": "demo", "manta.io/node-type": "beta",
                             "manta.io/instance-id": "demo-beta-0a1b2c3d", "team": "ml"}},
     "status": {"phase": "Running", "podIP": "10.42.0.17"}},
    {"metadata": {"name": "demo-beta-11112222", "namespace": "ml",
                  "labels": {"manta.io/cluster": "demo", "manta.io/node-type": "beta",
                             "manta.io/instance-id": "demo-beta-11112222"}},
     "status": {"phase": "Pending"}},
    {"metadata": {"name": "demo-beta-33334444", "namespace": "ml", "deletionTimestamp": "2026-12-05T10:00:00Z",
                  "labels": {"manta.io/cluster": "demo", "manta.io/node-type": "beta",
                             "manta.io/instance-id": "demo-beta-33334444"}},
     "status": {"phase": "Running"}},
    {"metadata": {"name": "demo-beta-55556666", "namespace": "ml",
                  "labels": {"manta.io/cluster": "demo", "manta.io/node-type": "beta",
                             "manta.io/instance-id": "demo-beta-55556666"}},
     "status": {"phase": "Failed", "reason": "Evicted"}}
  ]
}"#;

/// An API server's answer to a pod that could not be made.
const RECORDED_FORBIDDEN: &str = r#"{"kind": "Status", "apiVersion": "v1", "status": "Failure",
  "message": "pods is forbidden: User \"system:serviceaccount:ml:manta\" cannot create resource \"pods\"",
  "reason": "Forbidden", "code": 403}"#;

/// Replays recorded answers in order, keeping what was sent.
struct Replay {
    answers: Mutex<VecDeque<Result<Value, String>>>,
    sent: Mutex<Vec<ApiRequest>>,
}

impl Replay {
    fn new(answers: Vec<Result<Value, String>>) -> Self {
        Replay { answers: Mutex::new(answers.into()), sent: Mutex::new(Vec::new()) }
    }
}

impl KubeApi for &'static Replay {
    fn send(&self, request: ApiRequest) -> ProviderFuture<'_, Value> {
        self.sent.lock().unwrap().push(request);
        let answer = self.answers.lock().unwrap().pop_front().expect("an answer was recorded for every request");
        Box::pin(async move { answer })
    }
}

fn config() -> ClusterConfig {
    ClusterConfig::from_yaml(CONFIG).unwrap()
}

fn provider(replay: &'static Replay) -> KubernetesProvider<&'static Replay> {
    let config = config();
    let settings = KubeSettings::from_config(&config).unwrap();
    KubernetesProvider::new(replay, settings, "demo".into(), "10.0.0.5:6379".into())
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
}

#[test]
fn the_pod_carries_the_template_the_labels_and_a_token_file() {
    let config = config();
    let settings = KubeSettings::from_config(&config).unwrap();
    let pod = pod_manifest(
        "demo",
        "beta",
        "demo-beta-0a1b2c3d",
        &config.available_node_types["beta"],
        "10.0.0.5:6379",
        &settings,
    )
    .unwrap();
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["name"], "demo-beta-0a1b2c3d");
    assert_eq!(pod["metadata"]["labels"]["team"], "ml", "the template's labels stay");
    assert_eq!(pod["metadata"]["labels"][CLUSTER_LABEL], "demo");
    assert_eq!(pod["metadata"]["labels"][INSTANCE_LABEL], "demo-beta-0a1b2c3d");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.local/manta:0.1");
    let command: Vec<&str> = container["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let command = command.join(" ");
    assert!(command.starts_with("manta start --address 10.0.0.5:6379 --block --num-cpus 2"), "{command}");
    assert!(command.contains("--resources {\"beta\":1.0} --labels zone=b --autoscaled-as beta/demo-beta-0a1b2c3d"));
    assert!(command.ends_with("--node-ip-address $(MANTA_POD_IP) --token-file /var/run/manta/token"));
    assert_eq!(container["resources"]["limits"]["cpu"], "2000m");
    assert_eq!(pod["spec"]["volumes"][0]["secret"]["secretName"], "demo-token");
    let text = pod.to_string();
    assert!(!text.contains("MANTA_TOKEN"), "the token is a mounted file, not an environment variable");
}

#[test]
fn a_type_without_a_pod_template_is_refused_naming_the_field() {
    let mut config = config();
    config.available_node_types.get_mut("beta").unwrap().node_config = Value::Null;
    let error = provider_check(&config);
    assert!(error.contains("available_node_types.beta.node_config"), "{error}");
    let mut config = self::config();
    config.provider.settings.insert("namespce".into(), json!("x"));
    assert!(provider_check(&config).contains("namespce"));
}

fn provider_check(config: &ClusterConfig) -> String {
    match super::provider(config, "10.0.0.5:6379") {
        Ok(_) => String::new(),
        Err(error) => error,
    }
}

#[test]
fn create_posts_one_pod_per_node_and_reports_a_refusal() {
    let replay: &'static Replay = Box::leak(Box::new(Replay::new(vec![
        Ok(json!({"kind": "Pod", "metadata": {"name": "x"}})),
        Ok(json!({"kind": "Pod", "metadata": {"name": "y"}})),
        Err(format!("403: {}", serde_json::from_str::<Value>(RECORDED_FORBIDDEN).unwrap()["message"])),
    ])));
    let provider = provider(replay);
    let spec = config().available_node_types["beta"].clone();
    let ids = block_on(provider.create("beta", &spec, 2)).unwrap();
    assert_eq!(ids.len(), 2);
    let sent = replay.sent.lock().unwrap().clone();
    assert!(sent.iter().all(|request| request.method == "POST" && request.path == "/api/v1/namespaces/ml/pods"));
    let names: Vec<&str> =
        sent.iter().map(|request| request.body.as_ref().unwrap()["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let error = block_on(provider.create("beta", &spec, 1)).unwrap_err();
    assert!(error.contains("forbidden"), "{error}");
}

#[test]
fn list_reads_phases_and_deletes_ended_pods() {
    let replay: &'static Replay = Box::leak(Box::new(Replay::new(vec![
        Ok(serde_json::from_str(RECORDED_LIST).unwrap()),
        Ok(json!({"kind": "Pod"})),
    ])));
    let instances = block_on(provider(replay).list()).unwrap();
    let states: Vec<(&str, InstanceState)> =
        instances.iter().map(|instance| (instance.id.as_str(), instance.state)).collect();
    assert_eq!(
        states,
        vec![
            ("demo-beta-0a1b2c3d", InstanceState::Running),
            ("demo-beta-11112222", InstanceState::Starting),
            ("demo-beta-33334444", InstanceState::Terminating),
            ("demo-beta-55556666", InstanceState::Terminating),
        ]
    );
    let sent = replay.sent.lock().unwrap().clone();
    assert_eq!(sent[0].method, "GET");
    assert_eq!(sent[0].path, "/api/v1/namespaces/ml/pods?labelSelector=manta.io%2Fcluster%3Ddemo");
    assert_eq!((sent[1].method, sent[1].path.as_str()), ("DELETE", "/api/v1/namespaces/ml/pods/demo-beta-55556666"));
}

#[test]
fn terminate_deletes_the_pod() {
    let replay: &'static Replay = Box::leak(Box::new(Replay::new(vec![Ok(json!({"kind": "Pod"}))])));
    block_on(provider(replay).terminate("demo-beta-0a1b2c3d")).unwrap();
    let sent = replay.sent.lock().unwrap().clone();
    assert_eq!(sent, vec![delete_request(&KubeSettings::from_config(&config()).unwrap(), "demo-beta-0a1b2c3d")]);
}
