//! The ledger under random event sequences: a simulated raylet carries out its
//! effects (processes that start, register, fail or exit; callers that return,
//! block or give up) and checks after every event that reserved plus available
//! is the total for every resource, that no worker is held by two leases, and,
//! at the end, that every request got exactly one outcome and nothing leaked.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use manta_proto::placement::{PrepareBundlesRequest, bundle_resources, rewrite_for_bundle};
use manta_proto::resources::{Quantity, ResourceSet, names};
use manta_proto::task::{JobConfig, RequestWorkerLeaseRequest, SchedulingStrategy};
use manta_proto::{JobId, NodeId, PlacementGroupId, WorkerId};
use proptest::prelude::*;

use super::*;
use manta_proto::task::CancelCause;

const CALLERS: u64 = 3;
const GROUPS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Request { half_cpus: u8, half_gpus: u8, job: u8, actor: bool, caller: u64, group: Option<usize> },
    Register(usize),
    StartFailed(usize),
    Exit(usize),
    Return(usize),
    Block(usize, bool),
    Abandon(usize),
    CallerGone(u64),
    JobFinished(u8),
    Reap(u64),
    Kill(usize),
    Owns(usize, bool),
    Prepare { group: usize, half_cpus: u8, commit: bool },
    Commit(usize),
    CancelBundles(usize),
    GroupRemoved(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..=4u8, 0..=2u8, 0..2u8, any::<bool>(), 0..CALLERS, proptest::option::weighted(0.2, 0..GROUPS)).prop_map(
            |(half_cpus, half_gpus, job, actor, caller, group)| Op::Request { half_cpus, half_gpus, job, actor, caller, group }
        ),
        4 => any::<usize>().prop_map(Op::Register),
        1 => any::<usize>().prop_map(Op::StartFailed),
        2 => any::<usize>().prop_map(Op::Exit),
        3 => any::<usize>().prop_map(Op::Return),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(index, blocked)| Op::Block(index, blocked)),
        1 => any::<usize>().prop_map(Op::Abandon),
        1 => (0..CALLERS).prop_map(Op::CallerGone),
        1 => (0..2u8).prop_map(Op::JobFinished),
        1 => (0..20u64).prop_map(Op::Reap),
        1 => any::<usize>().prop_map(Op::Kill),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(index, owns)| Op::Owns(index, owns)),
        1 => (0..GROUPS, 1..=3u8, any::<bool>()).prop_map(|(group, half_cpus, commit)| Op::Prepare { group, half_cpus, commit }),
        1 => (0..GROUPS).prop_map(Op::Commit),
        1 => (0..GROUPS).prop_map(Op::CancelBundles),
        1 => (0..GROUPS).prop_map(Op::GroupRemoved),
    ]
}

/// A plain lease request of `job` for `resources`.
fn lease_request(job: JobConfig, resources: ResourceSet) -> RequestWorkerLeaseRequest {
    RequestWorkerLeaseRequest {
        job,
        resources,
        runtime_env: Default::default(),
        strategy: SchedulingStrategy::Default,
        actor: None,
        detached: false,
        allow_spill: false,
        placement: None,
        backlog: 0,
        language: Default::default(),
    }
}

fn half(count: u8) -> Quantity {
    Quantity::from_units(i64::from(count) * Quantity::SCALE / 2)
}

fn pick<T: Copy>(items: &[T], index: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[index % items.len()])
}

/// A raylet that carries out the ledger's effects and remembers what it saw.
struct Harness {
    ledger: LeaseLedger,
    now: Instant,
    jobs: Vec<JobConfig>,
    groups: Vec<PlacementGroupId>,
    /// Live worker processes, and whether each has registered.
    processes: BTreeMap<WorkerId, bool>,
    /// Leases the callers hold: worker → request.
    held: HashMap<WorkerId, RequestId>,
    /// Outcomes per request (a grant, a reschedule, a cancel, or the caller giving up).
    outcomes: HashMap<RequestId, u32>,
    requests: Vec<RequestId>,
}

