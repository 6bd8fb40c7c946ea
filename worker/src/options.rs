//! Options of remote functions and actors, as builders.

use std::collections::BTreeMap;

use manta_proto::resources::{Quantity, ResourceSet, names};
pub use manta_proto::task::SchedulingStrategy;

/// The builder methods tasks and actors share: resources, placement, environment.
macro_rules! shared_builders {
    ($options:ident, $what:literal) => {
        impl $options {
            #[doc = concat!("Logical CPUs the ", $what, " holds while it runs.")]
            /// Integers and floats both work: `.num_cpus(2)`, `.num_cpus(0.5)`.
            pub fn num_cpus(mut self, cpus: impl Into<f64>) -> Self {
                self.num_cpus = Some(cpus.into());
                self
            }

            #[doc = concat!("GPUs the ", $what, " holds (fractions below 1 share a device).")]
            pub fn num_gpus(mut self, gpus: impl Into<f64>) -> Self {
                self.num_gpus = gpus.into();
                self
            }

            #[doc = concat!("Bytes of the `memory` resource the ", $what, " holds (scheduling only).")]
            pub fn memory(mut self, bytes: u64) -> Self {
                self.memory = bytes;
                self
            }

            #[doc = concat!("A custom resource the ", $what, " needs.")]
            pub fn resource(mut self, name: impl Into<String>, quantity: impl Into<f64>) -> Self {
                self.resources.insert(name.into(), quantity.into());
                self
            }

            #[doc = concat!("Runs the ", $what, " only on nodes with this accelerator (`A100`, `H100`, ...): asks for")]
            /// 0.001 of the node's `accelerator_type:<name>` resource, as Ray does.
            pub fn accelerator_type(mut self, name: impl AsRef<str>) -> Self {
                let resource = format!("{}{}", manta_proto::resources::names::ACCELERATOR_TYPE_PREFIX, name.as_ref());
                self.resources.insert(resource, 0.001);
                self
            }

            #[doc = concat!("Where the ", $what, " may run: `Default` (hybrid), `Spread`, `NodeAffinity`, or a")]
            /// placement group's bundle (`SchedulingStrategy::placement_group(&group, Some(0))`).
            pub fn scheduling_strategy(mut self, strategy: SchedulingStrategy) -> Self {
                self.strategy = strategy;
                self
            }

            #[doc = concat!("An environment variable for the ", $what, ", merged over the job's.")]
            pub fn env_var(mut self, (key, value): (&str, &str)) -> Self {
                self.env_vars.insert(key.to_string(), value.to_string());
                self
            }

            #[doc = concat!("The ", $what, "'s runtime environment, over its parent's (the job's, or the")]
            /// submitting task's or actor's): `env_vars` merge key by key, other fields
            /// replace the parent's. `working_dir` and `py_modules` must be packages in
            /// the cluster (`gcs://…`), as in Ray.
            pub fn runtime_env(mut self, runtime_env: crate::RuntimeEnv) -> Self {
                self.runtime_env = Some(runtime_env);
                self
            }

            pub(crate) fn resource_set(&self) -> ResourceSet {
                let set = resource_set(self.held_cpus(), self.num_gpus, self.memory, &self.resources);
                match &self.strategy {
                    // In a placement group: ask for the group's bundle resources instead.
                    SchedulingStrategy::PlacementGroup { pg_id, bundle_index, .. } => {
                        manta_proto::placement::rewrite_for_bundle(&set, pg_id, *bundle_index)
                    }
                    _ => set,
                }
            }
        }
    };
}

/// Options of a remote function call: resources, retries, name, environment.
///
/// Defaults as in Ray: 1 CPU, 3 retries on system failures, no retries on
/// application errors.
/// Which application failures a task retries (`retry_exceptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum RetryErrors {
    /// None (the default).
    #[default]
    None,
    /// Every returned `Err` and panic.
    All,
    /// Returned `Err`s of these types.
    Types(Vec<String>),
}

