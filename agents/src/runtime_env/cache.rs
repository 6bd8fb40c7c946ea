//! [`EnvCache`]: the RuntimeEnvAgent's bookkeeping as a pure state machine.
//! Environments (by key) are built once and shared by every worker that asks
//! while they build; the items they are made of (an executable, an unpacked
//! working dir, a virtualenv) are reference-counted by the workers and jobs
//! using them, and unused ones are deleted, least recently used first, when the
//! cache is over its size limit. Every event returns [`Effect`]s for the actor
//! to carry out: start a build, answer a waiter, delete an item.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use manta_proto::JobId;
use manta_proto::runtime_env::EnvKey;

/// How long a failed setup is answered from the cache (concurrent and repeated
/// requests fail fast instead of re-running a failing install).
pub const FAILED_TTL: Duration = Duration::from_secs(10);

/// What an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemKind {
    /// A job's program.
    Executable,
    /// An unpacked `working_dir` package.
    WorkingDir,
    /// An unpacked `py_modules` package.
    PyModule,
    /// A virtualenv built from a requirement set.
    Venv,
}

/// One cached item: its kind and name (a package name or a requirement-set hash).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId {
    /// What it is.
    pub kind: ItemKind,
    /// Its name (a plain file name).
    pub name: String,
}

impl ItemId {
    /// Where it lives under the cache root.
    pub fn relative_path(&self) -> PathBuf {
        let folder = match self.kind {
            ItemKind::Executable => "exe",
            ItemKind::WorkingDir => "working_dir",
            ItemKind::PyModule => "py_modules",
            ItemKind::Venv => "pip",
        };
        PathBuf::from(folder).join(&self.name)
    }
}

/// What the agent built for an environment (how to start a worker in it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvContext {
    /// The program to run (the job's executable, from the node's cache).
    pub executable: PathBuf,
    /// The worker's current directory.
    pub cwd: Option<PathBuf>,
    /// Variables the environment sets (its `env_vars`, `PYTHONPATH`, the venv's `PATH`).
    pub env_vars: std::collections::BTreeMap<String, String>,
    /// The virtualenv's Python, when the environment has one.
    pub python: Option<PathBuf>,
}

/// A finished build: the context and the size of each item it made.
pub type Built = Result<(EnvContext, Vec<(ItemId, u64)>), String>;

/// What the actor must do.
#[derive(Debug, PartialEq)]
pub enum Effect<W> {
    /// Build the environment; the items listed are not on disk yet.
    Build {
        /// The environment.
        key: EnvKey,
        /// Its items missing from the cache.
        missing: Vec<ItemId>,
    },
    /// Answer a request.
    Answer {
        /// Who asked.
        waiter: W,
        /// The environment, or why it could not be set up.
        result: Result<EnvContext, String>,
    },
    /// Delete an unused item from disk.
    Delete(ItemId),
}

#[derive(Debug)]
struct Item {
    /// Workers (and builds) using it.
    refs: u32,
    /// Jobs that used it (until they end).
    jobs: BTreeSet<JobId>,
    /// Bytes on disk; `None` until a build made it.
    size: Option<u64>,
    /// When it was last asked for (a counter).
    last_used: u64,
}

#[derive(Debug)]
enum EnvState<W> {
    Building { waiters: Vec<W> },
    Ready { context: EnvContext },
    Failed { message: String, at: Instant },
}

#[derive(Debug)]
struct Env<W> {
    state: EnvState<W>,
    items: Vec<ItemId>,
    /// Workers holding it (each acquire adds one, each release takes one).
    users: u32,
}

/// The agent's environments and items (see the module docs).
#[derive(Debug)]
pub struct EnvCache<W> {
    limit: u64,
    envs: HashMap<EnvKey, Env<W>>,
    items: HashMap<ItemId, Item>,
    clock: u64,
}

impl<W> EnvCache<W> {
    /// An empty cache keeping at most `limit` bytes of unused items.
    pub fn new(limit: u64) -> Self {
        Self { limit, envs: HashMap::new(), items: HashMap::new(), clock: 0 }
    }