impl Harness {
    fn new() -> Self {
        let total = ResourceSet::new()
            .with(names::CPU, Quantity::from_whole(4))
            .with(names::GPU, Quantity::from_whole(2))
            .with(names::MEMORY, Quantity::from_whole(1000));
        let config = LedgerConfig {
            max_concurrent_starts: 3,
            idle_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            max_workers: 6,
        };
        let ledger =
            LeaseLedger::new(config, NodeId::random(), "127.0.0.1:1".into(), total, GpuAllocator::new(2, None));
        let jobs = (0..2)
            .map(|index| JobConfig {
                job_id: JobId::from_counter(index + 1),
                namespace: "ns".into(),
                executable: "_manta_exe_worker".into(),
                gcs_address: "127.0.0.1:2".into(),
            })
            .collect();
        Self {
            ledger,
            now: Instant::now(),
            jobs,
            groups: (0..GROUPS).map(|_| PlacementGroupId::random()).collect(),
            processes: BTreeMap::new(),
            held: HashMap::new(),
            outcomes: HashMap::new(),
            requests: Vec::new(),
        }
    }

    fn outcome(&mut self, request: RequestId) {
        *self.outcomes.entry(request).or_default() += 1;
    }

    /// Carries out effects as the raylet would; launches always succeed here
    /// (`Op::StartFailed` reports failures).
    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::StartWorker { worker_id, .. } => {
                    assert!(self.processes.insert(worker_id, false).is_none(), "worker {worker_id} started twice");
                    // The runtime env agent answers at once here.
                    assert!(self.ledger.env_ready(worker_id, self.now), "a new worker waits for its environment");
                }
                Effect::Grant { request, worker, .. } => {
                    self.outcome(request);
                    assert_eq!(
                        self.processes.get(&worker.worker_id),
                        Some(&true),
                        "granted a worker that is not registered"
                    );
                    let previous = self.held.insert(worker.worker_id, request);
                    assert!(previous.is_none(), "worker {} granted twice", worker.worker_id);
                }
                Effect::Reschedule { request, .. } | Effect::Cancel { request, .. } => self.outcome(request),
                Effect::Warn { .. } | Effect::KillWorker { .. } | Effect::NeedWholeView => {}
            }
        }
    }

    fn live(&self, registered: Option<bool>) -> Vec<WorkerId> {
        self.processes
            .iter()
            .filter(|(_, is_registered)| registered.is_none_or(|wanted| **is_registered == wanted))
            .map(|(worker_id, _)| *worker_id)
            .collect()
    }

    fn held_workers(&self) -> Vec<WorkerId> {
        let mut workers: Vec<WorkerId> = self.held.keys().copied().collect();
        workers.sort();
        workers
    }

    fn exit(&mut self, worker_id: WorkerId) {
        self.processes.remove(&worker_id);
        self.held.remove(&worker_id);
        let (_, effects) = self.ledger.worker_exited(worker_id, "signal: 9", self.now);
        self.apply(effects);
    }

    fn step(&mut self, op: Op) {
        self.now += Duration::from_millis(100);
        let now = self.now;
        match op {
            Op::Request { half_cpus, half_gpus, job, actor, caller, group } => {
                let mut resources =
                    ResourceSet::new().with(names::CPU, half(half_cpus)).with(names::GPU, half(half_gpus));
                let mut strategy = SchedulingStrategy::Default;
                if let Some(group) = group {
                    let pg_id = self.groups[group];
                    resources = rewrite_for_bundle(&ResourceSet::new().with(names::CPU, half(1)), &pg_id, Some(0));
                    strategy =
                        SchedulingStrategy::PlacementGroup { pg_id, bundle_index: Some(0), capture_child_tasks: false };
                }
                let request = RequestWorkerLeaseRequest {
                    strategy,
                    actor: actor.then(manta_proto::ActorId::random),
                    ..lease_request(self.jobs[usize::from(job)].clone(), resources)
                };
                let (id, effects) = self.ledger.request(request, LinkId::for_test(caller), now);
                self.requests.push(id);
                self.apply(effects);
            }
            Op::Register(index) => {
                if let Some(worker_id) = pick(&self.live(Some(false)), index) {
                    self.processes.insert(worker_id, true);
                    let effects = self
                        .ledger
                        .worker_registered(
                            worker_id,
                            format!("127.0.0.1:{index}"),
                            LinkId::for_test(1000 + index as u64),
                            now,
                        )
                        .unwrap();
                    self.apply(effects);
                    let again =
                        self.ledger.worker_registered(worker_id, "127.0.0.1:9".into(), LinkId::for_test(999), now);
                    assert_eq!(again.unwrap_err(), RegisterError::AlreadyRegistered(worker_id));
                }
            }
            Op::StartFailed(index) => {
                if let Some(worker_id) = pick(&self.live(Some(false)), index) {
                    self.processes.remove(&worker_id);
                    // Odd picks fail their runtime env, even ones their process start.
                    let cause = if index % 2 == 1 { CancelCause::RuntimeEnvSetupFailed } else { CancelCause::Other };
                    let effects = self.ledger.start_failed(worker_id, "no such file".into(), cause, now);
                    self.apply(effects);
                }
            }
            Op::Exit(index) => {
                if let Some(worker_id) = pick(&self.live(None), index) {
                    self.exit(worker_id);
                }
            }
            Op::Return(index) => {
                if let Some(worker_id) = pick(&self.held_workers(), index) {
                    self.held.remove(&worker_id);
                    let effects = self.ledger.lease_returned(worker_id, now);
                    self.apply(effects);
                }
            }
            Op::Block(index, blocked) => {
                if let Some(worker_id) = pick(&self.held_workers(), index) {
                    let effects = self.ledger.worker_blocked(worker_id, blocked, now);
                    self.apply(effects);
                }
            }
            Op::Abandon(index) => {
                let open: Vec<RequestId> =
                    self.requests.iter().copied().filter(|id| !self.outcomes.contains_key(id)).collect();
                if let Some(request) = pick(&open, index) {
                    self.outcome(request);
                    let effects = self.ledger.abandon(request, now);
                    self.apply(effects);
                }
            }
            Op::CallerGone(caller) => {
                let link = LinkId::for_test(caller);
                let effects = self.ledger.caller_gone(link, now);
                self.apply(effects);
            }
            Op::JobFinished(job) => {
                let effects = self.ledger.job_finished(self.jobs[usize::from(job)].job_id, now);
                self.apply(effects);
            }
            Op::Reap(seconds) => {
                self.now += Duration::from_secs(seconds);
                let effects = self.ledger.reap_idle(self.now);
                self.apply(effects);
            }
            Op::Kill(index) => {
                if let Some(worker_id) = pick(&self.live(None), index) {
                    let effects = self.ledger.kill_worker(worker_id, "test");
                    self.apply(effects);
                }
            }
            Op::Owns(index, owns) => {
                if let Some(worker_id) = pick(&self.live(None), index) {
                    self.ledger.set_owns_objects(worker_id, owns);
                }
            }
            Op::Prepare { group, half_cpus, commit } => {
                let bundles = vec![(0, ResourceSet::new().with(names::CPU, half(half_cpus)))];
                let request = PrepareBundlesRequest { pg_id: self.groups[group], bundles, commit };
                if let Ok(effects) = self.ledger.prepare_bundles(request, now) {
                    self.apply(effects);
                }
            }
            Op::Commit(group) => {
                if let Ok(effects) = self.ledger.commit_bundles(self.groups[group], now) {
                    self.apply(effects);
                }
            }
            Op::CancelBundles(group) => {
                let effects = self.ledger.cancel_bundles(self.groups[group], now);
                self.apply(effects);
            }
            Op::GroupRemoved(group) => {
                let effects = self.ledger.placement_group_removed(self.groups[group], now);
                self.apply(effects);
            }
        }
        self.check_resources();
    }

    /// For every resource of the node: what leases, starting workers and bundles
    /// hold, plus what is free, is the total.
    fn check_resources(&self) {
        let ledger = &self.ledger;
        let mut reserved: Vec<&ResourceSet> = Vec::new();
        let lease_holds: Vec<ResourceSet> = ledger
            .workers
            .values()
            .filter_map(|worker| match &worker.state {
                WorkerState::Leased(lease) => Some(pool::difference(&lease.resources, &lease.lent)),
                _ => None,
            })
            .collect();
        reserved.extend(lease_holds.iter());
        reserved.extend(
            ledger
                .pending
                .iter()
                .filter(|pending| pending.starting.is_some())
                .map(|pending| &pending.request.resources),
        );
        let bundle_locks: Vec<ResourceSet> = ledger
            .bundles
            .prepared
            .values()
            .chain(ledger.bundles.committed.values())
            .map(|bundles| bundles::bundle_sum(bundles))
            .collect();
        reserved.extend(bundle_locks.iter());
        let reserved = pool::sum(reserved);
        let resources = ledger.resources();
        for (name, total) in resources.total().iter() {
            let available = resources.available().get(name);
            assert_eq!(
                available.saturating_add(reserved.get(name)),
                total,
                "{name}: {available} free + {} reserved != {total} total",
                reserved.get(name)
            );
        }
        for (worker_id, worker) in &ledger.workers {
            let held_here = self.held.contains_key(worker_id);
            let leased = matches!(worker.state, WorkerState::Leased(_));
            assert_eq!(held_here, leased, "worker {worker_id}: held by a caller = {held_here}, leased = {leased}");
        }
    }

    /// Callers leave, groups go, processes exit: every request has ended once and
    /// everything is free again.
    fn finish(mut self) {
        for caller in 0..CALLERS {
            let effects = self.ledger.caller_gone(LinkId::for_test(caller), self.now);
            self.apply(effects);
        }
        for group in self.groups.clone() {
            let effects = self.ledger.cancel_bundles(group, self.now);
            self.apply(effects);
        }
        for worker_id in self.live(None) {
            self.exit(worker_id);
        }
        self.check_resources();
        for request in &self.requests {
            assert_eq!(self.outcomes.get(request), Some(&1), "request {request:?} must end exactly once");
        }
        assert_eq!(self.ledger.pending_count(), 0);
        assert_eq!(self.ledger.workers().count(), 0);
        let resources = self.ledger.resources();
        assert_eq!(resources.available(), resources.total(), "everything is free at the end");
        let no_devices_held = self.ledger.gpus.allocate(Quantity::from_whole(2));
        assert!(no_devices_held.is_some(), "every GPU device is free at the end");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn resources_add_up_and_every_request_ends_once(ops in proptest::collection::vec(op(), 1..120)) {
        let mut harness = Harness::new();
        for op in ops {
            harness.step(op);
        }
        harness.finish();
    }
}

