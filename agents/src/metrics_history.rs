//! The last hour of the cluster's built-in metrics, kept by the head for the
//! dashboard's charts, so no Prometheus is needed to see them.
//!
//! [`MetricsSampler`] is a supervised actor on the head. Every [`INTERVAL`] it
//! reads the GCS (nodes with their resources, task and actor counts) and each
//! alive node's own `/metrics` (CPU and memory use, object store bytes), and
//! appends one [`Sample`] to the shared [`MetricsHistory`]: a ring of
//! [`KEEP`] samples, a few KiB each, so the hour costs well under 10 MiB even
//! with many nodes. The ring is shared with the HTTP server, which only reads
//! it, and survives a restart of the sampler.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manta_proto::NodeId;
use manta_proto::client::GcsClient;
use manta_proto::gcs::GetAllNodesRequest;
use manta_proto::node::NodeState;
use manta_proto::task::{ListStateRequest, StateTable};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;

/// How often the head samples.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: one hour.
pub const KEEP: usize = 720;

/// One node's use, read from its `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeUsage {
    /// CPU busy, percent of the machine.
    pub cpu_percent: Option<f64>,
    /// Memory in use, bytes.
    pub mem_used: Option<f64>,
    /// Memory in all, bytes.
    pub mem_total: Option<f64>,
    /// Object store bytes in use.
    pub object_store_used: Option<f64>,
}

/// The cluster at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Logical resources in all, over alive nodes (`CPU`, `GPU`, `memory`, ...).
    pub resources_total: BTreeMap<String, f64>,
    /// Logical resources in use.
    pub resources_used: BTreeMap<String, f64>,
    /// Alive nodes.
    pub nodes_alive: usize,
    /// Dead nodes still listed.
    pub nodes_dead: usize,
    /// Tasks ever finished or failed (its rate is throughput).
    pub tasks_completed_total: u64,
    /// Tasks per state in the history.
    pub tasks_by_state: BTreeMap<String, usize>,
    /// Actors per state.
    pub actors_by_state: BTreeMap<String, usize>,
    /// Each alive node's use.
    pub nodes: BTreeMap<NodeId, NodeUsage>,
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct MetricsHistory {
    samples: VecDeque<Sample>,
}

impl MetricsHistory {
    /// Appends a sample, dropping the oldest past [`KEEP`].
    pub fn push(&mut self, sample: Sample) {
        self.samples.push_back(sample);
        while self.samples.len() > KEEP {
            self.samples.pop_front();
        }
    }

