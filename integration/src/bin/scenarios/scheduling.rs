//! Scenarios for cancellation, placement groups, and a worker that prints a lot.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use manta::{ActorOptions, Error, TaskOptions};

use super::{Tally, TallyHandle, check, increment, sleeps, where_am_i};

/// Marks itself started in the named tally, then runs until cancelled (or `limit_ms`),
/// marking the tally again (+100) when it noticed; `stubborn` ignores cancellation.
#[manta::remote]
fn until_cancelled(tally: String, limit_ms: u64, stubborn: bool) -> String {
    let marker = manta::get_actor::<Tally>(&tally).unwrap();
    marker.add(1).get().unwrap();
    let deadline = Instant::now() + Duration::from_millis(limit_ms);
    while Instant::now() < deadline {
        if !stubborn && manta::context().unwrap().is_canceled() {
            marker.add(100).get().unwrap();
            return "noticed".into();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    "ran out".into()
}

/// Submits `until_cancelled` and waits for it.
#[manta::remote]
fn parent_of(tally: String) -> String {
    let child = until_cancelled::remote(tally, 20_000u64, false);
    match child.get() {
        Ok(text) => text,
        Err(error) => error.to_string(),
    }
}

fn wait_for_total(tally: &TallyHandle, at_least: i64) -> manta::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let total = tally.total().get()?;
        if total >= at_least || Instant::now() > deadline {
            return Ok(total);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn cancellation() -> manta::Result<()> {
    let tally = Tally::options(ActorOptions::new().name("cancel-tally")).remote(0i64)?;
    let name = || "cancel-tally".to_string();

    let busy = sleeps::remote(1500u64);
    let queued = increment::remote(1i64);
    manta::cancel(&queued, false, false)?;
    let result = queued.get_timeout(Duration::from_secs(10));
    check("a queued task is cancelled", matches!(&result, Err(Error::TaskCancelled(_))), &result);
    busy.get()?;

    let running = until_cancelled::remote(name(), 20_000u64, false);
    wait_for_total(&tally, 1)?;
    manta::cancel(&running, false, false)?;
    let result = running.get_timeout(Duration::from_secs(10));
    check("a running task is cancelled", matches!(&result, Err(Error::TaskCancelled(_))), &result);
    let total = wait_for_total(&tally, 101)?;
    check("and saw is_canceled() turn true", total == 101, total);

    let stubborn = until_cancelled::remote(name(), 30_000u64, true);
    wait_for_total(&tally, 102)?;
    let started = Instant::now();
    manta::cancel(&stubborn, true, false)?;
    let result = stubborn.get_timeout(Duration::from_secs(10));
    check("force ends a task that ignores cancellation", matches!(&result, Err(Error::TaskCancelled(_))), &result);
    check("at once, without a retry", started.elapsed() < Duration::from_secs(5), started.elapsed());

    let parent = parent_of::remote(name());
    wait_for_total(&tally, 103)?;
    manta::cancel(&parent, false, true)?;
    let result = parent.get_timeout(Duration::from_secs(10));
    check("a recursive cancel cancels the parent", matches!(&result, Err(Error::TaskCancelled(_))), &result);
    let total = wait_for_total(&tally, 203)?;
    check("and the task it submitted", total == 203, total);

    let actor = Tally::remote(0i64)?;
    let slow = actor.slow_total(800);
    let next = actor.total();
    manta::cancel(&next, false, false)?;
    let result = next.get_timeout(Duration::from_secs(10));
    check("a queued actor call is cancelled", matches!(&result, Err(Error::TaskCancelled(_))), &result);
    check("the call before it still runs", slow.get()? == 0, ());
    let sleeping = actor.slow_total(20_000);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    manta::cancel(&sleeping, false, false)?;
    let result = sleeping.get_timeout(Duration::from_secs(10));
    check(
        "a running async actor method is dropped at its next await",
        matches!(&result, Err(Error::TaskCancelled(_))) && started.elapsed() < Duration::from_secs(5),
        (&result, started.elapsed()),
    );
    check("the actor lives on", actor.total().get()? == 0 && !actor.restarted().get()?, ());
    let refused = manta::cancel(&actor.slow_total(10), true, false);
    check("force-cancelling an actor call is refused", matches!(&refused, Err(Error::InvalidArgument(_))), &refused);
    Ok(())
}

/// Prints `lines` lines as fast as it can.
#[manta::remote]
pub fn flood(lines: u32) -> u32 {
    for index in 0..lines {
        println!("flood line {index}");
    }
    lines
}

/// The placement group a task runs in (captured), as seen by a child it submits.
#[manta::remote]
fn child_group() -> Option<String> {
    captured_group::remote().get().unwrap()
}

#[manta::remote]
fn captured_group() -> Option<String> {
    manta::get_current_placement_group().map(|group| group.to_string())
}

fn distinct(nodes: &[Option<manta::NodeId>]) -> usize {
    nodes.iter().flatten().collect::<BTreeSet<_>>().len()
}

pub fn placement_groups() -> manta::Result<()> {
    use manta::{PlacementGroupState, PlacementStrategy, SchedulingStrategy, bundle};
    let cpu = || bundle([("CPU", 1.0)]);

    let packed = manta::placement_group(vec![cpu(), cpu()], PlacementStrategy::StrictPack)?;
    packed.ready()?;
    let at = packed.bundle_nodes()?;
    check("STRICT_PACK puts every bundle on one node", distinct(&at) == 1 && at.len() == 2, &at);
    manta::remove_placement_group(&packed)?;

    let spread = manta::placement_group(vec![cpu(), cpu(), cpu()], PlacementStrategy::StrictSpread)?;
    spread.ready()?;
    let at = spread.bundle_nodes()?;
    check("STRICT_SPREAD puts each bundle on its own node", distinct(&at) == 3, &at);

    let in_bundle = |index| {
        TaskOptions::default().scheduling_strategy(SchedulingStrategy::placement_group(spread.id(), Some(index)))
    };
    let ran_on: manta::NodeId = where_am_i::with_options(in_bundle(1), 0u64).get()?.parse().unwrap();
    check("a task in bundle 1 runs on bundle 1's node", Some(ran_on) == at[1], (ran_on, &at));
    let actor = Tally::options(
        ActorOptions::new().scheduling_strategy(SchedulingStrategy::placement_group(spread.id(), Some(2))),
    )
    .remote(0i64)?;
    let actor_node: manta::NodeId = actor.node().get()?.parse().unwrap();
    check("an actor in bundle 2 lives on bundle 2's node", Some(actor_node) == at[2], (actor_node, &at));

    let capture = TaskOptions::default().scheduling_strategy(SchedulingStrategy::PlacementGroup {
        pg_id: spread.id(),
        bundle_index: Some(0),
        capture_child_tasks: true,
    });
    let child_saw = child_group::with_options(capture).get()?;
    check("a child of a capturing task runs in its group", child_saw == Some(spread.id().to_string()), &child_saw);

    let running = sleeps::with_options(in_bundle(0), 20_000u64);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    manta::remove_placement_group(&spread)?;
    let ended = running.get_timeout(Duration::from_secs(20));
    check(
        "removing a group ends what runs in it",
        ended.is_err() && !matches!(ended, Err(Error::GetTimeout(_))) && started.elapsed() < Duration::from_secs(15),
        (&ended, started.elapsed()),
    );
    check("and the group is REMOVED", spread.state()? == PlacementGroupState::Removed, ());

    wait_for_free_cpus(6.0)?;
    let packed = manta::placement_group(vec![cpu(), cpu()], PlacementStrategy::Pack)?;
    packed.ready()?;
    check("PACK uses one node when it can", distinct(&packed.bundle_nodes()?) == 1, packed.bundle_nodes()?);
    manta::remove_placement_group(&packed)?;
    // Placed against a node still holding PACK's CPUs, SPREAD would have to share a node.
    wait_for_free_cpus(6.0)?;
    let soft = manta::placement_group(vec![cpu(), cpu(), cpu()], PlacementStrategy::Spread)?;
    soft.ready()?;
    check("SPREAD uses distinct nodes when it can", distinct(&soft.bundle_nodes()?) == 3, soft.bundle_nodes()?);
    manta::remove_placement_group(&soft)?;

    let too_wide = manta::placement_group_with(
        vec![cpu(), cpu(), cpu(), cpu()],
        PlacementStrategy::StrictSpread,
        manta::PlacementGroupOptions::new().name("too-wide"),
    )?;
    check("STRICT_SPREAD with more bundles than nodes is not ready", !too_wide.wait(Duration::from_millis(500))?, ());
    check("it stays PENDING", too_wide.state()? == PlacementGroupState::Pending, too_wide.state());
    let found = manta::get_placement_group("too-wide")?;
    check("a named group is found by name", found.id() == too_wide.id(), ());
    println!("holding");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    Ok(())
}

/// Waits (up to 10 s) until the live nodes report `cpus` CPUs free: a removed
/// group's CPUs show as free once its nodes report again.
fn wait_for_free_cpus(cpus: f64) -> manta::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let free: f64 = manta::nodes()?
            .iter()
            .filter(|node| node.state == manta::NodeState::Alive)
            .map(|node| node.resources_available.get("CPU").as_f64())
            .sum();
        if free >= cpus {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A STRICT_SPREAD group of two bundles; the test kills a node holding one, then the
/// group must be placed again on the spare node.
pub fn placement_group_reschedule() -> manta::Result<()> {
    use manta::{PlacementGroupState, PlacementStrategy, bundle};
    let group =
        manta::placement_group(vec![bundle([("CPU", 1.0)]), bundle([("CPU", 1.0)])], PlacementStrategy::StrictSpread)?;
    group.ready()?;
    let before = group.bundle_nodes()?;
    let ids: Vec<String> = before.iter().flatten().map(|node| node.to_string()).collect();
    println!("bundles: {}", ids.join(" "));
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("the test says when it killed a node");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_rescheduling = false;
    let after = loop {
        let state = group.state()?;
        seen_rescheduling |= state == PlacementGroupState::Rescheduling;
        let nodes = group.bundle_nodes()?;
        // State and nodes come from two reads: wait until every bundle has a node again.
        if state == PlacementGroupState::Created && nodes != before && nodes.iter().all(Option::is_some) {
            break nodes;
        }
        assert!(Instant::now() < deadline, "the group was not placed again: {state:?} {nodes:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("seen RESCHEDULING: {seen_rescheduling}");
    let kept = before.iter().zip(&after).filter(|(old, new)| old == new).count();
    check("a group that lost a node is placed again (one bundle kept, one moved)", kept == 1, (&before, &after));
    check("still one bundle per node", distinct(&after) == 2, &after);
    Ok(())
}

/// A latch: `wait_open` blocks until `open` is called (or 60 s pass: false).
pub struct Latch {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

#[manta::actor]
impl Latch {
    fn new() -> Self {
        Latch { open: std::sync::Mutex::new(false), opened: std::sync::Condvar::new() }
    }

    fn wait_open(&self) -> bool {
        let open = self.open.lock().unwrap();
        let (open, _) = self.opened.wait_timeout_while(open, Duration::from_secs(60), |open| !*open).unwrap();
        *open
    }

    fn open(&self) -> bool {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
        true
    }

    fn close(&self) -> bool {
        *self.open.lock().unwrap() = false;
        true
    }
}

#[manta::remote]
fn quick() -> u8 {
    1
}

#[manta::remote]
fn wait_for_latch(latch: LatchHandle) -> bool {
    latch.wait_open().get().unwrap()
}

/// Like `wait_for_latch`, blocking in `wait` instead of `get`.
#[manta::remote]
fn wait_for_latch_in_wait(latch: LatchHandle) -> bool {
    let call = latch.wait_open();
    let (ready, _) = manta::wait(std::slice::from_ref(&call), 1, Some(Duration::from_secs(90))).unwrap();
    !ready.is_empty() && call.get().unwrap()
}

#[manta::remote]
fn open_latch(latch: LatchHandle) -> bool {
    latch.open().get().unwrap()
}

/// On a 1-CPU node: quick tasks make the lease push several tasks at once, then a
/// task that waits (in `get` or `wait`) for one submitted after it. The worker sends the
/// later one back unrun when the first blocks, and it runs on the CPU the blocked
/// task lent back, instead of waiting behind it forever.
pub fn pipeline_send_back() -> manta::Result<()> {
    let latch = Latch::options(ActorOptions::new().max_concurrency(2)).remote()?;
    for round in 0..4 {
        let warm: Vec<_> = (0..200).map(|_| quick::remote()).collect();
        let waiting = if round % 2 == 0 {
            wait_for_latch::remote(latch.clone())
        } else {
            wait_for_latch_in_wait::remote(latch.clone())
        };
        let opening = open_latch::remote(latch.clone());
        let started = Instant::now();
        let opened = waiting.get_timeout(Duration::from_secs(90))?;
        check(
            &format!("round {round}: a task blocked (get, then wait) on one queued behind it finishes"),
            opened && opening.get()? && manta::get_all(&warm)?.len() == 200,
            started.elapsed(),
        );
        latch.close().get()?;
    }
    Ok(())
}