#[test]
fn a_request_waits_for_its_worker_then_is_granted_once() {
    let mut harness = Harness::new();
    harness.step(Op::Request { half_cpus: 2, half_gpus: 0, job: 0, actor: false, caller: 0, group: None });
    let started = harness.live(Some(false));
    assert_eq!(started.len(), 1, "one worker started");
    assert_eq!(
        harness.ledger.resources().available().get(names::CPU),
        Quantity::from_whole(3),
        "reserved while it starts"
    );
    harness.step(Op::Register(0));
    assert_eq!(harness.held_workers(), started, "granted once registered");
    harness.step(Op::Return(0));
    harness.step(Op::Request { half_cpus: 2, half_gpus: 0, job: 0, actor: false, caller: 1, group: None });
    assert_eq!(harness.live(None).len(), 1, "the idle worker is reused");
    harness.finish();
}

#[test]
fn a_blocked_worker_lends_its_cpu_and_takes_back_what_is_free() {
    let mut harness = Harness::new();
    for caller in 0..2 {
        harness.step(Op::Request { half_cpus: 4, half_gpus: 0, job: 0, actor: false, caller, group: None });
        harness.step(Op::Register(0));
    }
    assert_eq!(harness.held.len(), 2, "4 CPUs: two leases of 2");
    let blocked = harness.held_workers()[0];
    harness.ledger.worker_blocked(blocked, true, harness.now);
    assert_eq!(harness.ledger.resources().available().get(names::CPU), Quantity::from_whole(2));
    harness.step(Op::Request { half_cpus: 2, half_gpus: 0, job: 1, actor: false, caller: 2, group: None });
    harness.step(Op::Register(0));
    assert_eq!(harness.held.len(), 3, "the lent CPU served another lease");
    let effects = harness.ledger.worker_blocked(blocked, false, harness.now);
    harness.apply(effects);
    assert_eq!(harness.ledger.resources().available().get(names::CPU), Quantity::ZERO, "took back the free CPU only");
    harness.check_resources();
    harness.finish();
}

