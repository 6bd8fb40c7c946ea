//! The autoscaler's cluster config: YAML with Ray's field names
//! (`available_node_types`, `max_workers`, `upscaling_speed`,
//! `idle_timeout_minutes`, `head_node_type`, `provider`). Unknown fields and
//! impossible values are refused at start, naming the field.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::planner::Shape;

/// One kind of node the provider can start.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTypeConfig {
    /// Logical resources of a node of this type (`CPU`, `GPU`, `memory`, custom).
    #[serde(default)]
    pub resources: Shape,
    /// Labels its nodes start with.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Kept running whatever the load.
    #[serde(default)]
    pub min_workers: u32,
    /// At most this many (default: the cluster's `max_workers`).
    pub max_workers: Option<u32>,
    /// The provider's own settings for this type (a pod template, ...).
    #[serde(default)]
    pub node_config: serde_json::Value,
}

/// Which provider starts and stops nodes, with its settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ProviderConfig {
    /// `local` or `kubernetes`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The provider's own settings.
    #[serde(flatten)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// The cluster config as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default = "default_name")]
    cluster_name: String,
    #[serde(default = "default_max_workers")]
    max_workers: u32,
    #[serde(default = "default_speed")]
    upscaling_speed: f64,
    #[serde(default = "default_idle")]
    idle_timeout_minutes: f64,
    head_node_type: String,
    available_node_types: BTreeMap<String, NodeTypeConfig>,
    provider: ProviderConfig,
}

fn default_name() -> String {
    "default".into()
}
fn default_max_workers() -> u32 {
    2
}
fn default_speed() -> f64 {
    1.0
}
fn default_idle() -> f64 {
    5.0
}

/// A checked cluster config: every type's `max_workers` resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// Names the provider's nodes.
    pub cluster_name: String,
    /// Worker nodes at most, over all types (the head not counted). Ray's default, 2.
    pub max_workers: u32,
    /// Launches per type at once: `max(5, upscaling_speed × running nodes of the type)`.
    pub upscaling_speed: f64,
    /// A worker idle this long is terminated (Ray's default, 5 minutes).
    pub idle_timeout_minutes: f64,
    /// The head's type.
    pub head_node_type: String,
    /// The types, each with its `max_workers` filled in.
    pub available_node_types: BTreeMap<String, ResolvedType>,
    /// Who starts nodes.
    pub provider: ProviderConfig,
}

/// A node type with its limits resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedType {
    /// Logical resources of one node.
    pub resources: Shape,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Kept running.
    pub min_workers: u32,
    /// At most.
    pub max_workers: u32,
    /// The provider's settings for the type.
    pub node_config: serde_json::Value,
}

impl ClusterConfig {
    /// Parses and checks YAML; errors name the field.
    pub fn from_yaml(text: &str) -> Result<ClusterConfig, String> {
        let written: Written =
            serde_yaml_ng::from_str(text).map_err(|error| format!("the autoscaling config is not valid: {error}"))?;
        let bad = |field: String, why: String| Err(format!("the autoscaling config's {field} {why}"));
        if !written.upscaling_speed.is_finite() || written.upscaling_speed <= 0.0 {
            return bad("upscaling_speed".into(), format!("must be above 0, not {}", written.upscaling_speed));
        }
        if !written.idle_timeout_minutes.is_finite() || written.idle_timeout_minutes < 0.0 {
            return bad(
                "idle_timeout_minutes".into(),
                format!("must be 0 or more, not {}", written.idle_timeout_minutes),
            );
        }
        if !written.available_node_types.contains_key(&written.head_node_type) {
            let known: Vec<&str> = written.available_node_types.keys().map(String::as_str).collect();
            return bad(
                "head_node_type".into(),
                format!("{:?} is not in available_node_types ({})", written.head_node_type, known.join(", ")),
            );
        }
        if !matches!(written.provider.kind.as_str(), "local" | "kubernetes") {
            return bad(
                "provider.type".into(),
                format!("{:?} is not a provider; use local or kubernetes", written.provider.kind),
            );
        }
        let mut types = BTreeMap::new();
        for (name, kind) in written.available_node_types {
            let field = |what: &str| format!("available_node_types.{name}.{what}");
            if let Some((resource, amount)) =
                kind.resources.iter().find(|(_, amount)| !amount.is_finite() || **amount < 0.0)
            {
                return bad(field(&format!("resources.{resource}")), format!("must be 0 or more, not {amount}"));
            }
            let max_workers = kind.max_workers.unwrap_or(written.max_workers);
            if kind.min_workers > max_workers {
                return bad(
                    field("min_workers"),
                    format!("({}) is above its max_workers ({max_workers})", kind.min_workers),
                );
            }
            let resolved = ResolvedType {
                resources: kind.resources,
                labels: kind.labels,
                min_workers: kind.min_workers,
                max_workers,
                node_config: kind.node_config,
            };
            types.insert(name, resolved);
        }
        Ok(ClusterConfig {
            cluster_name: written.cluster_name,
            max_workers: written.max_workers,
            upscaling_speed: written.upscaling_speed,
            idle_timeout_minutes: written.idle_timeout_minutes,
            head_node_type: written.head_node_type,
            available_node_types: types,
            provider: written.provider,
        })
    }

    /// `idle_timeout_minutes` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout_minutes * 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = "
cluster_name: demo
max_workers: 6
upscaling_speed: 1.0
idle_timeout_minutes: 0.05
head_node_type: head
provider:
  type: local
available_node_types:
  head:
    resources: {CPU: 0}
    max_workers: 0
  small:
    resources: {CPU: 1}
    min_workers: 1
    max_workers: 3
  special:
    resources: {CPU: 2, special: 1}
    labels: {zone: b}
";

    #[test]
    fn a_config_parses_with_rays_defaults() {
        let config = ClusterConfig::from_yaml(EXAMPLE).unwrap();
        assert_eq!(config.available_node_types["special"].max_workers, 6, "the cluster's max_workers");
        assert_eq!(config.available_node_types["small"].min_workers, 1);
        assert_eq!(config.idle_timeout(), Duration::from_secs(3));
        assert_eq!(config.provider.kind, "local");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let error = |text: &str| ClusterConfig::from_yaml(text).unwrap_err();
        assert!(
            error(&EXAMPLE.replace("min_workers: 1", "min_workers: 9"))
                .contains("available_node_types.small.min_workers")
        );
        assert!(error(&EXAMPLE.replace("head_node_type: head", "head_node_type: nope")).contains("head_node_type"));
        assert!(error(&EXAMPLE.replace("upscaling_speed: 1.0", "upscaling_speed: 0")).contains("upscaling_speed"));
        assert!(error(&EXAMPLE.replace("type: local", "type: aws")).contains("provider.type"));
        assert!(error(&EXAMPLE.replace("{CPU: 1}", "{CPU: -1}")).contains("available_node_types.small.resources.CPU"));
        assert!(error(&EXAMPLE.replace("labels: {zone: b}", "lables: {zone: b}")).contains("lables"));
        assert!(error("max_workers: [").contains("not valid"));
    }
}
