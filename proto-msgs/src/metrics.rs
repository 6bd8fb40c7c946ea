//! Metrics a worker or driver pushes to its node's metrics agent: the current
//! value of each user metric series, sent in batches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{JobId, WorkerId};

/// What kind of series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetricKind {
    /// Only goes up; rendered `manta_<name>_total`.
    Counter,
    /// Set to any value.
    Gauge,
    /// Observations counted into buckets with these upper bounds.
    Histogram {
        /// Upper bounds, increasing (`+Inf` is implied).
        boundaries: Vec<f64>,
    },
}

/// One series: a metric with one set of tag values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    /// The user's name (without the `manta_` prefix).
    pub name: String,
    /// Its help text.
    pub description: String,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Tag keys and values.
    pub tags: BTreeMap<String, String>,
    /// A counter's total, or a gauge's value; a histogram's sum.
    pub value: f64,
    /// A histogram's count per bucket (one more than `boundaries`, the last is `+Inf`).
    #[serde(default)]
    pub buckets: Vec<u64>,
}

/// Worker or driver to its node: the current value of every series it records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsReportEvent {
    /// Who reports.
    pub worker_id: WorkerId,
    /// Its job.
    pub job_id: JobId,
    /// `driver`, `worker`, or the actor's type.
    pub component: String,
    /// Every series it has.
    pub samples: Vec<MetricSample>,
}
