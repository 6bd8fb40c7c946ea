//! [`JobSupervisor`]: one per submitted job, on the node the GCS placed it on.
//! It has the node's RuntimeEnvAgent build the job's environment, runs the
//! entrypoint as a driver of this cluster in that environment, reports
//! `RUNNING` and the end (`SUCCEEDED`, `FAILED` with the exit code and the log's
//! tail, or `STOPPED`), and stops the entrypoint's process group on request:
//! SIGTERM, then SIGKILL after the grace period.

use std::collections::BTreeMap;
use std::time::Duration;

use manta_proto::client::GcsClient;
use manta_proto::net::CallError;
use manta_proto::runtime_env::{EnvKey, JOB_RUNTIME_ENV_VAR};
use manta_proto::submission::{
    JobSubmission, SUBMISSION_ID_VAR, SubmissionStatus, SubmissionUpdate, UpdateSubmissionRequest,
};
use manta_proto::{JobId, worker_env};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rustix::process::Signal;
use tracing::{info, warn};

use super::JobAgentArgs;
use super::entrypoint::{self, FAILURE_TAIL_CHARS, Launch, Running};
use crate::runtime_env::{AgentMsg, EnvContext, env_key};

/// The job id a supervisor's environment is held under in the RuntimeEnvAgent
/// (no manta job has it: job counters start at 1).
pub const SUPERVISOR_JOB: JobId = JobId::from_counter(0);
/// How long output may keep coming after the entrypoint exited (a background
/// process that inherited the pipe), before the job ends without it.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Attempts at reporting a transition while the GCS is unreachable (one a second).
const REPORT_ATTEMPTS: u32 = 60;

/// What a supervisor starts with.
#[derive(Debug)]
pub struct SupervisorArgs {
    /// The node's shared settings.
    pub agent: JobAgentArgs,
    /// The job.
    pub submission: JobSubmission,
}

/// Messages to a [`JobSupervisor`].
#[derive(Debug)]
pub enum SupervisorMsg {
    /// The runtime env is ready, or could not be set up.
    EnvReady(Result<EnvContext, String>),
    /// The entrypoint's shell exited with this code.
    Exited(i32),
    /// Every writer closed the output pipe; this many bytes were logged.
    OutputClosed(u64),
    /// Output stayed open too long after the exit: end without it.
    OutputTimedOut,
    /// Stop the entrypoint.
    Stop,
    /// The grace period after SIGTERM passed.
    Kill,
}

/// The supervisor actor.
#[derive(Debug, Default)]
pub struct JobSupervisor;

/// State of a [`JobSupervisor`].
pub struct SupervisorState {
    args: JobAgentArgs,
    submission: JobSubmission,
    key: EnvKey,
    env_held: bool,
    env_answered: bool,
    running: Option<Running>,
    stop_requested: bool,
    exit_code: Option<i32>,
    log_bytes: Option<u64>,
    ended: bool,
    /// The `RUNNING` report in flight: the end is reported after it, never before.
    running_report: Option<tokio::task::JoinHandle<()>>,
}

