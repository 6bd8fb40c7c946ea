//! User metrics (Ray's `ray.util.metrics`): [`Counter`], [`Gauge`] and
//! [`Histogram`], with tag keys and default tags, usable in drivers, tasks and
//! actors. Each process keeps its series in memory and pushes their current
//! values to its node's metrics agent every second; they appear on the node's
//! `/metrics` as `manta_<name>_total` (counters), `manta_<name>` (gauges) and
//! `manta_<name>_bucket/_sum/_count` (histograms), labelled with their tags,
//! `Component`, `JobId` and `NodeId`.
//!
//! ```no_run
//! let served = manta::metrics::Counter::new("requests", "requests served", &["route"])?
//!     .with_default_tags(&[("route", "/")])?;
//! served.inc()?;
//! served.inc_by(2.0, &[("route", "/health")])?;
//! # Ok::<(), manta::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use manta_proto::message::Event;
use manta_proto::metrics::{MetricKind, MetricSample, MetricsReportEvent};

use crate::core::{Core, Mode};
use crate::error::{Error, Result};

/// How often a process pushes its metrics to its node.
const PUSH_INTERVAL: Duration = Duration::from_secs(1);

type Tags = BTreeMap<String, String>;

/// One series' value.
enum Cell {
    /// f64 bits, added to.
    Counter(AtomicU64),
    /// f64 bits, replaced.
    Gauge(AtomicU64),
    /// Bucket counts (the last is `+Inf`) and the sum.
    Histogram(Mutex<(Vec<u64>, f64)>),
}

impl Cell {
    fn add(bits: &AtomicU64, value: f64) {
        let mut current = bits.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match bits.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }
}

struct Definition {
    description: String,
    kind: MetricKind,
}

#[derive(Default)]
struct Registry {
    definitions: HashMap<String, Definition>,
    series: BTreeMap<(String, Tags), Arc<Cell>>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().expect("metrics registry lock")
}

/// What every metric type shares: its name, tag keys and default tags.
struct Metric {
    name: String,
    tag_keys: Vec<String>,
    defaults: Tags,
    /// The series of the default tags, once they cover every key (the fast path).
    default_cell: OnceLock<Arc<Cell>>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_' || rest == ':')
}

impl Metric {
    fn new(name: &str, description: &str, tag_keys: &[&str], kind: MetricKind) -> Result<Self> {
        if !valid_name(name) {
            return Err(Error::InvalidArgument(format!(
                "metric name {name:?} is not a valid Prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
            )));
        }
        if let Some(key) = tag_keys.iter().find(|key| !valid_name(key) || key.starts_with("__")) {
            return Err(Error::InvalidArgument(format!(
                "tag key {key:?} of metric {name:?} is not a valid label name"
            )));
        }
        let mut registry = registry();
        match registry.definitions.get(name) {
            Some(existing) if existing.kind != kind => {
                return Err(Error::InvalidArgument(format!(
                    "metric {name:?} already exists as a {:?}; pick another name",
                    existing.kind
                )));
            }
            Some(_) => {}
            None => {
                let definition = Definition { description: description.to_string(), kind };
                registry.definitions.insert(name.to_string(), definition);
            }
        }
        Ok(Self {
            name: name.to_string(),
            tag_keys: tag_keys.iter().map(|key| key.to_string()).collect(),
            defaults: Tags::new(),
            default_cell: OnceLock::new(),
        })
    }

    fn with_default_tags(mut self, tags: &[(&str, &str)]) -> Result<Self> {
        for (key, value) in tags {
            if !self.tag_keys.iter().any(|known| known == key) {
                return Err(Error::InvalidArgument(format!(
                    "default tag {key:?} is not a tag key of metric {:?} (keys: {:?})",
                    self.name, self.tag_keys
                )));
            }
            self.defaults.insert(key.to_string(), value.to_string());
        }
        self.default_cell = OnceLock::new();
        Ok(self)
    }

    /// The series for `tags` over the defaults; every tag key needs a value.
    fn cell(&self, tags: &[(&str, &str)], make: impl Fn() -> Cell) -> Result<Arc<Cell>> {
        if tags.is_empty()
            && let Some(cell) = self.default_cell.get()
        {
            return Ok(cell.clone());
        }
        let mut final_tags = self.defaults.clone();
        for (key, value) in tags {
            if !self.tag_keys.iter().any(|known| known == key) {
                return Err(Error::InvalidArgument(format!(
                    "tag {key:?} is not a tag key of metric {:?} (keys: {:?})",
                    self.name, self.tag_keys
                )));
            }
            final_tags.insert(key.to_string(), value.to_string());
        }
        let missing: Vec<&String> = self.tag_keys.iter().filter(|key| !final_tags.contains_key(*key)).collect();
        if !missing.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "missing value for tag key(s) {missing:?} of metric {:?}",
                self.name
            )));
        }
        let cell = registry().series.entry((self.name.clone(), final_tags)).or_insert_with(|| Arc::new(make())).clone();
        if tags.is_empty() {
            let _ = self.default_cell.set(cell.clone());
        }
        Ok(cell)
    }
}

