//! `/jobs` and `/jobs/{id}`: submitted jobs and plain drivers; a job's page
//! has its status, runtime env, its driver's log (followed live over the Jobs
//! API's WebSocket), its tasks, actors and placement groups, and a stop button.

use actix_web::{HttpRequest, HttpResponse, web};
use manta_proto::query::{StateFilter, StateQuery};
use manta_proto::submission::GetSubmissionRequest;
use manta_proto::task::StateTable;
use maud::{Markup, html};
use serde_json::Value;

use super::{
    ListParams, Nav, badge, duration, empty, error_box, failed, filter_form, heading, id, json_block, pager, render,
    text, time,
};
use crate::http::AppState;
use crate::http::state::{gcs_page, page};

const STATUSES: &[&str] = &["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"];
const KEYS: &[&str] = &["status", "type", "submission_id", "job_id", "entrypoint"];

/// The key a job's page is found by: its submission id, else its job id.
fn key_of(job: &Value) -> String {
    job["submission_id"].as_str().or(job["job_id"].as_str()).unwrap_or_default().to_string()
}

/// The jobs list.
pub async fn list(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let params = match ListParams::of(&request) {
        Ok(params) => params,
        Err(message) => return render(&request, Nav::Jobs, "Jobs", error_box(&message)),
    };
    // Jobs' JSON (Ray's JobDetails) names its state `status`.
    let mut query = params.query.clone();
    for filter in &mut query.filters {
        if filter.key == "state" {
            filter.key = "status".into();
        }
    }
    let loaded = page(&state, "jobs", query, false).await;
    let content = html! {
        (heading("Jobs", Some(html! { "Submitted jobs (" code { "manta job submit" } ") and drivers, newest first." })))
        (filter_form("/jobs", &params, STATUSES, KEYS))
        @match &loaded {
            Err(error) => (failed(error)),
            Ok(jobs) if jobs.rows.is_empty() => (empty(if params.query.filters.is_empty() { "No jobs yet. Submit one with `manta job submit -- <command>`." } else { "No job matches these filters." })),
            Ok(jobs) => {
                table {
                    thead { tr { th { "Job" } th { "Type" } th { "Status" } th { "Entrypoint" } th { "Started" } th { "Duration" } th { "Message" } } }
                    tbody {
                        @for job in &jobs.rows {
                            @let key = key_of(job);
                            tr {
                                td { (id(&key, Some(format!("/jobs/{key}")))) }
                                td { (text(&job["type"])) }
                                td { (badge(job["status"].as_str().unwrap_or_default())) }
                                td.clip { code { (text(&job["entrypoint"])) } }
                                td { (time(job["start_time"].as_u64())) }
                                td { (duration(job["start_time"].as_u64(), job["end_time"].as_u64().or_else(|| Some(now_ms())))) }
                                td.clip { (text(&job["message"])) }
                            }
                        }
                    }
                }
                (pager("/jobs", &params, jobs))
            }
        }
    };
    render(&request, Nav::Jobs, "Jobs", content)
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

/// A job's record: a submission by its id, or a driver by its job id.
async fn find(state: &AppState, key: &str) -> Result<Option<Value>, String> {
    let submission = state.gcs.call(GetSubmissionRequest { id: key.to_string() }).await;
    match submission {
        Ok(reply) => {
            if let Some(job) = reply.submission {
                return Ok(Some(crate::http::jobs::details(&job)));
            }
        }
        Err(error) => return Err(format!("the GCS did not answer: {error}")),
    }
    let filter = StateFilter::parse(&format!("job_id={key}")).map_err(|error| error.to_string())?;
    let query = StateQuery { filters: vec![filter], ..StateQuery::newest(1) };
    let (_, reply) =
        gcs_page(state, StateTable::Jobs, query, false).await.map_err(|error| error.message().to_string())?;
    Ok(match reply.rows {
        manta_proto::task::StateRows::Jobs(jobs) => jobs.first().map(crate::http::jobs::driver_details),
        _ => None,
    })
}

/// A job's page.
pub async fn detail(state: web::Data<AppState>, key: web::Path<String>, request: HttpRequest) -> HttpResponse {
    let key = key.into_inner();
    let job = match find(&state, &key).await {
        Ok(Some(job)) => job,
        Ok(None) => {
            let content = html! { (heading("Job", None)) (empty(&format!("There is no job {key}; it may have been deleted or dropped from the history."))) a href="/jobs" { "← All jobs" } };
            return render(&request, Nav::Jobs, "Job", content);
        }
        Err(message) => return render(&request, Nav::Jobs, "Job", error_box(&message)),
    };
    let status = job["status"].as_str().unwrap_or_default().to_string();
    let submission_id = job["submission_id"].as_str().map(str::to_string);
    let job_id = job["job_id"].as_str().map(str::to_string);
    let terminal = matches!(status.as_str(), "STOPPED" | "SUCCEEDED" | "FAILED");
    let of_job = |key: &str| -> Option<StateQuery> {
        let filter = StateFilter::parse(&format!("{key}={}", job_id.as_deref()?)).ok()?;
        Some(StateQuery { filters: vec![filter], ..StateQuery::newest(20) })
    };
    let tasks = match of_job("job_id") {
        Some(query) => Some(gcs_page(&state, StateTable::Tasks, query, false).await),
        None => None,
    };
    let actors = match of_job("job_id") {
        Some(query) => Some(gcs_page(&state, StateTable::Actors, query, false).await),
        None => None,
    };
    let groups = match of_job("creator_job_id") {
        Some(query) => Some(gcs_page(&state, StateTable::PlacementGroups, query, false).await),
        None => None,
    };
    let content = html! {
        p.crumbs { a href="/jobs" { "Jobs" } " / " (key) }
        div.heading {
            h1 { "Job " (id(&key, None)) }
            (badge(&status))
            @if let (Some(sid), false) = (&submission_id, terminal) {
                button.danger type="button" data-post={ "/api/jobs/" (sid) "/stop" } data-confirm={ "Stop job " (sid) "?" } { "Stop job" }
            }
        }
        dl.facts {
            dt { "Entrypoint" } dd { code { (text(&job["entrypoint"])) } }
            dt { "Type" } dd { (text(&job["type"])) }
            dt { "Submission id" } dd { @match &submission_id { Some(sid) => (id(sid, None)), None => "—" } }
            dt { "Job id" } dd { @match &job_id { Some(job_id) => (id(job_id, None)), None => "— (not started yet)" } }
            dt { "Started" } dd { (time(job["start_time"].as_u64())) }
            dt { "Ended" } dd { (time(job["end_time"].as_u64())) }
            dt { "Duration" } dd { (duration(job["start_time"].as_u64(), job["end_time"].as_u64().or_else(|| Some(now_ms())))) }
            dt { "Message" } dd { (text(&job["message"])) }
            dt { "Driver node" } dd { @match job["driver_node_id"].as_str() { Some(node) => (id(node, Some(format!("/cluster/{node}")))), None => "—" } }
            dt { "Exit code" } dd { (text(&job["driver_exit_code"])) }
        }
        h2 { "Runtime environment" }
        (json_block(&job["runtime_env"]))
        h2 { "Driver log" }
        @match &submission_id {
            Some(sid) => {
                p.muted { "Follows the entrypoint's output as it is printed." }
                pre.log #job-log data-keep="job-log" data-tail={ "/api/jobs/" (sid) "/logs/tail" } {}
            }
            None => (empty("This job's driver was started by hand, not submitted: its output went to the driver's own terminal.")),
        }
        (related("Tasks", "/tasks", &tasks, job_id.as_deref(), "job_id"))
        (related("Actors", "/actors", &actors, job_id.as_deref(), "job_id"))
        (related("Placement groups", "/placement-groups", &groups, job_id.as_deref(), "creator_job_id"))
    };
    render(&request, Nav::Jobs, &format!("Job {key}"), content)
}

type Loaded =
    Option<Result<(crate::http::state::JsonPage, manta_proto::task::ListStateReply), crate::http::state::PageError>>;

/// A short list of a job's tasks, actors or groups, with a link to all of them.
fn related(title: &str, path: &str, loaded: &Loaded, job_id: Option<&str>, key: &str) -> Markup {
    html! {
        h2 {
            (title)
            @if let Some(job_id) = job_id { a.more href={ (path) "?filter=" (key) "%3D" (job_id) } { "all of this job's →" } }
        }
        @match loaded {
            None => (empty("The job has not started a driver yet.")),
            Some(Err(error)) => (failed(error)),
            Some(Ok((page, _))) if page.rows.is_empty() => (empty(&format!("No {} in this job.", title.to_lowercase()))),
            Some(Ok((page, _))) => (super::lists::table_for(path, &page.rows)),
        }
    }
}