#[test]
fn bundle_resources_are_offered_on_commit_and_gone_on_cancel() {
    let mut harness = Harness::new();
    harness.step(Op::Prepare { group: 0, half_cpus: 2, commit: false });
    assert_eq!(harness.ledger.resources().available().get(names::CPU), Quantity::from_whole(3));
    harness.step(Op::Commit(0));
    let pg_id = harness.groups[0];
    let bundle = bundle_resources(&ResourceSet::new().with(names::CPU, Quantity::from_whole(1)), &pg_id, 0);
    assert!(harness.ledger.resources().total().contains(&bundle));
    harness.step(Op::Request { half_cpus: 0, half_gpus: 0, job: 0, actor: false, caller: 0, group: Some(0) });
    harness.step(Op::Register(0));
    assert_eq!(harness.held.len(), 1, "granted in the bundle");
    let effects = harness.ledger.cancel_bundles(pg_id, harness.now);
    assert!(effects.iter().any(|effect| matches!(effect, Effect::KillWorker { .. })), "its worker is ended");
    assert!(!harness.ledger.resources().total().contains(&bundle));
    harness.check_resources();
    harness.finish();
}

#[test]
fn an_unknown_worker_cannot_register() {
    let mut harness = Harness::new();
    let stranger = WorkerId::random();
    assert_eq!(
        harness.ledger.worker_registered(stranger, "127.0.0.1:3".into(), LinkId::for_test(3), harness.now).unwrap_err(),
        RegisterError::Unknown(stranger)
    );
    harness.step(Op::Reap(1));
    harness.finish();
}