impl RetryErrors {
    /// True when `failure` is to be retried (retries left permitting).
    pub(crate) fn covers(&self, failure: &manta_proto::task::TaskFailure) -> bool {
        use manta_proto::task::FailureKind;
        match self {
            RetryErrors::None => false,
            RetryErrors::All => matches!(failure.kind, FailureKind::Application | FailureKind::Panic),
            RetryErrors::Types(types) => {
                failure.kind == FailureKind::Application
                    && failure.error_type.as_ref().is_some_and(|name| types.contains(name))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct TaskOptions {
    pub(crate) num_cpus: Option<f64>,
    pub(crate) num_gpus: f64,
    pub(crate) memory: u64,
    pub(crate) resources: BTreeMap<String, f64>,
    pub(crate) max_retries: i32,
    pub(crate) retry_exceptions: RetryErrors,
    pub(crate) name: Option<String>,
    pub(crate) env_vars: BTreeMap<String, String>,
    pub(crate) runtime_env: Option<crate::RuntimeEnv>,
    pub(crate) strategy: SchedulingStrategy,
}

impl TaskOptions {
    fn held_cpus(&self) -> f64 {
        self.num_cpus.unwrap_or(1.0)
    }
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            num_cpus: None,
            num_gpus: 0.0,
            memory: 0,
            resources: BTreeMap::new(),
            max_retries: 3,
            retry_exceptions: RetryErrors::None,
            name: None,
            env_vars: BTreeMap::new(),
            runtime_env: None,
            strategy: SchedulingStrategy::Default,
        }
    }
}

impl TaskOptions {
    /// Retries when the worker or node dies (default 3; -1 = forever).
    pub fn max_retries(mut self, retries: i32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Also retry when the function returns `Err` or panics (default false).
    pub fn retry_exceptions(mut self, retry: bool) -> Self {
        self.retry_exceptions = if retry { RetryErrors::All } else { RetryErrors::None };
        self
    }

    /// Also retry when the function returns an `Err` of type `E` (call once per
    /// type, like Ray's list of exception types). Other errors and panics are not retried.
    pub fn retry_exceptions_of<E: 'static>(mut self) -> Self {
        let name = std::any::type_name::<E>().to_string();
        match &mut self.retry_exceptions {
            RetryErrors::Types(types) => types.push(name),
            other => *other = RetryErrors::Types(vec![name]),
        }
        self
    }

    /// The task's name in errors and logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

shared_builders!(TaskOptions, "task");

/// Whether an actor outlives its job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lifetime {
    /// Ends with its job, or when its last handle is dropped (default).
    #[default]
    NonDetached,
    /// Outlives its job; ends only when killed.
    Detached,
}

/// Options of an actor: resources, name, restarts, concurrency.
///
/// Defaults: no name, `max_restarts = 0`, `max_concurrency = 1`, and Ray's actor
/// resources: with no resources given, an actor needs 1 CPU free to be placed but
/// holds none while it lives; with any given, it holds what it asked for, plus 1 CPU
/// unless `num_cpus` says otherwise.
#[derive(Debug, Clone, Default)]
pub struct ActorOptions {
    pub(crate) num_cpus: Option<f64>,
    pub(crate) num_gpus: f64,
    pub(crate) memory: u64,
    pub(crate) resources: BTreeMap<String, f64>,
    pub(crate) name: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) get_if_exists: bool,
    pub(crate) lifetime: Lifetime,
    pub(crate) max_restarts: i32,
    pub(crate) max_task_retries: i32,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) env_vars: BTreeMap<String, String>,
    pub(crate) runtime_env: Option<crate::RuntimeEnv>,
    pub(crate) strategy: SchedulingStrategy,
}

impl ActorOptions {
    fn asked_for_resources(&self) -> bool {
        self.num_cpus.is_some() || self.num_gpus > 0.0 || self.resources.values().any(|amount| *amount > 0.0)
    }

    fn held_cpus(&self) -> f64 {
        match self.num_cpus {
            Some(cpus) => cpus,
            None if self.asked_for_resources() => 1.0,
            None => 0.0,
        }
    }

    /// What placing the actor needs when it differs from what it holds: 1 CPU for an
    /// actor that asked for nothing (Ray's "1 CPU to schedule, 0 to run").
    pub(crate) fn placement_set(&self) -> Option<ResourceSet> {
        if self.asked_for_resources() {
            return None;
        }
        let mut placement = self.resource_set();
        match &self.strategy {
            SchedulingStrategy::PlacementGroup { pg_id, bundle_index, .. } => {
                let cpu = ResourceSet::new().with(names::CPU, Quantity::from_whole(1));
                for (name, amount) in manta_proto::placement::rewrite_for_bundle(&cpu, pg_id, *bundle_index).iter() {
                    placement.set(name.to_string(), amount);
                }
            }
            _ => placement.set(names::CPU, Quantity::from_whole(1)),
        }
        Some(placement)
    }
}

impl ActorOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// A name, unique in its namespace, to find the actor with `manta::get_actor`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The namespace of the name (default: the job's).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// With a name: return the existing actor of that name instead of failing.
    pub fn get_if_exists(mut self, get_if_exists: bool) -> Self {
        self.get_if_exists = get_if_exists;
        self
    }

    /// Detached actors outlive their job.
    pub fn lifetime(mut self, lifetime: Lifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Restarts after a panic (default 0; -1 = forever).
    pub fn max_restarts(mut self, restarts: i32) -> Self {
        self.max_restarts = restarts;
        self
    }

    /// Retries of a call that failed because the actor died (default 0).
    pub fn max_task_retries(mut self, retries: i32) -> Self {
        self.max_task_retries = retries;
        self
    }

    /// Calls that may run at once (default 1: in order, one at a time).
    pub fn max_concurrency(mut self, concurrency: u32) -> Self {
        self.max_concurrency = Some(concurrency.max(1));
        self
    }
}

shared_builders!(ActorOptions, "actor");

fn resource_set(cpus: f64, gpus: f64, memory: u64, custom: &BTreeMap<String, f64>) -> ResourceSet {
    let mut set = ResourceSet::new();
    set.set(names::CPU, Quantity::from_f64(cpus).unwrap_or_default());
    set.set(names::GPU, Quantity::from_f64(gpus).unwrap_or_default());
    set.set(names::MEMORY, Quantity::from_whole(memory));
    for (name, quantity) in custom {
        set.set(name.clone(), Quantity::from_f64(*quantity).unwrap_or_default());
    }
    set
}

#[cfg(test)]
mod actor_default_tests {
    use super::*;

    #[test]
    fn actors_follow_rays_defaults() {
        let plain = ActorOptions::new();
        assert_eq!(plain.resource_set().get(names::CPU), Quantity::ZERO, "holds no CPU");
        assert_eq!(plain.placement_set().unwrap().get(names::CPU), Quantity::from_whole(1), "needs one to be placed");
        let gpu = ActorOptions::new().num_gpus(1.0);
        assert_eq!(gpu.resource_set().get(names::CPU), Quantity::from_whole(1), "holds 1 CPU with a GPU");
        assert!(gpu.placement_set().is_none());
        let explicit = ActorOptions::new().num_cpus(0.0);
        assert_eq!(explicit.resource_set().get(names::CPU), Quantity::ZERO);
        assert!(explicit.placement_set().is_none(), "num_cpus = 0 asked for: placed with 0");
        assert_eq!(TaskOptions::default().resource_set().get(names::CPU), Quantity::from_whole(1));
    }
}
