//! Driver programs for the integration tests: `scenarios <name> [args]`.
//! Each prints `ok: <check>` lines and exits 0, or panics (exit 101) with what failed.
//! The binary is also its own worker binary (`#[manta::main]`).

use std::collections::BTreeSet;
use std::io::BufRead;
use std::time::{Duration, Instant};

use manta::{ActorOptions, Error, Lifetime, ObjectRef, TaskOptions};

#[path = "scenarios/autoscale.rs"]
mod autoscale;
#[path = "scenarios/faults.rs"]
mod faults;
#[path = "scenarios/objects.rs"]
mod objects;
#[path = "scenarios/observe.rs"]
mod observe;
#[path = "scenarios/runtime_env.rs"]
mod runtime_env;
#[path = "scenarios/scheduling.rs"]
mod scheduling;
#[path = "scenarios/spill.rs"]
mod spill;

#[manta::remote]
fn where_am_i(millis: u64) -> String {
    std::thread::sleep(Duration::from_millis(millis));
    manta::context().unwrap().node_id.to_string()
}

#[manta::remote]
fn increment(value: i64) -> i64 {
    value + 1
}

#[manta::remote]
fn fan_out(width: i64) -> i64 {
    // A task that submits tasks and waits for them (its CPU is lent meanwhile).
    let refs: Vec<_> = (0..width).map(increment::remote).collect();
    manta::get_all(&refs).unwrap().into_iter().sum()
}

#[manta::remote]
fn fails(message: String) -> Result<i64, String> {
    Err(message)
}

#[manta::remote]
fn panics() -> i64 {
    panic!("boom from a task")
}

#[manta::remote]
fn sleeps(millis: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(millis));
    std::process::id()
}

#[manta::remote]
fn later(millis: u64, value: i64) -> i64 {
    std::thread::sleep(Duration::from_millis(millis));
    value
}

#[manta::remote]
fn my_pid() -> u32 {
    std::process::id()
}

#[manta::remote]
fn bump(counter: TallyHandle, times: u32) -> i64 {
    let mut last = 0;
    for _ in 0..times {
        last = counter.add(1).get().unwrap();
    }
    last
}

#[manta::remote(num_returns = 2)]
fn split(value: i64) -> (i64, String) {
    (value * 2, format!("half is {}", value / 2))
}

#[manta::remote]
fn read_env(key: String) -> Option<String> {
    std::env::var(key).ok()
}

struct Tally {
    total: i64,
}

#[manta::actor]
impl Tally {
    fn new(start: i64) -> Self {
        Tally { total: start }
    }

    fn add(&mut self, amount: i64) -> i64 {
        self.total += amount;
        self.total
    }

    fn total(&self) -> i64 {
        self.total
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn node(&self) -> String {
        manta::context().unwrap().node_id.to_string()
    }

    fn refuse(&self, amount: i64) -> Result<i64, String> {
        if amount < 0 { Err(format!("negative amount {amount}")) } else { Ok(self.total + amount) }
    }

    fn explode(&mut self) -> i64 {
        panic!("tally exploded at {}", self.total)
    }

    fn gpu_view(&self) -> (Vec<u32>, String) {
        (manta::get_gpu_ids(), std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default())
    }

    fn make_ref(&self, value: i64) -> ObjectRef<i64> {
        manta::put(&value).unwrap()
    }

    fn restarted(&self) -> bool {
        manta::context().unwrap().was_restarted
    }

    async fn await_ref(&self, value: ObjectRef<i64>) -> i64 {
        // An ObjectRef is a future too.
        value.await.unwrap() + self.total
    }

    async fn slow_total(&self, millis: u64) -> i64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        self.total
    }
}

fn check(name: &str, condition: bool, detail: impl std::fmt::Debug) {
    assert!(condition, "check {name} failed: {detail:?}");
    println!("ok: {name}");
}

/// Starts and ends `count` worker processes, one at a time (an actor each, which
/// prints a line, answers once and is killed).
fn many_workers(count: usize) -> manta::Result<()> {
    for round in 0..count {
        let actor = Tally::remote(round as i64)?;
        check_quiet(actor.add(1).get()? == round as i64 + 1);
        manta::kill(&actor)?;
    }
    println!("ok: started and ended {count} workers");
    Ok(())
}