#[test]
fn a_leased_worker_answers_only_to_its_holder_and_itself() {
    use super::WorkerAct;
    let mut harness = Harness::new();
    harness.step(Op::Request { half_cpus: 2, half_gpus: 0, job: 0, actor: true, caller: 7, group: None });
    harness.step(Op::Register(0));
    let worker = harness.held_workers()[0];
    let (holder, stranger) = (LinkId::for_test(7), LinkId::for_test(8));
    let own_link = harness.ledger.workers().find(|(id, _)| **id == worker).and_then(|(_, record)| record.link).unwrap();
    for act in [WorkerAct::ReturnLease, WorkerAct::Block, WorkerAct::Kill] {
        assert_eq!(harness.ledger.permits(worker, act, holder), Ok(()), "{act:?} from the holder");
        let refused = harness.ledger.permits(worker, act, stranger).unwrap_err();
        assert!(refused.contains("only from the holder of its lease"), "{refused}");
    }
    assert_eq!(harness.ledger.permits(worker, WorkerAct::Block, own_link), Ok(()), "a worker reports its own blocking");
    assert!(harness.ledger.permits(worker, WorkerAct::Kill, own_link).is_err(), "but may not have itself killed");
    assert_eq!(harness.ledger.permits(WorkerId::random(), WorkerAct::Kill, stranger), Ok(()), "nothing to protect");
    harness.finish();
}