/// Reports a transition, retrying while the GCS is unreachable (a head restart).
pub async fn report(gcs: &GcsClient, submission_id: &str, update: SubmissionUpdate) {
    for _ in 0..REPORT_ATTEMPTS {
        let request = UpdateSubmissionRequest { submission_id: submission_id.to_string(), update: update.clone() };
        match gcs.call(request).await {
            Ok(()) => return,
            Err(CallError::Remote(error)) => {
                warn!(%submission_id, %error, "the GCS refused the job's status");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    warn!(%submission_id, "could not report the job's status: the GCS stayed unreachable");
}

impl SupervisorState {
    fn log_path(&self) -> std::path::PathBuf {
        self.args.log_dir.join(self.submission.log_file_name())
    }

    fn launch(&self, context: &EnvContext) -> Launch {
        let mut env: BTreeMap<String, String> = context.env_vars.clone();
        env.insert("MANTA_ADDRESS".into(), self.args.gcs_address.clone());
        env.insert(worker_env::TOKEN.into(), self.args.token.clone());
        env.insert(SUBMISSION_ID_VAR.into(), self.submission.submission_id.clone());
        env.insert(JOB_RUNTIME_ENV_VAR.into(), serde_json::to_string(&self.submission.runtime_env).unwrap_or_default());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        env.extend(self.args.tls_env.iter().cloned());
        let mut env_remove: Vec<String> = worker_env::ALL.iter().map(|name| name.to_string()).collect();
        env_remove.extend(["MANTA_DAEMON_CHILD", "MANTA_TEMP_DIR", "MANTA_STORAGE"].map(String::from));
        Launch {
            command: self.submission.entrypoint.clone(),
            cwd: context.cwd.clone(),
            env,
            env_remove,
            log_path: self.log_path(),
        }
    }

    /// Reports the end once, lets go of the environment and stops the actor.
    async fn end(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        status: SubmissionStatus,
        message: String,
        error_type: Option<&str>,
    ) {
        if self.ended {
            return;
        }
        self.ended = true;
        let log_bytes = self
            .log_bytes
            .unwrap_or_else(|| std::fs::metadata(self.log_path()).map(|metadata| metadata.len()).unwrap_or(0));
        info!(submission_id = %self.submission.submission_id, status = status.as_str(), "job ended");
        let update = SubmissionUpdate::Ended {
            status,
            message,
            error_type: error_type.map(str::to_string),
            exit_code: self.exit_code,
            log_bytes,
        };
        if let Some(running) = self.running_report.take() {
            let _ = running.await;
        }
        report(&self.args.gcs, &self.submission.submission_id, update).await;
        self.release();
        // An environment still being set up is released when its answer comes.
        if self.env_answered {
            myself.stop(None);
        }
    }

    fn release(&mut self) {
        if self.env_held {
            self.env_held = false;
            let agent = self.args.runtime_env.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let _ = agent.cast(AgentMsg::Release(self.key));
            let _ = agent.cast(AgentMsg::JobFinished(SUPERVISOR_JOB));
        }
    }

    async fn finish_if_done(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let (Some(code), Some(_)) = (self.exit_code, self.log_bytes) else { return };
        if self.stop_requested {
            self.end(myself, SubmissionStatus::Stopped, "Job was intentionally stopped.".into(), None).await;
        } else if code == 0 {
            self.end(myself, SubmissionStatus::Succeeded, "Job finished successfully.".into(), None).await;
        } else {
            let message = format!(
                "Job entrypoint command failed with exit code {code}, last available logs (truncated to 20,000 chars):\n{}",
                entrypoint::tail(&self.log_path(), FAILURE_TAIL_CHARS)
            );
            self.end(myself, SubmissionStatus::Failed, message, Some("ENTRYPOINT_FAILED")).await;
        }
    }

    /// Appends a line to the driver log (what went wrong before the entrypoint ran).
    fn note_in_log(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()) {
            let _ = writeln!(file, "{line}");
        }
    }

    async fn started(&mut self, myself: &ActorRef<SupervisorMsg>, context: EnvContext) {
        let launch = self.launch(&context);
        let (running, mut child, reader) = match entrypoint::start(&launch) {
            Ok(started) => started,
            Err(error) => {
                let message = format!("Job entrypoint could not be started: {error}");
                self.note_in_log(&message);
                self.end(myself, SubmissionStatus::Failed, message, Some("ENTRYPOINT_START_FAILED")).await;
                return;
            }
        };
        let pid = running.pid;
        info!(submission_id = %self.submission.submission_id, pid, entrypoint = %self.submission.entrypoint, "job entrypoint started");
        self.running = Some(running);
        let (gcs, path, id) =
            (self.args.gcs.peer().clone(), launch.log_path.clone(), self.submission.submission_id.clone());
        let pumped = myself.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = entrypoint::pump(reader, &path, &id, &gcs);
            let _ = pumped.cast(SupervisorMsg::OutputClosed(bytes));
        });
        let waited = myself.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => entrypoint::exit_code(status),
                Err(_) => -1,
            };
            let _ = waited.cast(SupervisorMsg::Exited(code));
        });
        let (gcs, id) = (self.args.gcs.clone(), self.submission.submission_id.clone());
        self.running_report =
            Some(tokio::spawn(async move { report(&gcs, &id, SubmissionUpdate::Running { pid }).await }));
    }
}