fn check_quiet(condition: bool) {
    assert!(condition, "an actor answered wrongly");
}

fn spread() -> manta::Result<()> {
    let refs: Vec<ObjectRef<String>> = (0..9).map(|_| where_am_i::remote(300u64)).collect();
    let nodes: BTreeSet<String> = manta::get_all(&refs)?.into_iter().collect();
    println!("nodes used: {}", nodes.len());
    check("tasks land on every node", nodes.len() == 3, &nodes);
    Ok(())
}

fn scheduling() -> manta::Result<()> {
    let alive: Vec<manta::NodeId> = manta::nodes()?
        .into_iter()
        .filter(|node| node.state == manta::NodeState::Alive)
        .map(|node| node.node_id)
        .collect();
    check("three alive nodes", alive.len() == 3, &alive);
    let spread = TaskOptions::default().scheduling_strategy(manta::SchedulingStrategy::Spread);
    // The local raylet learns of new nodes through the pushed cluster view (every 100 ms):
    // a cluster that just started may need a moment before every node is a target.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut used = BTreeSet::new();
    while used.len() < 3 && Instant::now() < deadline {
        let refs: Vec<_> = (0..6).map(|_| where_am_i::with_options(spread.clone(), 0u64)).collect();
        used = manta::get_all(&refs)?.into_iter().collect();
    }
    check("SPREAD covers every node", used.len() == 3, &used);
    for node_id in &alive {
        let pinned = TaskOptions::default()
            .scheduling_strategy(manta::SchedulingStrategy::NodeAffinity { node_id: *node_id, soft: false });
        let ran_on = where_am_i::with_options(pinned, 0u64).get()?;
        check("hard node affinity runs on that node", ran_on == node_id.to_string(), (&ran_on, node_id));
    }
    let gone: manta::NodeId = "ee".repeat(16).parse().unwrap();
    let hard = TaskOptions::default()
        .scheduling_strategy(manta::SchedulingStrategy::NodeAffinity { node_id: gone, soft: false });
    let refused = where_am_i::with_options(hard, 0u64).get();
    check(
        "hard affinity to a dead node is unschedulable",
        matches!(&refused, Err(Error::Unschedulable(message)) if message.contains("dead")),
        &refused,
    );
    let soft = TaskOptions::default()
        .scheduling_strategy(manta::SchedulingStrategy::NodeAffinity { node_id: gone, soft: true });
    check("soft affinity falls back", where_am_i::with_options(soft, 0u64).get().is_ok(), ());
    let placed = Tally::options(
        ActorOptions::new()
            .scheduling_strategy(manta::SchedulingStrategy::NodeAffinity { node_id: alive[2], soft: false }),
    )
    .remote(0i64)?;
    let _ = placed.total().get()?;
    Ok(())
}

fn gpus() -> manta::Result<()> {
    let first = Tally::options(ActorOptions::new().num_gpus(1.0)).remote(0i64)?;
    let second = Tally::options(ActorOptions::new().num_gpus(1.0)).remote(0i64)?;
    let (first_ids, first_env) = first.gpu_view().get()?;
    let (second_ids, second_env) = second.gpu_view().get()?;
    let mut envs = vec![first_env.clone(), second_env.clone()];
    envs.sort();
    check("two GPU actors see CUDA_VISIBLE_DEVICES 0 and 1", envs == ["0", "1"], &envs);
    check(
        "get_gpu_ids matches",
        first_ids.len() == 1 && first_ids[0].to_string() == first_env && second_ids.len() == 1,
        (&first_ids, &second_ids),
    );
    drop(first);
    drop(second);
    let halves: Vec<_> =
        (0..2).map(|_| Tally::options(ActorOptions::new().num_gpus(0.5)).remote(0i64)).collect::<manta::Result<_>>()?;
    let shared: Vec<String> =
        halves.iter().map(|half| half.gpu_view().get().map(|(_, env)| env)).collect::<manta::Result<_>>()?;
    check("two half-GPU actors share one device", shared[0] == shared[1] && !shared[0].is_empty(), &shared);
    let refused = where_am_i::with_options(TaskOptions::default().num_gpus(1.5), 0u64).get();
    check(
        "num_gpus 1.5 is refused",
        matches!(&refused, Err(Error::Unschedulable(message)) if message.contains("whole number")),
        &refused,
    );
    check("the driver has no GPU ids", manta::get_gpu_ids().is_empty(), ());
    let t4 = where_am_i::with_options(TaskOptions::default().num_gpus(1.0).accelerator_type("T4"), 0u64).get();
    check("a task asking for the node's accelerator type runs", t4.is_ok(), &t4);
    let a100 = where_am_i::with_options(TaskOptions::default().accelerator_type("A100"), 0u64);
    let waited = a100.get_timeout(Duration::from_millis(300));
    check("one asking for another accelerator waits", matches!(&waited, Err(Error::GetTimeout(_))), &waited);
    Ok(())
}

