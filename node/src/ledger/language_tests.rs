//! Worker languages: pools per language, and what a Python worker that cannot
//! start says.

use super::*;

#[test]
fn workers_of_one_language_never_serve_another_s_leases() {
    let mut harness = Harness::new();
    harness.step(Op::Request { half_cpus: 2, half_gpus: 0, job: 0, actor: false, caller: 0, group: None });
    harness.step(Op::Register(0));
    harness.step(Op::Return(0));
    assert_eq!(harness.live(Some(true)).len(), 1, "one idle Rust worker");
    let mut request =
        lease_request(harness.jobs[0].clone(), ResourceSet::new().with(names::CPU, Quantity::from_whole(1)));
    request.language = manta_proto::task::Language::Python;
    let (_, effects) = harness.ledger.request(request, LinkId::for_test(1), harness.now);
    let launch = effects.iter().find_map(|effect| match effect {
        Effect::StartWorker { launch, .. } => Some(launch.clone()),
        _ => None,
    });
    let launch = launch.expect("a Python lease starts a Python worker, not the idle Rust one");
    assert_eq!(launch.language, manta_proto::task::Language::Python);
    assert_eq!(launch.executable_package(), "", "a Python worker needs no Rust program from the cluster");
    harness.apply(effects);
    // A Python worker that dies before registering (no `manta` package) says what to install.
    let starting = harness.live(Some(false));
    assert_eq!(starting.len(), 1);
    harness.processes.remove(&starting[0]);
    let (_, effects) = harness.ledger.worker_exited(starting[0], "exit status: 1", harness.now);
    let reason = effects.iter().find_map(|effect| match effect {
        Effect::Cancel { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.is_some_and(|reason| reason.contains("install the `manta` Python package")));
    harness.apply(effects);
    harness.finish();
}