impl Actor for JobSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let SupervisorArgs { agent, submission } = args;
        let key = env_key(&submission.runtime_env, "");
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked = AgentMsg::GetOrCreate {
            spec: submission.runtime_env.clone(),
            executable: String::new(),
            job: SUPERVISOR_JOB,
            reply,
        };
        let runtime_env = agent.runtime_env.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if runtime_env.cast(asked).is_err() {
            let _ = myself.cast(SupervisorMsg::EnvReady(Err("the node's runtime env agent is restarting".into())));
        } else {
            let ready = myself.clone();
            tokio::spawn(async move {
                let result = answer
                    .await
                    .unwrap_or_else(|_| Err("the node's runtime env agent stopped during the setup".into()));
                let _ = ready.cast(SupervisorMsg::EnvReady(result));
            });
        }
        Ok(SupervisorState {
            args: agent,
            submission,
            key,
            env_held: false,
            env_answered: false,
            running: None,
            stop_requested: false,
            exit_code: None,
            log_bytes: None,
            ended: false,
            running_report: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::EnvReady(Ok(context)) => {
                state.env_held = true;
                state.env_answered = true;
                if state.ended {
                    state.release();
                    myself.stop(None);
                } else {
                    state.started(&myself, context).await;
                }
            }
            SupervisorMsg::EnvReady(Err(error)) => {
                state.env_answered = true;
                if state.ended {
                    myself.stop(None);
                    return Ok(());
                }
                let message = format!("runtime_env setup failed: {error}");
                state.note_in_log(&message);
                state.end(&myself, SubmissionStatus::Failed, message, Some("RUNTIME_ENV_SETUP_FAILED")).await;
            }
            SupervisorMsg::Exited(code) => {
                state.exit_code = Some(code);
                if let Some(running) = state.running.as_mut() {
                    running.disarm();
                }
                if state.log_bytes.is_none() {
                    myself.send_after(OUTPUT_AFTER_EXIT, || SupervisorMsg::OutputTimedOut);
                }
                state.finish_if_done(&myself).await;
            }
            SupervisorMsg::OutputClosed(bytes) => {
                state.log_bytes = Some(bytes);
                state.finish_if_done(&myself).await;
            }
            SupervisorMsg::OutputTimedOut => {
                if state.log_bytes.is_none() {
                    warn!(submission_id = %state.submission.submission_id, "the entrypoint exited but a process it left keeps its output open; ending the job without the rest");
                    state.log_bytes =
                        std::fs::metadata(state.log_path()).map(|metadata| metadata.len()).ok().or(Some(0));
                    state.finish_if_done(&myself).await;
                }
            }
            SupervisorMsg::Stop => {
                state.stop_requested = true;
                match &state.running {
                    Some(running) if state.exit_code.is_none() => {
                        info!(submission_id = %state.submission.submission_id, "stopping the job: SIGTERM to its process group");
                        running.signal(Signal::TERM);
                        myself.send_after(state.args.stop_grace, || SupervisorMsg::Kill);
                    }
                    Some(_) => {}
                    None => {
                        state
                            .end(&myself, SubmissionStatus::Stopped, "Job was intentionally stopped.".into(), None)
                            .await;
                    }
                }
            }
            SupervisorMsg::Kill => {
                if let Some(running) = &state.running
                    && state.exit_code.is_none()
                {
                    warn!(submission_id = %state.submission.submission_id, "the job did not stop within the grace period: SIGKILL");
                    running.signal(Signal::KILL);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.release();
        Ok(())
    }
}
