//! The node provider interface: what the autoscaler asks of whoever starts and
//! stops machines (Ray's `NodeProvider`, reference §7.6, cut to what the
//! planner needs). Two implementations: [`super::local`] (processes on this
//! machine) and [`super::kubernetes`] (worker pods).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use manta_proto::autoscaler::{INSTANCE_LABEL, NODE_TYPE_LABEL};

use super::config::ResolvedType;

/// What a provider call returns.
pub type ProviderFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Where an instance is in its life, as the provider sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// Created; its process or pod is starting.
    Starting,
    /// Its process or pod runs (it joins the cluster by itself).
    Running,
    /// Being stopped.
    Terminating,
}

impl InstanceState {
    /// The tag value (`manta.io/node-status`).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Terminating => "terminating",
        }
    }
}

/// One machine (process, pod) the provider started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The provider's id; the node carries it as its `manta.io/instance-id` label.
    pub id: String,
    /// Its node type.
    pub node_type: String,
    /// Where it is in its life.
    pub state: InstanceState,
}

impl Instance {
    /// Its tags, as Ray's providers keep them: type and status.
    pub fn tags(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            (NODE_TYPE_LABEL, self.node_type.clone()),
            (INSTANCE_LABEL, self.id.clone()),
            ("manta.io/node-status", self.state.as_str().to_string()),
        ])
    }
}

/// Starts, stops and lists the machines of a cluster.
pub trait NodeProvider: Send + Sync + 'static {
    /// Starts `count` nodes of `node_type`; returns their ids. The nodes join
    /// the cluster by themselves, labelled with their type and id.
    fn create<'a>(
        &'a self,
        node_type: &'a str,
        spec: &'a ResolvedType,
        count: usize,
    ) -> ProviderFuture<'a, Vec<String>>;

    /// Stops one node (drained first by the caller).
    fn terminate<'a>(&'a self, instance_id: &'a str) -> ProviderFuture<'a, ()>;

    /// The nodes this provider started that still exist.
    fn list(&self) -> ProviderFuture<'_, Vec<Instance>>;
}

/// A fresh instance id: `<cluster>-<type>-<8 hex digits>`, kept to what both a
/// Kubernetes pod name and a label value accept.
pub fn instance_id(cluster_name: &str, node_type: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect::<String>()
            .trim_matches('-')
            .to_string()
    };
    let mut prefix = format!("{}-{}", clean(cluster_name), clean(node_type));
    prefix.truncate(50);
    format!("{}-{:08x}", prefix.trim_end_matches('-'), rand::random::<u32>())
}

/// The `manta start` arguments (after `start`) of a node of `node_type`: its
/// resources as flags (CPU and GPU 0 unless the type gives them, so a node never
/// claims the whole machine), and its type and id as labels.
pub fn start_arguments(gcs_address: &str, node_type: &str, instance_id: &str, spec: &ResolvedType) -> Vec<String> {
    let mut args = vec!["--address".to_string(), gcs_address.to_string(), "--block".to_string()];
    let amount = |name: &str| spec.resources.get(name).copied().unwrap_or_default();
    args.extend(["--num-cpus".into(), amount("CPU").to_string(), "--num-gpus".into(), amount("GPU").to_string()]);
    for (name, flag) in [("memory", "--memory"), ("object_store_memory", "--object-store-memory")] {
        if let Some(bytes) = spec.resources.get(name) {
            args.extend([flag.to_string(), (*bytes as u64).to_string()]);
        }
    }
    let custom: BTreeMap<&String, &f64> = spec
        .resources
        .iter()
        .filter(|(name, _)| !["CPU", "GPU", "memory", "object_store_memory"].contains(&name.as_str()))
        .collect();
    if !custom.is_empty() {
        args.extend(["--resources".into(), serde_json::to_string(&custom).unwrap_or_default()]);
    }
    if !spec.labels.is_empty() {
        let labels: Vec<String> = spec.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
        args.extend(["--labels".into(), labels.join(",")]);
    }
    args.extend(["--autoscaled-as".into(), format!("{node_type}/{instance_id}")]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_becomes_start_flags() {
        let spec = ResolvedType {
            resources: [("CPU".to_string(), 2.0), ("beta".to_string(), 1.0), ("memory".to_string(), 1e9)]
                .into_iter()
                .collect(),
            labels: [("zone".to_string(), "a".to_string())].into_iter().collect(),
            min_workers: 0,
            max_workers: 3,
            node_config: serde_json::Value::Null,
        };
        let args = start_arguments("127.0.0.1:6379", "b", "c-b-1", &spec).join(" ");
        assert_eq!(
            args,
            "--address 127.0.0.1:6379 --block --num-cpus 2 --num-gpus 0 --memory 1000000000 \
             --resources {\"beta\":1.0} --labels zone=a --autoscaled-as b/c-b-1"
        );
    }

    #[test]
    fn ids_fit_pod_names_and_label_values() {
        let id = instance_id("My Cluster", "gpu_type.large");
        assert!(id.starts_with("my-cluster-gpu-type-large-"), "{id}");
        assert!(id.len() <= 63 && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        let long = instance_id(&"x".repeat(100), "t");
        assert!(long.len() <= 63, "{long}");
        assert_ne!(instance_id("a", "b"), instance_id("a", "b"));
    }

    #[test]
    fn tags_name_type_and_status() {
        let instance = Instance { id: "c-b-1".into(), node_type: "b".into(), state: InstanceState::Running };
        let tags = instance.tags();
        assert_eq!(tags[NODE_TYPE_LABEL], "b");
        assert_eq!(tags["manta.io/node-status"], "running");
    }
}