/// A value that only goes up (`manta_<name>_total`).
pub struct Counter(Metric);

impl Counter {
    /// A counter; `tag_keys` name the tags each increment carries.
    pub fn new(name: &str, description: &str, tag_keys: &[&str]) -> Result<Self> {
        Metric::new(name, description, tag_keys, MetricKind::Counter).map(Self)
    }

    /// Tag values used when an increment does not give them.
    pub fn with_default_tags(self, tags: &[(&str, &str)]) -> Result<Self> {
        self.0.with_default_tags(tags).map(Self)
    }

    /// Adds 1 under the default tags.
    pub fn inc(&self) -> Result<()> {
        self.inc_by(1.0, &[])
    }

    /// Adds `value` (> 0) under the default tags overlaid with `tags`.
    pub fn inc_by(&self, value: f64, tags: &[(&str, &str)]) -> Result<()> {
        if !(value > 0.0 && value.is_finite()) {
            return Err(Error::InvalidArgument(format!("a counter goes up by a positive amount, not {value}")));
        }
        match &*self.0.cell(tags, || Cell::Counter(AtomicU64::new(0f64.to_bits())))? {
            Cell::Counter(bits) => Cell::add(bits, value),
            _ => unreachable!("counter series hold counters"),
        }
        Ok(())
    }
}

/// A value that is set (`manta_<name>`).
pub struct Gauge(Metric);

impl Gauge {
    /// A gauge; `tag_keys` name the tags each value carries.
    pub fn new(name: &str, description: &str, tag_keys: &[&str]) -> Result<Self> {
        Metric::new(name, description, tag_keys, MetricKind::Gauge).map(Self)
    }

    /// Tag values used when a call does not give them.
    pub fn with_default_tags(self, tags: &[(&str, &str)]) -> Result<Self> {
        self.0.with_default_tags(tags).map(Self)
    }

    /// Sets the value under the default tags overlaid with `tags`.
    pub fn set(&self, value: f64, tags: &[(&str, &str)]) -> Result<()> {
        match &*self.0.cell(tags, || Cell::Gauge(AtomicU64::new(0f64.to_bits())))? {
            Cell::Gauge(bits) => bits.store(value.to_bits(), Ordering::Relaxed),
            _ => unreachable!("gauge series hold gauges"),
        }
        Ok(())
    }
}

/// Observations counted into buckets (`manta_<name>_bucket`, `_sum`, `_count`).
pub struct Histogram {
    metric: Metric,
    boundaries: Vec<f64>,
}

impl Histogram {
    /// A histogram with these bucket upper bounds (non-empty, positive, increasing).
    pub fn new(name: &str, description: &str, boundaries: &[f64], tag_keys: &[&str]) -> Result<Self> {
        let increasing = boundaries.windows(2).all(|pair| pair[0] < pair[1]);
        if boundaries.is_empty() || !increasing || boundaries.iter().any(|bound| !(*bound > 0.0 && bound.is_finite())) {
            return Err(Error::InvalidArgument(format!(
                "histogram {name:?} needs positive, increasing bucket boundaries, got {boundaries:?}"
            )));
        }
        let kind = MetricKind::Histogram { boundaries: boundaries.to_vec() };
        Ok(Self { metric: Metric::new(name, description, tag_keys, kind)?, boundaries: boundaries.to_vec() })
    }

    /// Tag values used when a call does not give them.
    pub fn with_default_tags(self, tags: &[(&str, &str)]) -> Result<Self> {
        let boundaries = self.boundaries;
        Ok(Self { metric: self.metric.with_default_tags(tags)?, boundaries })
    }

    /// Records one observation under the default tags overlaid with `tags`.
    pub fn observe(&self, value: f64, tags: &[(&str, &str)]) -> Result<()> {
        let buckets = self.boundaries.len() + 1;
        let cell = self.metric.cell(tags, || Cell::Histogram(Mutex::new((vec![0; buckets], 0.0))))?;
        let Cell::Histogram(state) = &*cell else { unreachable!("histogram series hold histograms") };
        let index = self.boundaries.iter().position(|bound| value <= *bound).unwrap_or(self.boundaries.len());
        let mut state = state.lock().expect("histogram lock");
        state.0[index] += 1;
        state.1 += value;
        Ok(())
    }
}

