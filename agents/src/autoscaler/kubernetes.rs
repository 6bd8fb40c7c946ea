//! The `kubernetes` node provider: one worker pod per node, made from the node
//! type's `node_config` (a pod template: `metadata` and `spec`, as in a
//! KubeRay worker group), labelled with the cluster, type and instance id.
//!
//! The pod runs `manta start --address <gcs> --block` with the type's
//! resources, its pod IP as node address, and the token from a Kubernetes
//! Secret mounted as a file (`--token-file`), never in the manifest, argv or
//! environment. `restartPolicy: Never`: a node that exits is gone, and the
//! autoscaler decides whether to replace it.
//!
//! What is sent and how answers are read is pure ([`create_request`],
//! [`list_request`], [`delete_request`], [`parse_pods`]), tested here against
//! recorded API server exchanges. The transport is [`KubeApi`]; the `k8s`
//! cargo feature provides it with the `kube` crate (in-cluster config or
//! kubeconfig), kept out of the default build for its size.

use std::sync::Arc;

use manta_proto::autoscaler::{INSTANCE_LABEL, NODE_TYPE_LABEL};
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::{ClusterConfig, ResolvedType};
use super::provider::{Instance, InstanceState, NodeProvider, ProviderFuture, instance_id, start_arguments};

/// Label naming the cluster a pod belongs to.
pub const CLUSTER_LABEL: &str = "manta.io/cluster";
/// Where the token Secret is mounted in a pod.
pub const TOKEN_DIR: &str = "/var/run/manta";

/// The `provider:` settings of a `kubernetes` config.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeSettings {
    /// The namespace pods are made in.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The Secret holding the cluster token under the key `token`.
    #[serde(default = "default_secret")]
    pub token_secret: String,
    /// The `manta` executable in the pod's image.
    #[serde(default = "default_command")]
    pub command: String,
}

fn default_namespace() -> String {
    "default".into()
}
fn default_secret() -> String {
    "manta-token".into()
}
fn default_command() -> String {
    "manta".into()
}

impl KubeSettings {
    /// Reads the provider settings (every field but `type`).
    pub fn from_config(config: &ClusterConfig) -> Result<KubeSettings, String> {
        let settings: serde_json::Map<String, Value> = config.provider.settings.clone().into_iter().collect();
        serde_json::from_value(Value::Object(settings))
            .map_err(|error| format!("the autoscaling config's provider (kubernetes) is not valid: {error}"))
    }
}

/// One request to the API server.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiRequest {
    /// `GET`, `POST` or `DELETE`.
    pub method: &'static str,
    /// Path and query.
    pub path: String,
    /// JSON body.
    pub body: Option<Value>,
}

/// Sends requests to the API server and returns the JSON answer (an error for
/// a status outside 2xx, with the server's message).
pub trait KubeApi: Send + Sync + 'static {
    /// One exchange.
    fn send(&self, request: ApiRequest) -> ProviderFuture<'_, Value>;
}

