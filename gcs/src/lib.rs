//! The GCS (global control service), hosted in the head process.
//!
//! ```text
//! GcsSupervisor  (restarts a failed child; the tables survive in shared state)
//!  ├─ NodeManager      register / drain / mark dead; node table (ALIVE → DEAD)
//!  ├─ HealthChecker    deadline-based checks of every alive node → NodeManager
//!  ├─ ResourceManager  per-node totals and availability; pushes the cluster view
//!  ├─ KvStore          internal key-value table
//!  ├─ Pubsub           node-change, cluster-view and job events to subscribed links
//!  ├─ JobManager       numbers jobs; ends a job when its driver's link drops
//!  ├─ ActorDirectory   where actors live; unique names per namespace
//!  ├─ TaskEvents       bounded task history from owners' event batches
//!  ├─ PlacementGroupManager  placement groups: two-phase bundle reservations
//!  ├─ PackageStore     uploaded packages (programs, working dirs), kept while used
//!  └─ SubmissionManager  submitted jobs (Ray's JobManager): records, placement, stop
//! ```
//!
//! [`GcsService`] turns requests arriving on the GCS port into typed messages for
//! these actors. Decisions live in plain structs ([`node_table::NodeTable`],
//! [`kv::KvTable`], [`resource_manager::ClusterView`], [`health_checker::HealthRecord`]).

pub mod actor_directory;
mod actor_restart;
pub mod health_checker;
pub mod job_manager;
pub mod kv;
pub mod node_manager;
pub mod node_table;
pub mod packages;
pub mod placement;
pub mod pubsub;
pub mod recovery;
pub mod resource_manager;
pub mod service;
pub mod storage;
pub mod submission_manager;
pub mod submissions;
pub mod supervisor;
pub mod task_events;
pub mod view_feed;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use manta_proto::WireError;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

pub use service::GcsService;
pub use supervisor::{Gcs, GcsSupervisor, start};

/// GCS settings. Defaults detect a SIGKILLed node in about 2.5 s while needing
/// five consecutive missed checks (≥ 5 s of silence) from a live but slow one.
#[derive(Clone, Debug)]
pub struct GcsConfig {
    /// Time between health checks of one node.
    pub health_check_period: Duration,
    /// Deadline of one health check.
    pub health_check_timeout: Duration,
    /// Consecutive failed checks that declare a node dead.
    pub health_check_failure_threshold: u32,
    /// How often a changed cluster view is pushed to subscribers.
    pub view_broadcast_interval: Duration,
    /// Bytes a second that pushing the view to every subscriber may cost, at
    /// most: past it, views go out less often than every broadcast interval.
    pub view_fanout_budget: u64,
    /// Dead nodes kept in the node table.
    pub max_dead_nodes: usize,
    /// Tasks kept for `manta list tasks` (oldest dropped first).
    pub max_tasks: usize,
    /// Where the durable tables live (`--storage`).
    pub storage: storage::StorageConfig,
    /// After a restart, how long recovered nodes and drivers have to reconnect
    /// before they are declared dead.
    pub recovery_grace: Duration,
    /// The cluster token, for the GCS's own outbound links (restarting actors).
    pub token: String,
    /// TLS for the GCS's own outbound links, when the cluster uses it.
    pub tls: Option<std::sync::Arc<manta_proto::net::tls::TlsConfig>>,
    /// Where uploaded packages (executables, working dirs) are kept.
    pub packages_dir: std::path::PathBuf,
    /// A submitted job still `PENDING` after this long fails (Ray's
    /// `RAY_JOB_START_TIMEOUT_SECONDS`, 900 s).
    pub job_start_timeout: Duration,
}

/// The default [`GcsConfig::view_fanout_budget`]: 32 MiB a second. A 1,000-node
/// view whose nodes all change (~200 KB, to 1,000 links) then goes out every
/// ~6 s; one node's change (~200 bytes to each link) every broadcast interval.
pub const DEFAULT_VIEW_FANOUT_BUDGET: u64 = 32 << 20;

/// A per-process packages folder under the system temp dir, for configs that name none.
fn default_packages_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("manta-gcs-packages-{}", std::process::id()))
}

impl Default for GcsConfig {
    fn default() -> Self {
        Self {
            health_check_period: Duration::from_millis(500),
            health_check_timeout: Duration::from_millis(1000),
            health_check_failure_threshold: 5,
            view_broadcast_interval: Duration::from_millis(100),
            view_fanout_budget: DEFAULT_VIEW_FANOUT_BUDGET,
            max_dead_nodes: 10_000,
            max_tasks: task_events::DEFAULT_MAX_TASKS,
            storage: storage::StorageConfig::Memory,
            recovery_grace: Duration::from_secs(30),
            token: String::new(),
            tls: None,
            packages_dir: default_packages_dir(),
            job_start_timeout: Duration::from_secs(900),
        }
    }
}

impl GcsConfig {
    /// Short timers for tests.
    pub fn for_test() -> Self {
        Self {
            health_check_period: Duration::from_millis(100),
            health_check_timeout: Duration::from_millis(500),
            health_check_failure_threshold: 3,
            view_broadcast_interval: Duration::from_millis(20),
            view_fanout_budget: DEFAULT_VIEW_FANOUT_BUDGET,
            max_dead_nodes: 100,
            max_tasks: task_events::DEFAULT_MAX_TASKS,
            storage: storage::StorageConfig::Memory,
            recovery_grace: Duration::from_secs(5),
            token: String::new(),
            tls: None,
            packages_dir: default_packages_dir(),
            job_start_timeout: Duration::from_secs(900),
        }
    }