/// Every series of this process, as it stands.
fn snapshot() -> Vec<MetricSample> {
    let registry = registry();
    registry
        .series
        .iter()
        .filter_map(|((name, tags), cell)| {
            let definition = registry.definitions.get(name)?;
            let (value, buckets) = match &**cell {
                Cell::Counter(bits) | Cell::Gauge(bits) => (f64::from_bits(bits.load(Ordering::Relaxed)), Vec::new()),
                Cell::Histogram(state) => {
                    let state = state.lock().expect("histogram lock");
                    (state.1, state.0.clone())
                }
            };
            Some(MetricSample {
                name: name.clone(),
                description: definition.description.clone(),
                kind: definition.kind.clone(),
                tags: tags.clone(),
                value,
                buckets,
            })
        })
        .collect()
}

/// Pushes this process's metrics to its node every second (when it has any).
pub(crate) fn spawn_pusher(core: &Arc<Core>) {
    let weak = Arc::downgrade(core);
    core.handle.spawn(async move {
        let mut ticker = tokio::time::interval(PUSH_INTERVAL);
        loop {
            ticker.tick().await;
            let Some(core) = weak.upgrade() else { return };
            push(&core);
        }
    });
}

/// Sends the current values now (also at shutdown, so the last ones are not lost).
pub(crate) fn push(core: &Core) {
    let samples = snapshot();
    if samples.is_empty() {
        return;
    }
    let component = match core.mode {
        Mode::Driver => "driver",
        Mode::Worker => "worker",
    };
    let report = MetricsReportEvent {
        worker_id: core.worker.worker_id,
        job_id: core.job.job_id,
        component: component.to_string(),
        samples,
    };
    let _ = core.raylet.send_event(Event::MetricsReport(report));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(name: &str, tags: &[(&str, &str)]) -> Option<MetricSample> {
        let tags: Tags = tags.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        snapshot().into_iter().find(|sample| sample.name == name && sample.tags == tags)
    }

    #[test]
    fn counters_gauges_and_histograms_record_per_tag_set() {
        let counter = Counter::new("unit_requests", "requests", &["route"]).unwrap();
        let counter = counter.with_default_tags(&[("route", "/")]).unwrap();
        counter.inc().unwrap();
        counter.inc_by(2.5, &[("route", "/x")]).unwrap();
        counter.inc().unwrap();
        assert_eq!(value_of("unit_requests", &[("route", "/")]).unwrap().value, 2.0);
        assert_eq!(value_of("unit_requests", &[("route", "/x")]).unwrap().value, 2.5);
        assert!(counter.inc_by(-1.0, &[]).is_err(), "counters only go up");
        assert!(counter.inc_by(1.0, &[("other", "x")]).is_err(), "unknown tag keys are refused");

        let gauge = Gauge::new("unit_queue", "queue", &["queue"]).unwrap();
        assert!(gauge.set(3.0, &[]).is_err(), "a tag key without a value is an error");
        gauge.set(3.0, &[("queue", "a")]).unwrap();
        gauge.set(1.0, &[("queue", "a")]).unwrap();
        assert_eq!(value_of("unit_queue", &[("queue", "a")]).unwrap().value, 1.0);

        let histogram = Histogram::new("unit_latency", "latency", &[0.1, 1.0], &[]).unwrap();
        for value in [0.05, 0.5, 5.0, 0.1] {
            histogram.observe(value, &[]).unwrap();
        }
        let sample = value_of("unit_latency", &[]).unwrap();
        assert_eq!(sample.buckets, vec![2, 1, 1]);
        assert!((sample.value - 5.65).abs() < 1e-9);
    }

    #[test]
    fn bad_definitions_are_refused() {
        assert!(Counter::new("", "x", &[]).is_err());
        assert!(Counter::new("9lives", "x", &[]).is_err());
        assert!(Counter::new("ok_name", "x", &["bad-key"]).is_err());
        assert!(Histogram::new("unit_h", "x", &[], &[]).is_err());
        assert!(Histogram::new("unit_h", "x", &[1.0, 0.5], &[]).is_err());
        Gauge::new("unit_kind", "x", &[]).unwrap();
        assert!(Counter::new("unit_kind", "x", &[]).is_err(), "one name, one kind");
        assert!(Gauge::new("unit_g", "x", &["k"]).unwrap().with_default_tags(&[("nope", "v")]).is_err());
    }

    /// Cost of one increment (`cargo test --release -p manta --lib counter_increment
    /// -- --ignored --nocapture`; figures in BENCHMARKS.md).
    #[test]
    #[ignore = "benchmark"]
    fn counter_increment_cost() {
        let counter =
            Counter::new("bench_increments", "x", &["route"]).unwrap().with_default_tags(&[("route", "/")]).unwrap();
        let rounds = 10_000_000u32;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            counter.inc().unwrap();
        }
        let default_tags = started.elapsed().as_nanos() as f64 / f64::from(rounds);
        let rounds = 1_000_000u32;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            counter.inc_by(1.0, &[("route", "/other")]).unwrap();
        }
        let explicit_tags = started.elapsed().as_nanos() as f64 / f64::from(rounds);
        println!("counter increment: {default_tags:.1} ns (default tags), {explicit_tags:.1} ns (tags given per call)");
    }
}