/// The pod for one node.
pub fn pod_manifest(
    cluster_name: &str,
    node_type: &str,
    instance_id: &str,
    spec: &ResolvedType,
    gcs_address: &str,
    settings: &KubeSettings,
) -> Result<Value, String> {
    let field = format!("available_node_types.{node_type}.node_config");
    let mut pod = match &spec.node_config {
        Value::Object(template) => Value::Object(template.clone()),
        _ => return Err(format!("{field} must be a pod template (metadata and spec) for the kubernetes provider")),
    };
    let containers = pod
        .pointer_mut("/spec/containers")
        .and_then(Value::as_array_mut)
        .filter(|containers| !containers.is_empty())
        .ok_or_else(|| format!("{field}.spec.containers must list the container that runs manta"))?;
    let container = containers[0].as_object_mut().ok_or_else(|| format!("{field}.spec.containers[0] is not a map"))?;
    let mut command = vec![settings.command.clone(), "start".into()];
    command.extend(start_arguments(gcs_address, node_type, instance_id, spec));
    command.extend([
        "--node-ip-address".into(),
        "$(MANTA_POD_IP)".into(),
        "--token-file".into(),
        format!("{TOKEN_DIR}/token"),
    ]);
    container.insert("command".into(), json!(command));
    let env = container.entry("env").or_insert_with(|| json!([]));
    if let Some(env) = env.as_array_mut() {
        env.push(json!({"name": "MANTA_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}));
    }
    if !container.contains_key("resources") {
        let mut limits = serde_json::Map::new();
        let amount = |name: &str| spec.resources.get(name).copied().filter(|amount| *amount > 0.0);
        if let Some(cpus) = amount("CPU") {
            limits.insert("cpu".into(), json!(format!("{}m", (cpus * 1000.0).round() as u64)));
        }
        if let Some(bytes) = amount("memory") {
            limits.insert("memory".into(), json!(format!("{}", bytes as u64)));
        }
        if let Some(gpus) = amount("GPU") {
            limits.insert("nvidia.com/gpu".into(), json!(gpus.ceil() as u64));
        }
        if !limits.is_empty() {
            container.insert("resources".into(), json!({"requests": limits.clone(), "limits": limits}));
        }
    }
    let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
    if let Some(mounts) = mounts.as_array_mut() {
        mounts.push(json!({"name": "manta-token", "mountPath": TOKEN_DIR, "readOnly": true}));
    }
    let object = pod.as_object_mut().expect("checked above");
    object.insert("apiVersion".into(), json!("v1"));
    object.insert("kind".into(), json!("Pod"));
    let metadata = object.entry("metadata").or_insert_with(|| json!({}));
    let metadata = metadata.as_object_mut().ok_or_else(|| format!("{field}.metadata is not a map"))?;
    metadata.insert("name".into(), json!(instance_id));
    let labels = metadata.entry("labels").or_insert_with(|| json!({}));
    let labels = labels.as_object_mut().ok_or_else(|| format!("{field}.metadata.labels is not a map"))?;
    labels.insert(CLUSTER_LABEL.into(), json!(cluster_name));
    labels.insert(NODE_TYPE_LABEL.into(), json!(node_type));
    labels.insert(INSTANCE_LABEL.into(), json!(instance_id));
    let pod_spec = object.get_mut("spec").and_then(Value::as_object_mut).expect("checked above");
    pod_spec.insert("restartPolicy".into(), json!("Never"));
    let volumes = pod_spec.entry("volumes").or_insert_with(|| json!([]));
    if let Some(volumes) = volumes.as_array_mut() {
        volumes.push(json!({
            "name": "manta-token",
            "secret": {"secretName": settings.token_secret, "defaultMode": 0o400},
        }));
    }
    Ok(pod)
}

/// Creates a pod.
pub fn create_request(settings: &KubeSettings, pod: Value) -> ApiRequest {
    ApiRequest { method: "POST", path: format!("/api/v1/namespaces/{}/pods", settings.namespace), body: Some(pod) }
}

/// Deletes a pod.
pub fn delete_request(settings: &KubeSettings, instance_id: &str) -> ApiRequest {
    ApiRequest {
        method: "DELETE",
        path: format!("/api/v1/namespaces/{}/pods/{instance_id}", settings.namespace),
        body: None,
    }
}

/// Lists the cluster's pods.
pub fn list_request(settings: &KubeSettings, cluster_name: &str) -> ApiRequest {
    let selector: String =
        form_urlencoded::byte_serialize(format!("{CLUSTER_LABEL}={cluster_name}").as_bytes()).collect();
    ApiRequest {
        method: "GET",
        path: format!("/api/v1/namespaces/{}/pods?labelSelector={selector}", settings.namespace),
        body: None,
    }
}

/// The instances in a pod list. A pod being deleted is `Terminating`; one whose
/// process ended (`Succeeded`, `Failed`) too, and is deleted by the provider.
pub fn parse_pods(list: &Value) -> Result<Vec<Instance>, String> {
    let items = list.get("items").and_then(Value::as_array).ok_or("the pod list has no items")?;
    let mut instances = Vec::with_capacity(items.len());
    for pod in items {
        let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |key: &str| labels.and_then(|labels| labels.get(key)).and_then(Value::as_str);
        let (Some(id), Some(node_type)) = (label(INSTANCE_LABEL), label(NODE_TYPE_LABEL)) else { continue };
        let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
        let deleting = pod.pointer("/metadata/deletionTimestamp").is_some_and(|stamp| !stamp.is_null());
        let state = match phase {
            _ if deleting => InstanceState::Terminating,
            "Succeeded" | "Failed" => InstanceState::Terminating,
            "Running" => InstanceState::Running,
            _ => InstanceState::Starting,
        };
        instances.push(Instance { id: id.to_string(), node_type: node_type.to_string(), state });
    }
    Ok(instances)
}

/// Pods whose process ended without being deleted (to delete).
fn ended(list: &Value) -> Vec<String> {
    list.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|pod| {
            matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
                && pod.pointer("/metadata/deletionTimestamp").is_none_or(Value::is_null)
        })
        .filter_map(|pod| pod.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The kubernetes provider over any transport.
pub struct KubernetesProvider<A: KubeApi> {
    api: A,
    settings: KubeSettings,
    cluster_name: String,
    gcs_address: String,
}

impl<A: KubeApi> KubernetesProvider<A> {
    /// A provider making pods through `api`.
    pub fn new(api: A, settings: KubeSettings, cluster_name: String, gcs_address: String) -> Self {
        KubernetesProvider { api, settings, cluster_name, gcs_address }
    }
}

impl<A: KubeApi> NodeProvider for KubernetesProvider<A> {
    fn create<'a>(
        &'a self,
        node_type: &'a str,
        spec: &'a ResolvedType,
        count: usize,
    ) -> ProviderFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                let id = instance_id(&self.cluster_name, node_type);
                let pod = pod_manifest(&self.cluster_name, node_type, &id, spec, &self.gcs_address, &self.settings)?;
                match self.api.send(create_request(&self.settings, pod)).await {
                    Ok(_) => ids.push(id),
                    Err(error) if ids.is_empty() => return Err(error),
                    Err(error) => {
                        tracing::warn!(%error, started = ids.len(), "some pods were not created");
                        break;
                    }
                }
            }
            Ok(ids)
        })
    }

    fn terminate<'a>(&'a self, instance_id: &'a str) -> ProviderFuture<'a, ()> {
        Box::pin(async move { self.api.send(delete_request(&self.settings, instance_id)).await.map(drop) })
    }

    fn list(&self) -> ProviderFuture<'_, Vec<Instance>> {
        Box::pin(async move {
            let list = self.api.send(list_request(&self.settings, &self.cluster_name)).await?;
            for name in ended(&list) {
                if let Err(error) = self.api.send(delete_request(&self.settings, &name)).await {
                    tracing::warn!(%error, pod = %name, "could not delete an ended pod");
                }
            }
            parse_pods(&list)
        })
    }
}

/// The kubernetes provider for `config`: with the `k8s` feature, over the
/// `kube` client; without it, an error that says how to build it.
pub fn provider(config: &ClusterConfig, gcs_address: &str) -> Result<Arc<dyn NodeProvider>, String> {
    let settings = KubeSettings::from_config(config)?;
    for (name, kind) in &config.available_node_types {
        if name != &config.head_node_type {
            // Refused at start, naming the field, rather than at the first launch.
            pod_manifest(&config.cluster_name, name, "check", kind, gcs_address, &settings)?;
        }
    }
    #[cfg(feature = "k8s")]
    {
        let api = client::KubeClient::new()?;
        Ok(Arc::new(KubernetesProvider::new(api, settings, config.cluster_name.clone(), gcs_address.to_string())))
    }
    #[cfg(not(feature = "k8s"))]
    {
        let _ = settings;
        Err("this manta was built without Kubernetes support; build it with `cargo build --release --features \
             manta-agents/k8s` to use provider.type kubernetes"
            .into())
    }
}

#[cfg(feature = "k8s")]
mod client;

#[cfg(test)]
#[path = "kubernetes_tests.rs"]
mod tests;
