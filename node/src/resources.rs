//! What a node offers: CPU, GPU, memory, object store memory, custom resources
//! and `node:<ip>`, detected from the machine unless given on the command line.

use std::collections::BTreeMap;
use std::path::Path;

use manta_proto::resources::{Quantity, ResourceSet, names};

/// Share of available memory given to the object store when not set.
const OBJECT_STORE_SHARE: f64 = 0.3;
/// Label prefix reserved for labels manta sets itself.
pub const RESERVED_LABEL_PREFIX: &str = "manta.io/";

/// Resource flags as given; `None` means detect.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceSpec {
    /// `--num-cpus`.
    pub num_cpus: Option<f64>,
    /// `--num-gpus`.
    pub num_gpus: Option<f64>,
    /// `--memory` in bytes.
    pub memory: Option<u64>,
    /// `--object-store-memory` in bytes.
    pub object_store_memory: Option<u64>,
    /// `--resources` JSON, parsed.
    pub custom: BTreeMap<String, f64>,
    /// `--accelerator-type` (default: the detected GPU model, when there are GPUs).
    pub accelerator_type: Option<String>,
}

/// Parses `--resources`: a JSON object of name → non-negative number.
pub fn parse_custom_resources(json: &str) -> Result<BTreeMap<String, f64>, String> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|error| format!("not valid JSON ({error}); expected e.g. '{{\"custom\": 2}}'"))?;
    let serde_json::Value::Object(entries) = value else {
        return Err("expected a JSON object of resource name to quantity, e.g. '{\"custom\": 2}'".into());
    };
    let mut custom = BTreeMap::new();
    for (name, quantity) in entries {
        if name.is_empty() {
            return Err("resource names must not be empty".into());
        }
        if names::RESERVED.contains(&name.as_str()) {
            return Err(format!(
                "{name:?} is set with its own flag (--num-cpus, --num-gpus, --memory, --object-store-memory), not --resources"
            ));
        }
        if name.starts_with(names::NODE_PREFIX) {
            return Err(format!("{name:?}: names starting with \"node:\" are reserved"));
        }
        let Some(amount) = quantity.as_f64() else {
            return Err(format!("the quantity of {name:?} must be a number, got {quantity}"));
        };
        if amount < 0.0 || Quantity::from_f64(amount).is_none() {
            return Err(format!("the quantity of {name:?} must be zero or more, got {amount}"));
        }
        custom.insert(name, amount);
    }
    Ok(custom)
}

/// Parses `--labels k=v,k2=v2`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        if key.starts_with(RESERVED_LABEL_PREFIX) {
            return Err(format!("{key:?}: the prefix {RESERVED_LABEL_PREFIX:?} is reserved"));
        }
        labels.insert(key.to_string(), value.trim().to_string());
    }
    Ok(labels)
}

/// Builds the node's resource set from flags and detection.
pub fn resolve(spec: &ResourceSpec, node_ip: &str) -> ResourceSet {
    let cpus = spec.num_cpus.unwrap_or_else(|| detect_cpus() as f64);
    let gpus = spec.num_gpus.unwrap_or_else(|| detect_gpus() as f64);
    let available_memory = detect_available_memory();
    let object_store = spec.object_store_memory.unwrap_or((available_memory as f64 * OBJECT_STORE_SHARE) as u64);
    let memory = spec.memory.unwrap_or_else(|| available_memory.saturating_sub(object_store));
    let mut set = ResourceSet::new();
    set.set(names::CPU, Quantity::from_f64(cpus).unwrap_or_default());
    set.set(names::GPU, Quantity::from_f64(gpus).unwrap_or_default());
    set.set(names::MEMORY, Quantity::from_whole(memory));
    set.set(names::OBJECT_STORE_MEMORY, Quantity::from_whole(object_store));
    for (name, amount) in &spec.custom {
        set.set(name.clone(), Quantity::from_f64(*amount).unwrap_or_default());
    }
    set.set(format!("{}{node_ip}", names::NODE_PREFIX), Quantity::from_whole(1));
    let accelerator = spec.accelerator_type.clone().or_else(|| (gpus > 0.0).then(detect_accelerator_type).flatten());
    if let Some(accelerator) = accelerator.filter(|name| !name.is_empty()) {
        set.set(format!("{}{accelerator}", names::ACCELERATOR_TYPE_PREFIX), Quantity::from_whole(1));
    }
    set
}

/// The model of the first NVIDIA GPU, from the driver (`Model: NVIDIA A100-SXM4-40GB` → `A100`).
pub fn detect_accelerator_type() -> Option<String> {
    let entries = std::fs::read_dir("/proc/driver/nvidia/gpus").ok()?;
    for entry in entries.filter_map(Result::ok) {
        let Ok(text) = std::fs::read_to_string(entry.path().join("information")) else { continue };
        if let Some(model) = text.lines().find_map(|line| line.strip_prefix("Model:")) {
            return accelerator_name(model);
        }
    }
    None
}

/// Ray-style accelerator name of a GPU model string.
pub fn accelerator_name(model: &str) -> Option<String> {
    let mut name = model.trim();
    for prefix in ["NVIDIA ", "Tesla ", "GeForce ", "Quadro "] {
        name = name.strip_prefix(prefix).unwrap_or(name);
    }
    let first = name.split([' ', '-']).next()?.trim();
    (!first.is_empty()).then(|| first.to_string())
}