    /// A worker of `job` needs environment `key`, made of `items`.
    pub fn acquire(&mut self, key: EnvKey, items: Vec<ItemId>, job: JobId, waiter: W, now: Instant) -> Vec<Effect<W>> {
        if let Some(env) = self.envs.get(&key)
            && let EnvState::Failed { message, at } = &env.state
        {
            if now.saturating_duration_since(*at) < FAILED_TTL {
                return vec![Effect::Answer { waiter, result: Err(message.clone()) }];
            }
            self.envs.remove(&key);
        }
        self.clock += 1;
        let env = self.envs.entry(key).or_insert_with(|| Env {
            state: EnvState::Building { waiters: Vec::new() },
            items,
            users: 0,
        });
        env.users += 1;
        for id in &env.items {
            let item = self.items.entry(id.clone()).or_insert(Item {
                refs: 0,
                jobs: BTreeSet::new(),
                size: None,
                last_used: 0,
            });
            item.refs += 1;
            item.jobs.insert(job);
            item.last_used = self.clock;
        }
        match &mut env.state {
            EnvState::Ready { context } => vec![Effect::Answer { waiter, result: Ok(context.clone()) }],
            EnvState::Building { waiters } => {
                let first = waiters.is_empty();
                waiters.push(waiter);
                if first {
                    let missing = env.items.iter().filter(|id| self.items[*id].size.is_none()).cloned().collect();
                    vec![Effect::Build { key, missing }]
                } else {
                    Vec::new()
                }
            }
            EnvState::Failed { .. } => unreachable!("a failed entry is answered or removed above"),
        }
    }

    /// A build finished.
    pub fn built(&mut self, key: EnvKey, result: Built, now: Instant) -> Vec<Effect<W>> {
        let Some(env) = self.envs.get_mut(&key) else { return Vec::new() };
        let EnvState::Building { waiters } = &mut env.state else { return Vec::new() };
        let waiters = std::mem::take(waiters);
        let mut effects = Vec::new();
        match result {
            Ok((context, sizes)) => {
                for (id, size) in sizes {
                    if let Some(item) = self.items.get_mut(&id) {
                        item.size = Some(size);
                    }
                }
                env.state = EnvState::Ready { context: context.clone() };
                effects
                    .extend(waiters.into_iter().map(|waiter| Effect::Answer { waiter, result: Ok(context.clone()) }));
            }
            Err(message) => {
                env.state = EnvState::Failed { message: message.clone(), at: now };
                let count = waiters.len() as u32;
                env.users = env.users.saturating_sub(count);
                let items = env.items.clone();
                for id in &items {
                    if let Some(item) = self.items.get_mut(id) {
                        item.refs = item.refs.saturating_sub(count);
                    }
                }
                effects
                    .extend(waiters.into_iter().map(|waiter| Effect::Answer { waiter, result: Err(message.clone()) }));
            }
        }
        effects.extend(self.collect());
        effects
    }

    /// A worker that was given environment `key` ended.
    pub fn release(&mut self, key: EnvKey) -> Vec<Effect<W>> {
        let Some(env) = self.envs.get_mut(&key) else { return Vec::new() };
        if env.users == 0 {
            return Vec::new();
        }
        env.users -= 1;
        for id in env.items.clone() {
            if let Some(item) = self.items.get_mut(&id) {
                item.refs = item.refs.saturating_sub(1);
            }
        }
        self.collect()
    }

    /// A job ended: its items no longer count it as a user.
    pub fn job_finished(&mut self, job: JobId) -> Vec<Effect<W>> {
        for item in self.items.values_mut() {
            item.jobs.remove(&job);
        }
        self.collect()
    }

    /// Bytes of the items on disk.
    pub fn used_bytes(&self) -> u64 {
        self.items.values().filter_map(|item| item.size).sum()
    }