#[test]
fn a_worker_that_never_registers_is_ended_and_its_request_told_why() {
    let mut harness = Harness::new();
    harness.step(Op::Request { half_cpus: 2, half_gpus: 0, job: 0, actor: false, caller: 0, group: None });
    let started = harness.live(Some(false));
    assert_eq!(started.len(), 1);
    let late = harness.now + Duration::from_secs(61);
    let effects = harness.ledger.reap_idle(late);
    assert!(
        effects.iter().any(|effect| matches!(effect, Effect::KillWorker { worker_id, reason }
            if *worker_id == started[0] && reason.contains("did not register"))),
        "{effects:?}"
    );
    harness.exit(started[0]);
    assert_eq!(harness.outcomes.values().sum::<u32>(), 1, "the request ended with the worker");
    harness.finish();
}

#[test]
fn at_max_workers_a_request_waits_and_an_idle_worker_makes_room() {
    let mut harness = Harness::new();
    // Six idle workers of job 0 fill the cap (tiny CPU shares so resources never run out).
    for caller in 0..6 {
        harness.step(Op::Request { half_cpus: 0, half_gpus: 0, job: 0, actor: true, caller, group: None });
        harness.step(Op::Register(0));
    }
    for worker in harness.held_workers() {
        let effects = harness.ledger.lease_returned(worker, harness.now);
        harness.held.remove(&worker);
        harness.apply(effects);
    }
    assert_eq!(harness.live(None).len(), 6);
    // Job 1 cannot reuse them: it waits, and one idle worker is ended to make room.
    let request = lease_request(harness.jobs[1].clone(), ResourceSet::new());
    let (_, effects) = harness.ledger.request(request, LinkId::for_test(9), harness.now);
    let victims: Vec<WorkerId> = effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::KillWorker { worker_id, reason } if reason.contains("--max-workers") => Some(*worker_id),
            _ => None,
        })
        .collect();
    assert_eq!(victims.len(), 1, "one worker ends to make room: {effects:?}");
    assert!(!effects.iter().any(|effect| matches!(effect, Effect::StartWorker { .. })), "nothing starts past the cap");
    harness.apply(effects);
    harness.exit(victims[0]);
    assert_eq!(harness.live(Some(false)).len(), 1, "the waiting request's worker starts once there is room");
    harness.finish();
}

#[test]
fn a_rebuilt_program_never_gets_the_old_binary_s_workers() {
    let mut harness = Harness::new();
    harness.step(Op::Request { half_cpus: 2, half_gpus: 0, job: 0, actor: false, caller: 0, group: None });
    harness.step(Op::Register(0));
    harness.step(Op::Return(0));
    let idle = harness.live(Some(true));
    assert_eq!(idle.len(), 1);
    // Rebuilt in place, the program is another package: same job id, new workers.
    let rebuilt = JobConfig { executable: "_manta_exe_rebuilt".into(), ..harness.jobs[0].clone() };
    let request = lease_request(rebuilt, ResourceSet::new().with(names::CPU, Quantity::from_whole(1)));
    let (_, effects) = harness.ledger.request(request, LinkId::for_test(1), harness.now);
    assert!(
        effects.iter().any(|effect| matches!(effect, Effect::StartWorker { .. })),
        "same job id, another program: a new worker, not the idle one: {effects:?}"
    );
    // Another runtime env is another pool too.
    let mut request =
        lease_request(harness.jobs[0].clone(), ResourceSet::new().with(names::CPU, Quantity::from_whole(1)));
    request.runtime_env.env_vars.insert("A".into(), "1".into());
    let (_, other_env) = harness.ledger.request(request, LinkId::for_test(1), harness.now);
    assert!(
        other_env.iter().any(|effect| matches!(effect, Effect::StartWorker { .. })),
        "another runtime env: a new worker: {other_env:?}"
    );
    harness.apply(other_env);
    harness.apply(effects);
    harness.finish();
}

#[path = "view_tests.rs"]
mod view;

#[path = "language_tests.rs"]
mod language;