fn chains() -> manta::Result<()> {
    let mut value = increment::remote(0i64);
    for _ in 0..20 {
        value = increment::remote(value);
    }
    check("a chain of 21 ObjectRefs resolves", value.get()? == 21, value.get());
    let put = manta::put(&41i64)?;
    check("a put object feeds a task", increment::remote(&put).get()? == 42, ());
    check("tasks submit tasks", fan_out::remote(10i64).get()? == 55, ());
    let (double, text) = split::remote(10i64);
    check("multiple returns", double.get()? == 20 && text.get()? == "half is 5", ());
    let nested = manta::put(&vec![increment::remote(1i64), increment::remote(2i64)])?;
    let inner: Vec<ObjectRef<i64>> = nested.get()?;
    check("refs nested in a value stay refs", inner[0].get()? + inner[1].get()? == 5, ());
    let env = read_env::with_options(TaskOptions::default().env_var(("TASK_LEVEL", "yes")), "TASK_LEVEL".to_string());
    check("task env_vars reach the task", env.get()?.as_deref() == Some("yes"), ());
    let job_env = read_env::remote("JOB_LEVEL".to_string());
    check("job runtime_env reaches tasks", job_env.get()?.as_deref() == Some("from-job"), ());
    Ok(())
}

fn actors() -> manta::Result<()> {
    let tally = Tally::remote(0i64)?;
    let bumps: Vec<_> = (0..4).map(|_| bump::remote(tally.clone(), 5u32)).collect();
    manta::get_all(&bumps)?;
    check("an actor called from four tasks saw every call", tally.total().get()? == 20, ());
    let ordered: Vec<_> = (1..=50).map(|_| tally.add(1)).collect();
    let values = manta::get_all(&ordered)?;
    check("calls from one caller run in order", values == (21..=70).collect::<Vec<_>>(), &values);
    let refused = tally.refuse(-5).get();
    check(
        "an Err from a method is a task error",
        matches!(&refused, Err(Error::Task { message, .. }) if message.contains("negative amount -5")),
        &refused,
    );
    check("the actor goes on after an Err", tally.refuse(5).get()? == 75, ());
    check("async methods", tally.slow_total(20u64).get()? == 70, ());

    let fragile = Tally::options(ActorOptions::new().max_restarts(1)).remote(7i64)?;
    let first = fragile.explode().get();
    check(
        "a panic fails that call",
        matches!(&first, Err(Error::Task { panicked: true, message, .. }) if message.contains("exploded at 7")),
        &first,
    );
    check(
        "the actor restarted (constructor re-run, state reset)",
        fragile.total().get()? == 7 && fragile.restarted().get()?,
        (),
    );
    let _ = fragile.explode().get();
    let after = fragile.total().get();
    check(
        "out of restarts: actor died with the panic as cause",
        matches!(&after, Err(Error::ActorDied { cause }) if cause.contains("exploded")),
        &after,
    );

    let concurrent = Tally::options(ActorOptions::new().max_concurrency(4)).remote(1i64)?;
    let started = Instant::now();
    let slow: Vec<_> = (0..4).map(|_| concurrent.slow_total(300u64)).collect();
    manta::get_all(&slow)?;
    check("max_concurrency runs calls at once", started.elapsed() < Duration::from_millis(900), started.elapsed());

    check("an ObjectRef passed as a ref can be awaited", tally.await_ref(increment::remote(4i64)).get()? == 75, ());

    let dropped = Tally::remote(0i64)?;
    let pid = dropped.pid().get()?;
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check("dropping the last handle ends the actor", !std::path::Path::new(&format!("/proc/{pid}")).exists(), pid);

    let owner = Tally::remote(0i64)?;
    let fetched: ObjectRef<i64> = owner.make_ref(9i64).get()?;
    let orphan: ObjectRef<i64> = owner.make_ref(10i64).get()?;
    check("a ref owned by an actor resolves", fetched.get()? == 9, ());
    manta::kill(&owner)?;
    let lost = orphan.get_timeout(Duration::from_secs(20));
    check("an object whose owner died is lost (owner died)", matches!(&lost, Err(Error::OwnerDied(_))), &lost);
    check("a copy fetched before the owner died stays readable", fetched.get()? == 9, ());

    let doomed = Tally::remote(0i64)?;
    manta::kill(&doomed)?;
    let killed = doomed.total().get_timeout(Duration::from_secs(10));
    check("a killed actor's calls fail with ActorDied", matches!(killed, Err(Error::ActorDied { .. })), &killed);

    // Plain calls go out from the caller's thread only while none waits in the
    // handle's sender task: one waiting for its argument holds back those after it.
    let sequence = Tally::remote(0i64)?;
    let warmed = sequence.add(1i64).get()?;
    let late = later::remote(300u64, 10i64);
    let mixed = vec![sequence.add(&late), sequence.add(1i64), sequence.add(1i64)];
    let values = manta::get_all(&mixed)?;
    check(
        "a call waiting for its argument holds back the calls after it",
        warmed == 1 && values == [11, 12, 13],
        &values,
    );
    Ok(())
}

