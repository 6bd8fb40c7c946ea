//! Scenarios for runtime environments. Each starts its own job (with the
//! runtime env under test), so `main` hands them the arguments before its own
//! `init`: a working dir shipped to other nodes, the program itself shipped,
//! scopes and inheritance, setup failures.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::time::{Duration, Instant};

use manta::{ActorOptions, Error, RuntimeEnv, SchedulingStrategy, TaskOptions};

use super::check;

#[manta::remote]
fn read_relative(path: String) -> (String, String) {
    let content = std::fs::read_to_string(&path).unwrap_or_else(|error| format!("cannot read {path}: {error}"));
    (content, manta::context().unwrap().node_id.to_string())
}

#[manta::remote]
fn env_of(key: String) -> Option<String> {
    std::env::var(key).ok()
}

#[manta::remote]
fn child_env_of(key: String) -> Option<String> {
    // A task submitted from a task inherits the submitting task's environment.
    env_of::remote(key).get().unwrap()
}

/// The virtualenv the task runs in, and where `python3` on its PATH puts `sys.prefix`.
#[manta::remote]
fn python_prefix() -> (Option<String>, String) {
    let output = std::process::Command::new("python3").args(["-c", "import sys; print(sys.prefix)"]).output();
    let prefix = output.map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string()).unwrap_or_default();
    (std::env::var("VIRTUAL_ENV").ok(), prefix)
}

/// What `python3 -c <code>` prints in the task's environment.
#[manta::remote]
fn python_says(code: String) -> String {
    let output = std::process::Command::new("python3").args(["-c", &code]).output();
    output
        .map(|output| format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
        .unwrap_or_else(|error| error.to_string())
        .trim()
        .to_string()
}

#[manta::remote]
fn node_and_pid() -> (String, u32) {
    (manta::context().unwrap().node_id.to_string(), std::process::id())
}

struct EnvProbe;

#[manta::actor]
impl EnvProbe {
    fn new() -> Self {
        EnvProbe
    }

    fn env(&self, key: String) -> Option<String> {
        std::env::var(key).ok()
    }

    fn read(&self, path: String) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|error| format!("cannot read {path}: {error}"))
    }

    fn node(&self) -> String {
        manta::context().unwrap().node_id.to_string()
    }
}

/// Runs a runtime-env scenario; `None` when `name` is not one.
pub fn run(name: &str, args: &[String]) -> Option<manta::Result<()>> {
    Some(match name {
        "runtime-env-working-dir" => working_dir(&args[1], &args[2]),
        "runtime-env-hold" => hold(&args[1]),
        "runtime-env-shipped" => shipped(),
        "runtime-env-failures" => failures(),
        "runtime-env-missing-dir" => missing_dir(&args[1]),
        "runtime-env-eager" => eager(&args[1], args[2] == "true"),
        "runtime-env-py-modules" => py_modules(&args[1]),
        "runtime-env-conflict" => conflict(),
        _ => return None,
    })
}

fn spread() -> TaskOptions {
    TaskOptions::default().scheduling_strategy(SchedulingStrategy::Spread)
}