/// Cores this process may use: honours the affinity mask and cgroup CPU quotas.
pub fn detect_cpus() -> usize {
    std::thread::available_parallelism().map(|count| count.get()).unwrap_or(1)
}

/// NVIDIA GPUs visible to this process: the driver's device list (or
/// `nvidia-smi -L`), capped by `CUDA_VISIBLE_DEVICES` when it is set.
pub fn detect_gpus() -> usize {
    let found = count_dir_entries(Path::new("/proc/driver/nvidia/gpus")).unwrap_or_else(count_nvidia_smi_gpus);
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(visible) => found.min(visible_device_count(&visible)),
        Err(_) => found,
    }
}

/// Number of devices named by a `CUDA_VISIBLE_DEVICES` value.
pub fn visible_device_count(visible: &str) -> usize {
    let visible = visible.trim();
    if visible.is_empty() || visible == "NoDevFiles" {
        return 0;
    }
    visible.split(',').filter(|entry| !entry.trim().is_empty()).count()
}

fn count_dir_entries(path: &Path) -> Option<usize> {
    Some(std::fs::read_dir(path).ok()?.filter_map(Result::ok).count())
}

fn count_nvidia_smi_gpus() -> usize {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).lines().filter(|line| line.starts_with("GPU ")).count())
        .unwrap_or(0)
}

/// Bytes of memory available to this process: `MemAvailable`, lowered to what
/// the cgroup limit still allows.
pub fn detect_available_memory() -> u64 {
    use procfs::Current;
    let system = procfs::Meminfo::current().map(|info| info.mem_available.unwrap_or(info.mem_free)).unwrap_or(0);
    match cgroup_memory_headroom() {
        Some(headroom) => system.min(headroom),
        None => system,
    }
}

/// Limit minus usage of this process's cgroup (v2, then v1), when limited.
fn cgroup_memory_headroom() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok().and_then(|text| text.trim().parse::<u64>().ok());
    let (limit, usage) = match read("/sys/fs/cgroup/memory.max") {
        Some(limit) => (limit, read("/sys/fs/cgroup/memory.current").unwrap_or(0)),
        None => (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes").unwrap_or(0),
        ),
    };
    // cgroup v1 reports "no limit" as a huge number.
    (limit < (1 << 60)).then(|| limit.saturating_sub(usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerator_names_follow_ray() {
        assert_eq!(accelerator_name(" NVIDIA A100-SXM4-40GB").as_deref(), Some("A100"));
        assert_eq!(accelerator_name("NVIDIA H100 80GB HBM3").as_deref(), Some("H100"));
        assert_eq!(accelerator_name("Tesla V100-SXM2-16GB").as_deref(), Some("V100"));
        assert_eq!(accelerator_name("  "), None);
        let spec = ResourceSpec { num_gpus: Some(1.0), accelerator_type: Some("T4".into()), ..ResourceSpec::default() };
        assert_eq!(resolve(&spec, "127.0.0.1").get("accelerator_type:T4"), Quantity::from_whole(1));
    }

    #[test]
    fn custom_resources_parse_and_validate() {
        let parsed = parse_custom_resources(r#"{"disk": 2, "half": 0.5}"#).unwrap();
        assert_eq!(parsed["disk"], 2.0);
        assert_eq!(parsed["half"], 0.5);
        for bad in [r#"{"x": -1}"#, "{not json", "[1,2]", r#"{"CPU": 4}"#, r#"{"x": "two"}"#, r#"{"node:1.2.3.4": 1}"#]
        {
            assert!(parse_custom_resources(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn labels_parse_and_validate() {
        let labels = parse_labels("zone=a, tier = gpu ,").unwrap();
        assert_eq!(labels["zone"], "a");
        assert_eq!(labels["tier"], "gpu");
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("=x").is_err());
        assert!(parse_labels("manta.io/node-id=1").is_err());
    }

    #[test]
    fn flags_override_detection() {
        let spec = ResourceSpec {
            num_cpus: Some(3.0),
            num_gpus: Some(2.0),
            memory: Some(1000),
            object_store_memory: Some(500),
            custom: [("disk".to_string(), 1.0)].into(),
            accelerator_type: None,
        };
        let set = resolve(&spec, "127.0.0.1");
        assert_eq!(set.get("CPU"), Quantity::from_whole(3));
        assert_eq!(set.get("GPU"), Quantity::from_whole(2));
        assert_eq!(set.get("memory"), Quantity::from_whole(1000));
        assert_eq!(set.get("object_store_memory"), Quantity::from_whole(500));
        assert_eq!(set.get("disk"), Quantity::from_whole(1));
        assert_eq!(set.get("node:127.0.0.1"), Quantity::from_whole(1));
    }

    #[test]
    fn detection_is_sane() {
        assert!(detect_cpus() >= 1);
        assert!(detect_available_memory() > 0);
        let set = resolve(&ResourceSpec::default(), "127.0.0.1");
        assert!(set.get("memory") > Quantity::ZERO);
        assert!(set.get("object_store_memory") > Quantity::ZERO);
    }

    #[test]
    fn visible_devices() {
        assert_eq!(visible_device_count(""), 0);
        assert_eq!(visible_device_count("NoDevFiles"), 0);
        assert_eq!(visible_device_count("0,1,3"), 3);
    }
}