fn errors() -> manta::Result<()> {
    let failed = fails::remote("bad input".to_string()).get();
    check(
        "task error carries message and name",
        matches!(&failed, Err(Error::Task { task, message, panicked: false }) if task == "fails" && message == "bad input"),
        &failed,
    );
    let text = failed.unwrap_err().to_string();
    check("task error reads well", text.contains("fails") && text.contains("bad input"), &text);
    let panicked = panics::remote().get();
    check(
        "a panic is a task error",
        matches!(&panicked, Err(Error::Task { panicked: true, message, .. }) if message.contains("boom from a task")),
        &panicked,
    );
    let slow = sleeps::remote(2000u64);
    let timeout = slow.get_timeout(Duration::from_millis(100));
    check("get timeout", matches!(timeout, Err(Error::GetTimeout(_))), &timeout);
    let unknown: Vec<_> =
        manta::__private::submit_task("no::such::function#0", "ghost", vec![], TaskOptions::default(), 1);
    let unknown = manta::__private::typed_ref::<i64>(unknown.into_iter().next().unwrap()).get();
    check(
        "unknown function is named",
        matches!(&unknown, Err(Error::UnknownFunction(message)) if message.contains("no::such::function")),
        &unknown,
    );
    let wrong_arg = manta::__private::submit_task(
        increment::KEY,
        "increment",
        vec![manta::Arg::value("text")],
        TaskOptions::default(),
        1,
    );
    let wrong_arg = manta::__private::typed_ref::<i64>(wrong_arg.into_iter().next().unwrap()).get();
    check("argument type mismatch", matches!(&wrong_arg, Err(Error::TypeMismatch(_))), &wrong_arg);
    let number = manta::put(&5i64)?;
    let as_text = manta::__private::typed_ref::<String>(number.untyped().clone()).get();
    check("result type mismatch", matches!(&as_text, Err(Error::TypeMismatch(_))), &as_text);
    let missing = manta::get_actor::<Tally>("nobody-has-this-name");
    check("unknown actor name", matches!(missing, Err(Error::ActorNotFound { .. })), ());
    let huge = increment::with_options(TaskOptions::default().resource("unobtainium", 1.0), 1i64);
    let waited = huge.get_timeout(Duration::from_millis(300));
    check("a task no node can run waits (as in Ray)", matches!(&waited, Err(Error::GetTimeout(_))), &waited);
    let deadline = Instant::now() + Duration::from_secs(10);
    let reported = loop {
        let nodes = manta::nodes()?;
        let demand = nodes.iter().flat_map(|node| node.pending_demand.iter());
        if demand.clone().any(|demand| demand.infeasible && demand.resources.get("unobtainium") > manta::Quantity::ZERO)
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    check("and is reported as infeasible demand", reported, ());
    let first = Tally::options(ActorOptions::new().name("unique")).remote(0i64)?;
    let second = Tally::options(ActorOptions::new().name("unique")).remote(0i64);
    check("a taken name is refused", matches!(second, Err(Error::ActorNameTaken { .. })), ());
    first.add(3).get()?;
    let same = Tally::options(ActorOptions::new().name("unique").get_if_exists(true)).remote(99i64)?;
    check("get_if_exists returns the existing actor", same.total().get()? == 3, ());
    let bad_wait = manta::wait(std::slice::from_ref(&number), 2, None);
    check("wait refuses num_returns > len", matches!(bad_wait, Err(Error::InvalidArgument(_))), ());
    Ok(())
}

fn named_hold(name: &str, detached: bool) -> manta::Result<()> {
    let lifetime = if detached { Lifetime::Detached } else { Lifetime::NonDetached };
    let options = ActorOptions::new().name(name).namespace("shared").lifetime(lifetime);
    let tally = Tally::options(options).remote(100i64)?;
    println!("actor-pid: {}", tally.pid().get()?);
    println!("ready");
    if !detached {
        // Keep the job (and so the actor) alive until the test closes our stdin.
        for _ in std::io::stdin().lock().lines() {}
    }
    Ok(())
}

fn named_call(name: &str) -> manta::Result<()> {
    let tally = manta::get_actor_in::<Tally>(name, "shared")?;
    println!("total: {}", tally.add(1).get()?);
    Ok(())
}

fn hold_workers() -> manta::Result<()> {
    let tally = Tally::remote(0i64)?;
    println!("worker-pid: {}", tally.pid().get()?);
    let pids: Vec<_> = (0..2).map(|_| my_pid::remote()).collect();
    for pid in manta::get_all(&pids)? {
        println!("worker-pid: {pid}");
    }
    let _running: Vec<_> = (0..2).map(|_| sleeps::remote(60_000u64)).collect();
    std::thread::sleep(Duration::from_millis(300));
    println!("ready");
    std::thread::sleep(Duration::from_secs(120));
    Ok(())
}

fn embedded() -> manta::Result<()> {
    let started = Instant::now();
    let job = manta::Builder::new().num_cpus(1.0).init()?;
    println!("init took {:?}", started.elapsed());
    check("embedded tasks", increment::remote(1i64).get()? == 2, ());
    check("a task blocked in get lends its only CPU to its children", fan_out::remote(3i64).get()? == 6, ());
    let tally = Tally::remote(1i64)?;
    check("embedded actor", tally.add(1).get()? == 2, ());
    drop(job);
    Ok(())
}

/// The variables a node starts a worker with (the token among them).
const WORKER_CONTRACT: [&str; 6] =
    ["MANTA_TOKEN", "MANTA_WORKER_MODE", "MANTA_WORKER_ID", "MANTA_NODE_ADDRESS", "MANTA_GCS_ADDRESS", "MANTA_JOB_ID"];

/// Which of them a task's process, and a subprocess it starts, can see.
#[manta::remote]
fn manta_variables_seen() -> (Vec<String>, String) {
    let own: Vec<String> =
        WORKER_CONTRACT.iter().filter(|name| std::env::var_os(name).is_some()).map(|name| name.to_string()).collect();
    let child = std::process::Command::new("env").output().map(|output| output.stdout).unwrap_or_default();
    let child: Vec<String> = String::from_utf8_lossy(&child)
        .lines()
        .filter_map(|line| line.split('=').next())
        .filter(|name| WORKER_CONTRACT.contains(name))
        .map(str::to_string)
        .collect();
    (own, child.join(","))
}

/// A task neither keeps manta's worker variables (the token among them) nor passes them on.
#[manta::remote]
fn shout(line: String) -> String {
    println!("{line}");
    line
}

/// A job for the dashboard's tests: a placement group, a named actor with calls,
/// finished and failed tasks, a line in a worker's log, then a line of output
/// every 300 ms until it is stopped.
fn dashboard() -> Result<(), Error> {
    use manta::{PlacementStrategy, bundle};
    let group = manta::placement_group(vec![bundle([("CPU", 1.0)])], PlacementStrategy::Pack)?;
    group.ready()?;
    let tally = Tally::options(ActorOptions::new().name("dash-tally")).remote(0i64)?;
    for _ in 0..5 {
        tally.add(1).get()?;
    }
    let values = manta::get_all(&(0..20).map(increment::remote).collect::<Vec<_>>())?;
    let failed = fails::remote("failed on purpose for the dashboard".to_string()).get();
    check("the failing task failed", failed.is_err(), &failed);
    shout::remote("a line from a worker for the dashboard".to_string()).get()?;
    println!("dashboard scenario ready: {} tasks, actor total {}", values.len(), tally.total().get()?);
    let mut tick = 0u64;
    loop {
        println!("tick {tick}");
        tick += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn worker_environment() -> Result<(), Error> {
    let (own, child) = manta_variables_seen::remote().get()?;
    check("the task's process has none of the worker variables", own.is_empty(), &own);
    check("a subprocess of the task inherits none", child.is_empty(), &child);
    Ok(())
}

#[manta::main]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().map(String::as_str).unwrap_or("");
    if scenario == "embedded" {
        embedded().unwrap();
        return;
    }
    // Runtime-env scenarios start their own job, with the environment under test.
    if let Some(result) = runtime_env::run(scenario, &args) {
        result.unwrap();
        return;
    }
    let _job = manta::Builder::new().env_var("JOB_LEVEL", "from-job").init().expect("init");
    let result = match scenario {
        "spread" => spread(),
        "chains" => chains(),
        "scheduling" => scheduling(),
        "gpus" => gpus(),
        "actors" => actors(),
        "errors" => errors(),
        "named-hold" => named_hold(&args[1], false),
        "detached-create" => named_hold(&args[1], true),
        "named-call" => named_call(&args[1]),
        "hold-workers" => hold_workers(),
        "big-objects" => objects::big_objects(),
        "two-nodes" => objects::two_nodes(),
        "many-workers" => many_workers(args[1].parse().expect("a worker count")),
        "fenced-actor" => faults::fenced_actor(),
        "cancel" => scheduling::cancellation(),
        "pipeline-send-back" => scheduling::pipeline_send_back(),
        "placement-groups" => scheduling::placement_groups(),
        "pg-reschedule" => scheduling::placement_group_reschedule(),
        "log-flood" => {
            let lines: u32 = args.get(1).and_then(|lines| lines.parse().ok()).unwrap_or(5000);
            let printed = scheduling::flood::remote(lines).get().map(|_| ());
            println!("flood done");
            printed
        }
        "store-full" => objects::store_full(),
        "spill" => spill::spill(),
        "head-restart" => faults::head_restart(),
        "metrics" => observe::metrics(),
        "worker-retry" => faults::worker_retry(&args[1]),
        "actor-panics" => faults::actor_panics(),
        "retry-errors" => faults::retry_errors(&args[1]),
        "actor-restarts" => faults::actor_restarts(),
        "actor-call-retry" => faults::actor_call_retry(),
        "node-death-tasks" => faults::tasks_through_node_death(args[1].parse().expect("a task count")),
        "lineage" => faults::lineage(),
        "chaos" => faults::chaos(args[1].parse().expect("a task count"), false),
        "chaos-tiny" => faults::chaos(args[1].parse().expect("a task count"), true),
        "worker-environment" => worker_environment(),
        "dashboard" => dashboard(),
        "autoscale" => autoscale::autoscale(),
        other => panic!("unknown scenario {other:?}"),
    };
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