    /// Whether an item is referenced by a worker, a build or a running job.
    pub fn in_use(&self, id: &ItemId) -> bool {
        self.items.get(id).is_some_and(|item| item.refs > 0 || !item.jobs.is_empty())
    }

    /// Items on disk.
    pub fn present(&self) -> Vec<ItemId> {
        self.items.iter().filter(|(_, item)| item.size.is_some()).map(|(id, _)| id.clone()).collect()
    }

    /// Deletes unused items, least recently used first, until the cache is
    /// within its limit; forgets placeholders of failed builds.
    fn collect(&mut self) -> Vec<Effect<W>> {
        self.items.retain(|_, item| item.size.is_some() || item.refs > 0 || !item.jobs.is_empty());
        let mut effects = Vec::new();
        let mut used = self.used_bytes();
        while used > self.limit {
            let victim = self
                .items
                .iter()
                .filter(|(_, item)| item.size.is_some() && item.refs == 0 && item.jobs.is_empty())
                .min_by_key(|(id, item)| (item.last_used, (*id).clone()))
                .map(|(id, _)| id.clone());
            let Some(victim) = victim else { break };
            let item = self.items.remove(&victim).expect("the victim exists");
            used -= item.size.unwrap_or(0);
            // An environment built on it must be built again next time.
            self.envs.retain(|_, env| !(env.users == 0 && env.items.contains(&victim)));
            effects.push(Effect::Delete(victim));
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(kind: ItemKind, name: &str) -> ItemId {
        ItemId { kind, name: name.into() }
    }

    fn key(n: u8) -> EnvKey {
        EnvKey([n; 16])
    }

    fn context() -> EnvContext {
        EnvContext { executable: "/cache/exe/x".into(), ..Default::default() }
    }

    #[test]
    fn concurrent_requests_share_one_build_and_later_ones_are_answered_at_once() {
        let mut cache = EnvCache::new(u64::MAX);
        let now = Instant::now();
        let items = vec![item(ItemKind::Executable, "e"), item(ItemKind::WorkingDir, "w")];
        let job = JobId::from_counter(1);
        let first = cache.acquire(key(1), items.clone(), job, "a", now);
        assert_eq!(first, vec![Effect::Build { key: key(1), missing: items.clone() }]);
        assert!(cache.acquire(key(1), items.clone(), job, "b", now).is_empty(), "shares the build");
        let done = cache.built(key(1), Ok((context(), vec![(items[0].clone(), 10), (items[1].clone(), 5)])), now);
        assert_eq!(done.len(), 2);
        assert_eq!(
            cache.acquire(key(1), items.clone(), job, "c", now),
            vec![Effect::Answer { waiter: "c", result: Ok(context()) }]
        );
        // A second environment on the same executable fetches only what it lacks.
        let other = vec![items[0].clone(), item(ItemKind::Venv, "v")];
        assert_eq!(
            cache.acquire(key(2), other.clone(), job, "d", now),
            vec![Effect::Build { key: key(2), missing: vec![other[1].clone()] }]
        );
    }

    #[test]
    fn a_failed_setup_answers_every_waiter_and_fails_fast_for_a_while() {
        let mut cache = EnvCache::new(0);
        let now = Instant::now();
        let items = vec![item(ItemKind::Venv, "v")];
        let job = JobId::from_counter(1);
        cache.acquire(key(1), items.clone(), job, "a", now);
        cache.acquire(key(1), items.clone(), job, "b", now);
        let answers = cache.built(key(1), Err("pip failed".into()), now);
        assert_eq!(answers.len(), 2);
        assert!(
            answers
                .iter()
                .all(|effect| matches!(effect, Effect::Answer { result: Err(message), .. } if message == "pip failed"))
        );
        assert_eq!(
            cache.acquire(key(1), items.clone(), job, "c", now),
            vec![Effect::Answer { waiter: "c", result: Err("pip failed".into()) }]
        );
        let later = now + FAILED_TTL + Duration::from_secs(1);
        assert!(
            matches!(cache.acquire(key(1), items, job, "d", later)[0], Effect::Build { .. }),
            "tried again after the TTL"
        );
    }

    #[test]
    fn unused_items_go_oldest_first_when_over_the_limit_and_jobs_keep_theirs() {
        let mut cache = EnvCache::new(15);
        let now = Instant::now();
        let (one, two) = (JobId::from_counter(1), JobId::from_counter(2));
        let a = vec![item(ItemKind::WorkingDir, "a")];
        let b = vec![item(ItemKind::WorkingDir, "b")];
        cache.acquire(key(1), a.clone(), one, (), now);
        cache.built(key(1), Ok((context(), vec![(a[0].clone(), 10)])), now);
        cache.acquire(key(2), b.clone(), two, (), now);
        assert!(
            cache
                .built(key(2), Ok((context(), vec![(b[0].clone(), 10)])), now)
                .iter()
                .all(|e| !matches!(e, Effect::Delete(_)))
        );
        assert!(cache.release(key(1)).is_empty(), "job one still runs");
        assert_eq!(cache.job_finished(one), vec![Effect::Delete(a[0].clone())]);
        assert_eq!(cache.used_bytes(), 10);
        cache.release(key(2));
        assert!(cache.job_finished(two).is_empty(), "within the limit now");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever happens, an item in use is never deleted, sizes add up, and
        /// once every worker and job is gone the cache is within its limit.
        #[test]
        fn in_use_items_are_never_deleted(ops in proptest::collection::vec((0u8..5, 0u8..4, 0u8..3, 1u64..50), 1..80), limit in 0u64..120) {
            let mut cache: EnvCache<u32> = EnvCache::new(limit);
            let now = Instant::now();
            let mut held: Vec<EnvKey> = Vec::new();
            let mut building: Vec<EnvKey> = Vec::new();
            let mut waiting: Vec<EnvKey> = Vec::new();
            let items_of = |n: u8| vec![item(ItemKind::Executable, "exe"), item(ItemKind::WorkingDir, &format!("w{}", n % 3))];
            for (op, env, job, size) in ops {
                let job = JobId::from_counter(job as u32 + 1);
                let effects = match op {
                    0 | 1 => {
                        let effects = cache.acquire(key(env), items_of(env), job, 0, now);
                        let answered = effects.iter().find_map(|e| match e { Effect::Answer { result, .. } => Some(result.is_ok()), _ => None });
                        match answered {
                            Some(true) => held.push(key(env)),
                            Some(false) => {}
                            None => waiting.push(key(env)),
                        }
                        building.extend(effects.iter().filter_map(|e| match e { Effect::Build { key, .. } => Some(*key), _ => None }));
                        effects
                    }
                    2 => match building.pop() {
                        Some(key) => {
                            let sizes = items_of(key.0[0]).into_iter().map(|id| (id, size)).collect();
                            held.extend(waiting.iter().filter(|waiter| **waiter == key));
                            waiting.retain(|waiter| *waiter != key);
                            cache.built(key, Ok((context(), sizes)), now)
                        }
                        None => Vec::new(),
                    },
                    3 => match held.pop() { Some(key) => cache.release(key), None => Vec::new() },
                    _ => cache.job_finished(job),
                };
                for effect in effects {
                    if let Effect::Delete(id) = effect {
                        prop_assert!(!cache.in_use(&id), "deleted {:?} while in use", id);
                        let in_held_env = held.iter().chain(&waiting).any(|key| items_of(key.0[0]).contains(&id));
                        prop_assert!(!in_held_env, "deleted {:?} that a live worker or build needs", id);
                    }
                }
            }
            for key in held.drain(..) { cache.release(key); }
            for key in building.drain(..) { cache.built(key, Err("stopped".into()), now); }
            for job in 1..=3 { cache.job_finished(JobId::from_counter(job)); }
            prop_assert!(cache.used_bytes() <= limit, "{} bytes over the {} limit with nothing in use", cache.used_bytes(), limit);
        }
    }
}