    /// Checks the settings make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.health_check_period.is_zero() || self.health_check_timeout.is_zero() {
            return Err("health check period and timeout must be positive".into());
        }
        if self.health_check_failure_threshold == 0 {
            return Err("health check failure threshold must be at least 1".into());
        }
        Ok(())
    }
}

/// The current refs of the GCS actors. A restarted child replaces its entry,
/// so siblings always reach the live instance.
pub struct GcsRefs {
    storage: storage::Storage,
    node_manager: RwLock<Option<ActorRef<node_manager::NodeManagerMsg>>>,
    health_checker: RwLock<Option<ActorRef<health_checker::HealthMsg>>>,
    resource_manager: RwLock<Option<ActorRef<resource_manager::ResourceMsg>>>,
    kv: RwLock<Option<ActorRef<kv::KvMsg>>>,
    pubsub: RwLock<Option<ActorRef<pubsub::PubsubMsg>>>,
    job_manager: RwLock<Option<ActorRef<job_manager::JobMsg>>>,
    actor_directory: RwLock<Option<ActorRef<actor_directory::DirectoryMsg>>>,
    task_events: RwLock<Option<ActorRef<task_events::TaskEventsMsg>>>,
    placement_groups: RwLock<Option<ActorRef<placement::PlacementMsg>>>,
    packages: RwLock<Option<ActorRef<packages::PackageMsg>>>,
    submissions: RwLock<Option<ActorRef<submission_manager::SubmissionMsg>>>,
}

macro_rules! ref_accessor {
    ($get:ident, $field:ident, $msg:ty, $label:literal) => {
        /// The live actor, or an error while it restarts.
        pub fn $get(&self) -> Result<ActorRef<$msg>, WireError> {
            self.$field
                .read()
                .expect("refs lock")
                .clone()
                .ok_or_else(|| WireError::internal(concat!("the GCS ", $label, " is restarting; retry in a moment")))
        }
    };
}

impl GcsRefs {
    pub(crate) fn new(storage: storage::Storage) -> Self {
        Self {
            storage,
            node_manager: Default::default(),
            health_checker: Default::default(),
            resource_manager: Default::default(),
            kv: Default::default(),
            pubsub: Default::default(),
            job_manager: Default::default(),
            actor_directory: Default::default(),
            task_events: Default::default(),
            placement_groups: Default::default(),
            packages: Default::default(),
            submissions: Default::default(),
        }
    }

    /// The group-commit writer of the durable tables.
    pub fn storage(&self) -> &storage::Storage {
        &self.storage
    }

    ref_accessor!(node_manager, node_manager, node_manager::NodeManagerMsg, "node manager");
    ref_accessor!(health_checker, health_checker, health_checker::HealthMsg, "health checker");
    ref_accessor!(resource_manager, resource_manager, resource_manager::ResourceMsg, "resource manager");
    ref_accessor!(kv, kv, kv::KvMsg, "KV store");
    ref_accessor!(pubsub, pubsub, pubsub::PubsubMsg, "pubsub");
    ref_accessor!(job_manager, job_manager, job_manager::JobMsg, "job manager");
    ref_accessor!(actor_directory, actor_directory, actor_directory::DirectoryMsg, "actor directory");
    ref_accessor!(task_events, task_events, task_events::TaskEventsMsg, "task event store");
    ref_accessor!(placement_groups, placement_groups, placement::PlacementMsg, "placement group manager");
    ref_accessor!(packages, packages, packages::PackageMsg, "package store");
    ref_accessor!(submissions, submissions, submission_manager::SubmissionMsg, "job submission manager");
}

/// Deadline for calls between GCS actors.
const ACTOR_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends an RPC message to a local actor and waits for its reply.
pub(crate) async fn ask<M, T>(actor: &ActorRef<M>, build: impl FnOnce(RpcReplyPort<T>) -> M) -> Result<T, WireError>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(build, Some(ACTOR_CALL_TIMEOUT)).await {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(WireError::internal("a GCS component did not answer in time")),
        Ok(CallResult::SenderError) | Err(_) => Err(WireError::internal("a GCS component stopped; retry in a moment")),
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

/// Shared tables that outlive a restart of the actor using them. A panic while
/// one is locked does not poison it for good: the actor that panicked is
/// restarted by its supervisor and takes the table as it was left (every
/// table change is one step, so a half-made change cannot be seen).
#[derive(Debug)]
pub struct Shared<T>(Arc<std::sync::Mutex<T>>);

impl<T> Shared<T> {
    /// A new shared table.
    pub fn new(value: T) -> Self {
        Self(Arc::new(std::sync::Mutex::new(value)))
    }

    /// Locks the table, recovering it after a panic of an earlier holder.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Default> Default for Shared<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

#[cfg(test)]
mod shared_tests {
    use super::Shared;

    #[test]
    fn a_table_locked_by_a_panicking_holder_is_still_usable() {
        let table = Shared::new(vec![1, 2]);
        let holder = table.clone();
        let panicked = std::thread::spawn(move || {
            let mut rows = holder.lock();
            rows.push(3);
            panic!("a handler bug while the table is locked");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(*table.lock(), vec![1, 2, 3], "the restarted actor sees the table as it was left");
    }
}
