//! `manta job submit|status|logs|stop|list|delete`: Ray's `ray job` verbs and
//! flags, speaking the head's Jobs REST API (Ray's paths), so the same commands
//! work from any machine that can reach the head's HTTP port and has the token.
//!
//! The server is `--address` (or `MANTA_ADDRESS`): an `http://host:port` URL,
//! or a GCS address whose head recorded its URL in the cluster, or else the
//! head recorded under `--temp-dir`. The token comes from `--token`,
//! `MANTA_TOKEN`, or `<temp-dir>/token`. A local `working_dir` or `py_modules`
//! folder is packed and uploaded by this client before the job is submitted.

mod client;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::ClusterArgs;
use serde_json::{Map, Value, json};

use client::JobClient;

/// Flags of `manta job`.
#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Submit a job: `manta job submit [flags] -- COMMAND...`; follows its logs
    /// and exits with its status unless --no-wait.
    Submit(SubmitArgs),
    /// Show a job's status and message.
    Status(IdArgs),
    /// Print a job's logs (--follow: until it ends).
    Logs(LogsArgs),
    /// Stop a job (SIGTERM to its process group, then SIGKILL).
    Stop(StopArgs),
    /// List every submitted job.
    List(ServerOnly),
    /// Forget a finished job.
    Delete(IdArgs),
}

#[derive(Debug, Args)]
struct SubmitArgs {
    #[command(flatten)]
    server: ClusterArgs,
    /// The job's id (default: a fresh `mantasubmit_…`).
    #[arg(long, alias = "job-id")]
    submission_id: Option<String>,
    /// Runtime env as JSON, e.g. '{"env_vars": {"counter_name": "test_counter"}}'.
    #[arg(long, conflicts_with = "runtime_env")]
    runtime_env_json: Option<String>,
    /// Runtime env from a YAML (or JSON) file.
    #[arg(long)]
    runtime_env: Option<PathBuf>,
    /// The job's working dir (overrides the runtime env's); a local folder is uploaded.
    #[arg(long)]
    working_dir: Option<String>,
    /// Metadata as a JSON object of strings.
    #[arg(long)]
    metadata_json: Option<String>,
    /// CPUs the entrypoint holds.
    #[arg(long)]
    entrypoint_num_cpus: Option<f64>,
    /// GPUs the entrypoint holds.
    #[arg(long)]
    entrypoint_num_gpus: Option<f64>,
    /// Bytes of memory the entrypoint holds.
    #[arg(long)]
    entrypoint_memory: Option<u64>,
    /// Custom resources the entrypoint holds, as JSON.
    #[arg(long)]
    entrypoint_resources: Option<String>,
    /// Return once the job is submitted.
    #[arg(long)]
    no_wait: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required = true)]
    entrypoint: Vec<String>,
}

#[derive(Debug, Args)]
struct IdArgs {
    #[command(flatten)]
    server: ClusterArgs,
    /// Submission id (or job id).
    id: String,
}

#[derive(Debug, Args)]
struct LogsArgs {
    #[command(flatten)]
    server: ClusterArgs,
    /// Submission id (or job id).
    id: String,
    /// Keep printing until the job ends.
    #[arg(short, long)]
    follow: bool,
}