    /// Oldest first.
    pub fn samples(&self) -> impl DoubleEndedIterator<Item = &Sample> + ExactSizeIterator {
        self.samples.iter()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Tasks completed per second between consecutive samples: `(time_ms, rate)`.
    pub fn throughput(&self) -> Vec<(u64, f64)> {
        let pairs = self.samples.iter().zip(self.samples.iter().skip(1));
        pairs
            .map(|(before, after)| {
                let seconds = after.time_ms.saturating_sub(before.time_ms) as f64 / 1000.0;
                let done = after.tasks_completed_total.saturating_sub(before.tasks_completed_total) as f64;
                (after.time_ms, if seconds > 0.0 { done / seconds } else { 0.0 })
            })
            .collect()
    }
}

/// Reads one gauge from Prometheus text: the first line named `name` whose
/// labels contain `label` (e.g. `State="USED"`; empty: any).
pub fn gauge(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once('}')?,
            None if rest.starts_with(' ') => ("", rest),
            None => return None,
        };
        if !labels.contains(label) {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Parses a node's `/metrics` into its use.
pub fn node_usage(text: &str) -> NodeUsage {
    NodeUsage {
        cpu_percent: gauge(text, "manta_node_cpu_utilization", ""),
        mem_used: gauge(text, "manta_node_mem_used", ""),
        mem_total: gauge(text, "manta_node_mem_total", ""),
        object_store_used: gauge(text, "manta_object_store_memory", "State=\"USED\""),
    }
}

/// What the sampler needs.
#[derive(Clone)]
pub struct SamplerArgs {
    /// The head's GCS.
    pub gcs: GcsClient,
    /// Where samples go.
    pub history: Arc<Mutex<MetricsHistory>>,
}

/// Samples the cluster every [`INTERVAL`].
#[derive(Debug, Default)]
pub struct MetricsSampler;

/// The sampler's own message.
#[derive(Debug)]
pub struct Tick;

/// The sampler's state.
pub struct SamplerState {
    args: SamplerArgs,
    http: reqwest::Client,
}

impl Actor for MetricsSampler {
    type Msg = Tick;
    type State = SamplerState;
    type Arguments = SamplerArgs;

    async fn pre_start(&self, myself: ActorRef<Tick>, args: SamplerArgs) -> Result<SamplerState, ActorProcessingErr> {
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
        let _ = myself.cast(Tick);
        Ok(SamplerState { args, http })
    }

    async fn handle(
        &self,
        myself: ActorRef<Tick>,
        _tick: Tick,
        state: &mut SamplerState,
    ) -> Result<(), ActorProcessingErr> {
        // A GCS that does not answer now (a head restarting) skips a sample; the next tick retries.
        if let Ok(sample) = sample(state).await {
            state.args.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(sample);
        }
        myself.send_after(INTERVAL, || Tick);
        Ok(())
    }
}

async fn sample(state: &SamplerState) -> Result<Sample, manta_proto::net::CallError> {
    let gcs = &state.args.gcs;
    let nodes = gcs.call(GetAllNodesRequest {}).await?.nodes;
    let tasks = gcs.call(ListStateRequest::newest(StateTable::Tasks, 0)).await?;
    let actors = gcs.call(ListStateRequest::newest(StateTable::Actors, 0)).await?;
    let mut sample = Sample {
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or_default(),
        tasks_completed_total: tasks.completed_total,
        tasks_by_state: tasks.counts,
        actors_by_state: actors.counts,
        ..Sample::default()
    };
    for node in &nodes {
        if node.state != NodeState::Alive {
            sample.nodes_dead += 1;
            continue;
        }
        sample.nodes_alive += 1;
        let available = node.resources_available.to_f64_map();
        for (name, total) in node.resources_total.to_f64_map() {
            let free = available.get(&name).copied().unwrap_or_default();
            *sample.resources_used.entry(name.clone()).or_default() += (total - free).max(0.0);
            *sample.resources_total.entry(name).or_default() += total;
        }
        let usage = match &node.metrics_address {
            Some(address) => match state.http.get(format!("http://{address}/metrics")).send().await {
                Ok(response) => response.text().await.map(|text| node_usage(&text)).unwrap_or_default(),
                Err(_) => NodeUsage::default(),
            },
            None => NodeUsage::default(),
        };
        sample.nodes.insert(node.node_id, usage);
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read_by_name_and_label() {
        let text = "# HELP manta_node_cpu_utilization cpu\n\
                    manta_node_cpu_utilization{NodeId=\"ab\"} 12.5\n\
                    manta_node_cpu_utilization_other 99\n\
                    manta_node_mem_used 1000\n\
                    manta_object_store_memory{State=\"AVAILABLE\"} 7\n\
                    manta_object_store_memory{State=\"USED\"} 3e3\n";
        let usage = node_usage(text);
        assert_eq!(usage.cpu_percent, Some(12.5));
        assert_eq!(usage.mem_used, Some(1000.0));
        assert_eq!(usage.mem_total, None);
        assert_eq!(usage.object_store_used, Some(3000.0));
        assert_eq!(gauge("garbage {{{", "garbage", ""), None);
    }

    #[test]
    fn the_ring_keeps_an_hour_and_rates_come_from_deltas() {
        let mut history = MetricsHistory::default();
        for index in 0..(KEEP as u64 + 5) {
            history.push(Sample { time_ms: index * 5000, tasks_completed_total: index * 50, ..Sample::default() });
        }
        assert_eq!(history.samples().len(), KEEP);
        assert_eq!(history.samples().next().unwrap().time_ms, 5 * 5000);
        let rates = history.throughput();
        assert_eq!(rates.len(), KEEP - 1);
        assert!(rates.iter().all(|(_, rate)| (*rate - 10.0).abs() < 1e-9), "{rates:?}");
    }
}
