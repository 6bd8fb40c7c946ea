//! The autoscaler scenario: work that only an autoscaled node type can run,
//! a STRICT_SPREAD group wider than the cluster, then a demand nothing can
//! meet. The test says when each phase starts (a line on stdin) and watches
//! the cluster from outside.

use std::time::{Duration, Instant};

use manta::{PlacementStrategy, TaskOptions, bundle};

use super::{check, where_am_i};

fn wait_for(phase: &str) {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap_or_else(|_| panic!("the test says when {phase} starts"));
    check(&format!("the test asks for {phase}"), line.trim() == phase, &line);
}

/// Milliseconds since the epoch (the test compares them with its own clock).
fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

pub fn autoscale() -> manta::Result<()> {
    println!("autoscale ready");
    wait_for("beta");
    // Four tasks only type `beta` can run (the head has no CPU for work).
    let started = Instant::now();
    let beta = || TaskOptions::default().num_cpus(1.0).resource("beta", 1.0);
    let first = where_am_i::with_options(beta(), 0u64);
    let rest: Vec<_> = (0..3).map(|_| where_am_i::with_options(beta(), 200u64)).collect();
    let first_node = first.get()?;
    println!("first beta task ran after {} ms", started.elapsed().as_millis());
    let mut nodes: Vec<String> = manta::get_all(&rest)?;
    nodes.push(first_node);
    nodes.sort();
    nodes.dedup();
    println!("beta tasks done on {} node(s) after {} ms", nodes.len(), started.elapsed().as_millis());

    wait_for("spread");
    let started = Instant::now();
    let group = manta::placement_group(vec![bundle([("CPU", 1.0)]); 3], PlacementStrategy::StrictSpread)?;
    check("the STRICT_SPREAD group is placed", group.wait(Duration::from_secs(60))?, ());
    let mut holders: Vec<_> = group.bundle_nodes()?.into_iter().flatten().collect();
    holders.sort();
    holders.dedup();
    println!("group placed on {} nodes after {} ms", holders.len(), started.elapsed().as_millis());
    manta::remove_placement_group(&group)?;
    println!("group removed at {}", unix_ms());

    wait_for("infeasible");
    let _never = where_am_i::with_options(TaskOptions::default().num_cpus(1.0).resource("unobtainium", 1.0), 0u64);
    println!("infeasible task submitted");

    wait_for("request");
    manta::request_resources(0, vec![bundle([("beta", 1.0)]); 2])?;
    println!("resources requested");
    wait_for("clear");
    manta::request_resources(0, Vec::new())?;
    println!("request cleared");
    wait_for("exit");
    Ok(())
}