/// A job whose working dir holds `data.txt`: tasks and an actor on other nodes
/// read it by relative path; task- and actor-level variables over the job's.
fn working_dir(dir: &str, expected: &str) -> manta::Result<()> {
    let env = RuntimeEnv::new().working_dir(dir).env_var("JOB_LEVEL", "from-job");
    let _job = manta::Builder::new().runtime_env(env).init()?;
    let reads: Vec<_> = (0..4).map(|_| read_relative::with_options(spread(), "data.txt".to_string())).collect();
    let reads = manta::get_all(&reads)?;
    let nodes: BTreeSet<&String> = reads.iter().map(|(_, node)| node).collect();
    check("tasks read the working dir's file by relative path", reads.iter().all(|(text, _)| text == expected), &reads);
    println!("nodes used: {}", nodes.len());

    let own = TaskOptions::default().runtime_env(RuntimeEnv::new().env_var("JOB_LEVEL", "from-task"));
    let overridden = env_of::with_options(own, "JOB_LEVEL".to_string()).get()?;
    check("a task's env_vars override the job's", overridden.as_deref() == Some("from-task"), &overridden);
    let plain = env_of::remote("JOB_LEVEL".to_string()).get()?;
    check("only for that task", plain.as_deref() == Some("from-job"), &plain);

    let probe = EnvProbe::options(ActorOptions::new().runtime_env(RuntimeEnv::new().env_var("ACTOR_LEVEL", "mine")))
        .remote()?;
    let seen = (probe.env("ACTOR_LEVEL".to_string()).get()?, probe.env("JOB_LEVEL".to_string()).get()?);
    check(
        "an actor sees its own variables over the job's",
        seen == (Some("mine".into()), Some("from-job".into())),
        &seen,
    );
    check("and works in the job's working dir", probe.read("data.txt".to_string()).get()? == expected, ());

    let parent = TaskOptions::default().runtime_env(RuntimeEnv::new().env_var("PARENT_LEVEL", "parent"));
    let inherited = child_env_of::with_options(parent, "PARENT_LEVEL".to_string()).get()?;
    check("a child task inherits its parent's environment", inherited.as_deref() == Some("parent"), &inherited);
    Ok(())
}

/// Holds an actor in a job with `dir` as working dir until stdin says to go on.
fn hold(dir: &str) -> manta::Result<()> {
    let _job = manta::Builder::new().runtime_env(RuntimeEnv::new().working_dir(dir)).init()?;
    let probe = EnvProbe::remote()?;
    let node = probe.node().get()?;
    println!("holding {node}");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    check(
        "the held actor still reads its working dir",
        probe.read("data.txt".to_string()).get()?.starts_with("data"),
        (),
    );
    Ok(())
}

/// The program deletes its own binary after `init`: workers on every other
/// node still start, from the copy the cluster holds.
fn shipped() -> manta::Result<()> {
    let _job = manta::Builder::new().init()?;
    let exe = std::env::current_exe().map_err(|error| Error::Init(error.to_string()))?;
    std::fs::remove_file(&exe).map_err(|error| Error::Init(format!("cannot delete {}: {error}", exe.display())))?;
    check("the driver's binary is gone", !exe.exists(), &exe);
    let nodes: Vec<manta::NodeId> = manta::nodes()?
        .into_iter()
        .filter(|node| node.state == manta::NodeState::Alive && !node.is_head)
        .map(|node| node.node_id)
        .collect();
    check("two worker nodes", nodes.len() == 2, &nodes);
    for node_id in &nodes {
        let pinned = SchedulingStrategy::NodeAffinity { node_id: *node_id, soft: false };
        let (ran_on, _pid) =
            node_and_pid::with_options(TaskOptions::default().scheduling_strategy(pinned.clone())).get()?;
        check("a task runs on the node", ran_on == node_id.to_string(), (&ran_on, node_id));
        let probe = EnvProbe::options(ActorOptions::new().scheduling_strategy(pinned)).remote()?;
        check("an actor runs on the node", probe.node().get()? == node_id.to_string(), node_id);
    }
    Ok(())
}