#[derive(Debug, Args)]
struct StopArgs {
    #[command(flatten)]
    server: ClusterArgs,
    /// Submission id (or job id).
    id: String,
    /// Return once the stop is requested.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, Args)]
struct ServerOnly {
    #[command(flatten)]
    server: ClusterArgs,
}

/// Runs `manta job …`.
pub fn run(args: JobArgs) -> ExitCode {
    let runtime = super::client_runtime();
    match runtime.block_on(dispatch(args.command)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("manta job: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: JobCommand) -> Result<ExitCode, String> {
    match command {
        JobCommand::Submit(args) => submit(args).await,
        JobCommand::Status(args) => {
            let job = JobClient::connect(&args.server).await?.get(&args.id).await?;
            println!("Status for job '{}': {}", args.id, job["status"].as_str().unwrap_or("?"));
            println!("Status message: {}", job["message"].as_str().unwrap_or(""));
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Logs(args) => {
            let client = JobClient::connect(&args.server).await?;
            if args.follow {
                client.follow(&args.id).await?;
            } else {
                print!("{}", client.logs(&args.id).await?);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Stop(args) => {
            let client = JobClient::connect(&args.server).await?;
            let stopped = client.stop(&args.id).await?;
            if !stopped {
                println!("Job '{}' had already ended.", args.id);
                return Ok(ExitCode::SUCCESS);
            }
            println!("Stop requested for job '{}'.", args.id);
            if !args.no_wait {
                let status = client.wait_terminal(&args.id).await?;
                println!("Job '{}' is {status}.", args.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::List(args) => {
            let jobs = JobClient::connect(&args.server).await?.list().await?;
            println!("{}", serde_json::to_string_pretty(&jobs).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Delete(args) => {
            JobClient::connect(&args.server).await?.delete(&args.id).await?;
            println!("Job '{}' deleted.", args.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The runtime env the flags give, as a JSON object.
fn runtime_env_of(args: &SubmitArgs) -> Result<Map<String, Value>, String> {
    let value: Value = match (&args.runtime_env_json, &args.runtime_env) {
        (Some(text), _) => {
            serde_json::from_str(text).map_err(|error| format!("--runtime-env-json is not valid JSON: {error}"))?
        }
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|error| format!("--runtime-env {}: {error}", path.display()))?;
            serde_yaml_ng::from_str(&text)
                .map_err(|error| format!("--runtime-env {}: not valid YAML: {error}", path.display()))?
        }
        (None, None) => json!({}),
    };
    let Value::Object(mut env) = value else { return Err("the runtime env must be an object (a mapping)".into()) };
    if let Some(dir) = &args.working_dir {
        env.insert("working_dir".into(), Value::String(dir.clone()));
    }
    // Checked here first, so a mistake is reported before anything is uploaded.
    manta_proto::runtime_env::RuntimeEnv::from_json(&Value::Object(env.clone()).to_string())
        .map_err(|error| error.0)?;
    Ok(env)
}

async fn submit(args: SubmitArgs) -> Result<ExitCode, String> {
    let mut env = runtime_env_of(&args)?;
    let client = JobClient::connect(&args.server).await?;
    client.upload_local_paths(&mut env).await?;
    let mut body = Map::new();
    body.insert("entrypoint".into(), Value::String(shell_words(&args.entrypoint)));
    body.insert("runtime_env".into(), Value::Object(env));
    if let Some(id) = &args.submission_id {
        body.insert("submission_id".into(), Value::String(id.clone()));
    }
    if let Some(text) = &args.metadata_json {
        let metadata: BTreeMap<String, String> = serde_json::from_str(text)
            .map_err(|error| format!("--metadata-json must be a JSON object of strings: {error}"))?;
        body.insert("metadata".into(), json!(metadata));
    }
    if let Some(cpus) = args.entrypoint_num_cpus {
        body.insert("entrypoint_num_cpus".into(), json!(cpus));
    }
    if let Some(gpus) = args.entrypoint_num_gpus {
        body.insert("entrypoint_num_gpus".into(), json!(gpus));
    }
    if let Some(memory) = args.entrypoint_memory {
        body.insert("entrypoint_memory".into(), json!(memory));
    }
    if let Some(text) = &args.entrypoint_resources {
        let resources: BTreeMap<String, f64> = serde_json::from_str(text)
            .map_err(|error| format!("--entrypoint-resources must be a JSON object of numbers: {error}"))?;
        body.insert("entrypoint_resources".into(), json!(resources));
    }
    let id = client.submit(Value::Object(body)).await?;
    eprintln!("Job '{id}' submitted successfully.");
    if args.no_wait {
        eprintln!(
            "Query its status with `manta job status {id}`, its logs with `manta job logs {id} --follow`, stop it with `manta job stop {id}`."
        );
        return Ok(ExitCode::SUCCESS);
    }
    client.follow(&id).await?;
    let job = client.get(&id).await?;
    let status = job["status"].as_str().unwrap_or("?").to_string();
    match status.as_str() {
        "SUCCEEDED" => eprintln!("Job '{id}' succeeded."),
        "STOPPED" => eprintln!("Job '{id}' was stopped."),
        other => {
            eprintln!("Job '{id}' {}.", other.to_lowercase());
            eprintln!("Status message: {}", job["message"].as_str().unwrap_or(""));
        }
    }
    Ok(if status == "SUCCEEDED" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The words after `--` as one shell command: each word quoted unless it is plain.
fn shell_words(words: &[String]) -> String {
    if words.len() == 1 {
        return words[0].clone();
    }
    let plain =
        |word: &str| !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    words
        .iter()
        .map(|word| if plain(word) { word.clone() } else { format!("'{}'", word.replace('\'', r"'\''")) })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_become_one_shell_command() {
        assert_eq!(shell_words(&["echo hi && ls".into()]), "echo hi && ls", "one word is the command as typed");
        assert_eq!(shell_words(&["echo".into(), "a b".into(), "it's".into()]), r"echo 'a b' 'it'\''s'");
    }
}