/// Setups that fail answer promptly with `RuntimeEnvSetupFailed` and the reason.
fn failures() -> manta::Result<()> {
    let _job = manta::Builder::new().init()?;
    let started = Instant::now();
    let missing = RuntimeEnv::new().working_dir(format!("gcs://_manta_pkg_{}.zip", "0".repeat(64)));
    let result = env_of::with_options(TaskOptions::default().runtime_env(missing), "X".to_string()).get();
    let reported = matches!(&result, Err(Error::RuntimeEnvSetupFailed(message)) if message.contains("no package"));
    check("a working_dir the cluster does not have fails the task with the reason", reported, &result);

    let offline = RuntimeEnv::new().pip(["--no-index", "manta-no-such-package-xyz==1.0"]);
    let result = env_of::with_options(TaskOptions::default().runtime_env(offline.clone()), "X".to_string()).get();
    let reported =
        matches!(&result, Err(Error::RuntimeEnvSetupFailed(message)) if message.contains("manta-no-such-package-xyz"));
    check("an unresolvable pip requirement fails the task with pip's error", reported, &result);
    let actor = EnvProbe::options(ActorOptions::new().runtime_env(offline)).remote();
    let refused = matches!(&actor, Err(Error::RuntimeEnvSetupFailed(_)));
    check("and an actor's creation", refused, actor.as_ref().err());
    check("promptly", started.elapsed() < Duration::from_secs(60), started.elapsed());

    let venv = TaskOptions::default().runtime_env(RuntimeEnv::new().pip(Vec::<String>::new()));
    let (virtual_env, prefix) = python_prefix::with_options(venv).get()?;
    let inside = virtual_env.as_deref().is_some_and(|env| env.contains("runtime_resources/pip/venv_") && prefix == env);
    check("a pip env runs the task in its own virtualenv", inside, (&virtual_env, &prefix));

    let local = TaskOptions::default().runtime_env(RuntimeEnv::new().working_dir("./somewhere"));
    let result = env_of::with_options(local, "X".to_string()).get();
    check(
        "a task cannot name a local folder",
        matches!(&result, Err(Error::RuntimeEnvSetupFailed(m)) if m.contains("job level")),
        &result,
    );
    check("other tasks still run", env_of::remote("PATH".to_string()).get()?.is_some(), ());
    Ok(())
}

/// A job with a working dir runs one task, on the first worker node only; with
/// `eager_install` the other nodes set the environment up anyway, at job start.
fn eager(dir: &str, eager_install: bool) -> manta::Result<()> {
    let json = format!(r#"{{"working_dir": {dir:?}, "config": {{"eager_install": {eager_install}}}}}"#);
    let _job = manta::Builder::new().runtime_env(RuntimeEnv::from_json(&json)?).init()?;
    let node = manta::nodes()?.into_iter().find(|node| node.state == manta::NodeState::Alive && !node.is_head);
    let node = node.ok_or_else(|| Error::Init("no worker node".into()))?.node_id;
    let pinned =
        TaskOptions::default().scheduling_strategy(SchedulingStrategy::NodeAffinity { node_id: node, soft: false });
    let (text, _) = read_relative::with_options(pinned, "data.txt".to_string()).get()?;
    check("the task read its working dir", text.starts_with("data"), &text);
    println!("waiting");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    Ok(())
}

/// A job-level `py_modules` folder is importable by Python in the job's workers.
fn py_modules(module_dir: &str) -> manta::Result<()> {
    let _job = manta::Builder::new().runtime_env(RuntimeEnv::new().py_modules([module_dir])).init()?;
    let said = python_says::remote("import shipped_module; print(shipped_module.ANSWER)".to_string()).get()?;
    check("a py_modules folder is importable in the workers", said == "42", &said);
    Ok(())
}

/// `manta job submit` gave the job `A=1`; the program asks for `A=2`: `init` names the conflict.
fn conflict() -> manta::Result<()> {
    let result = manta::Builder::new().runtime_env(RuntimeEnv::new().env_var("A", "2")).init();
    let named = matches!(&result, Err(Error::InvalidArgument(message)) if message.contains("env_vars.A"));
    check("init names the conflicting variable", named, result.as_ref().err());
    Ok(())
}

/// `init` with a working dir that does not exist fails with the reason.
fn missing_dir(dir: &str) -> manta::Result<()> {
    let result = manta::Builder::new().runtime_env(RuntimeEnv::new().working_dir(dir)).init();
    let refused = matches!(&result, Err(Error::InvalidArgument(message)) if message.contains("does not exist"));
    check("init refuses a working_dir that does not exist", refused, result.as_ref().err());
    Ok(())
}
