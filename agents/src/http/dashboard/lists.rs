//! `/actors`, `/actors/{id}`, `/tasks`, `/tasks/{id}` and `/placement-groups`:
//! the GCS tables, filtered and paged by the GCS.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use manta_proto::NodeId;
use manta_proto::logs::{ListLogsRequest, ReadLogRequest};
use manta_proto::placement::PlacementGroupInfo;
use manta_proto::query::{StateFilter, StateQuery, StateRow};
use manta_proto::task::{ActorRecord, StateTable, TaskRecord};
use maud::{Markup, html};
use serde_json::Value;

use super::{
    ListParams, Nav, badge, empty, error_box, failed, filter_form, heading, id, json_block, pager, render, text, time,
};
use crate::http::AppState;
use crate::http::state::gcs_page;

const TASK_STATES: &[&str] = &["PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "FINISHED", "FAILED"];
const ACTOR_STATES: &[&str] = &["ALIVE", "RESTARTING", "DEAD"];
const GROUP_STATES: &[&str] = &["PENDING", "CREATED", "RESCHEDULING", "REMOVED"];

/// The table of rows of one kind (`/tasks`, `/actors`, `/placement-groups`).
pub fn table_for(path: &str, rows: &[Value]) -> Markup {
    table_with_pids(path, rows, &HashMap::new())
}

fn node_cell(row: &Value) -> Markup {
    match row["node_id"].as_str() {
        Some(node) => id(node, Some(format!("/cluster/{node}"))),
        None => html! { span.muted { "—" } },
    }
}

fn table_with_pids(path: &str, rows: &[Value], pids: &HashMap<String, u32>) -> Markup {
    match path {
        "/actors" => html! {
            table {
                thead { tr { th { "Actor" } th { "Class" } th { "Name" } th { "State" } th { "Node" } th { "PID" } th { "Restarts" } th { "Job" } } }
                tbody { @for row in rows {
                    @let actor_id = row["actor_id"].as_str().unwrap_or_default();
                    tr {
                        td { (id(actor_id, Some(format!("/actors/{actor_id}")))) }
                        td { (text(&row["class_name"])) }
                        td { (text(&row["name"])) }
                        td { (badge(row["state"].as_str().unwrap_or_default())) }
                        td { (node_cell(row)) }
                        td { @match row["worker_id"].as_str().and_then(|worker| pids.get(worker)) { Some(pid) => (pid), None => span.muted { "—" } } }
                        td { (text(&row["num_restarts"])) }
                        td { (text(&row["job_id"])) }
                    }
                } }
            }
        },
        "/placement-groups" => html! {
            table {
                thead { tr { th { "Group" } th { "Name" } th { "State" } th { "Strategy" } th { "Bundles" } th { "Job" } th { "Created" } th { "Pending because" } } }
                tbody { @for row in rows {
                    tr {
                        td { (id(row["placement_group_id"].as_str().unwrap_or_default(), None)) }
                        td { (text(&row["name"])) }
                        td { (badge(row["state"].as_str().unwrap_or_default())) }
                        td { (text(&row["strategy"])) }
                        td.clip { code { (text(&row["bundles"])) } }
                        td { (text(&row["creator_job_id"])) }
                        td { (time(row["create_time_ms"].as_u64())) }
                        td.clip { (text(&row["pending_reason"])) }
                    }
                } }
            }
        },
        _ => html! {
            table {
                thead { tr { th { "Task" } th { "Name" } th { "Type" } th { "State" } th { "Node" } th { "Job" } th { "Started" } th { "Error" } } }
                tbody { @for row in rows {
                    @let task_id = row["task_id"].as_str().unwrap_or_default();
                    tr {
                        td { (id(task_id, Some(format!("/tasks/{task_id}")))) }
                        td { (text(&row["name"])) }
                        td { (text(&row["type"])) }
                        td { (badge(row["state"].as_str().unwrap_or_default())) }
                        td { (node_cell(row)) }
                        td { (text(&row["job_id"])) }
                        td { (time(row["start_time_ms"].as_u64())) }
                        td.clip.error-text { @if !row["error_message"].is_null() { (text(&row["error_message"])) } }
                    }
                } }
            }
        },
    }
}

/// A GCS table's list page.
async fn list_page(
    state: &AppState,
    request: &HttpRequest,
    (nav, path, title): (Nav, &str, &str),
    table: StateTable,
    (states, keys): (&[&str], &[&str]),
) -> HttpResponse {
    let params = match ListParams::of(request) {
        Ok(params) => params,
        Err(message) => return render(request, nav, title, error_box(&message)),
    };
    let loaded = gcs_page(state, table, params.query.clone(), false).await;
    let pids = match (&loaded, table) {
        (Ok((page, _)), StateTable::Actors) => worker_pids(state, &page.rows).await,
        _ => HashMap::new(),
    };
    let content = html! {
        (heading(title, None))
        (filter_form(path, &params, states, keys))
        @match &loaded {
            Err(error) => (failed(error)),
            Ok((page, _)) if page.rows.is_empty() => (empty(&if params.query.filters.is_empty() { format!("No {} yet.", title.to_lowercase()) } else { format!("No {} match these filters.", title.to_lowercase()) })),
            Ok((page, _)) => { (table_with_pids(path, &page.rows, &pids)) (pager(path, &params, page)) }
        }
    };
    render(request, nav, title, content)
}

/// Worker pids of the rows' workers, read from their nodes' log file names
/// (`worker-<worker id>-<pid>.out`); nodes that do not answer are skipped.
async fn worker_pids(state: &AppState, rows: &[Value]) -> HashMap<String, u32> {
    let nodes: BTreeSet<NodeId> = rows.iter().filter_map(|row| row["node_id"].as_str()?.parse().ok()).collect();
    let mut pids = HashMap::new();
    for node_id in nodes {
        let Ok(peer) = crate::http::logs::node_link(state, node_id).await else { continue };
        let Ok(reply) = peer.rpc(ListLogsRequest {}, Duration::from_secs(5)).await else { continue };
        for file in reply.files {
            if let Some((worker, pid)) = worker_of_log(&file.name) {
                pids.insert(worker.to_string(), pid);
            }
        }
    }
    pids
}

/// `worker-<id>-<pid>.out` → (id, pid).
pub fn worker_of_log(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix("worker-")?;
    let (stem, _) = rest.split_once('.')?;
    let (worker, pid) = stem.rsplit_once('-')?;
    Some((worker, pid.parse().ok()?))
}

/// `/actors`.
pub async fn actors(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let where_ = (Nav::Actors, "/actors", "Actors");
    list_page(&state, &request, where_, StateTable::Actors, (ACTOR_STATES, ActorRecord::KEYS)).await
}

/// `/tasks`.
pub async fn tasks(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let where_ = (Nav::Tasks, "/tasks", "Tasks");
    list_page(&state, &request, where_, StateTable::Tasks, (TASK_STATES, TaskRecord::KEYS)).await
}

/// `/placement-groups`.
pub async fn placement_groups(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let where_ = (Nav::PlacementGroups, "/placement-groups", "Placement groups");
    list_page(&state, &request, where_, StateTable::PlacementGroups, (GROUP_STATES, PlacementGroupInfo::KEYS)).await
}

async fn one(
    state: &AppState,
    table: StateTable,
    key: &str,
    value: &str,
    detail: bool,
) -> Result<Option<Value>, String> {
    let filter = StateFilter::parse(&format!("{key}={value}"))?;
    let query = StateQuery { filters: vec![filter], ..StateQuery::newest(1) };
    let (page, _) = gcs_page(state, table, query, detail).await.map_err(|error| error.message().to_string())?;
    Ok(page.rows.into_iter().next())
}

/// `/tasks/{id}`.
pub async fn task(state: web::Data<AppState>, task_id: web::Path<String>, request: HttpRequest) -> HttpResponse {
    let task_id = task_id.into_inner();
    let content = match one(&state, StateTable::Tasks, "task_id", &task_id, true).await {
        Err(message) => error_box(&message),
        Ok(None) => {
            html! { (heading("Task", None)) (empty(&format!("Task {task_id} is not in the history (it keeps the newest 100,000 tasks)."))) }
        }
        Ok(Some(task)) => html! {
            p.crumbs { a href="/tasks" { "Tasks" } " / " (task_id) }
            div.heading { h1 { "Task " (id(&task_id, None)) } (badge(task["state"].as_str().unwrap_or_default())) }
            dl.facts {
                dt { "Name" } dd { (text(&task["name"])) }
                dt { "Type" } dd { (text(&task["type"])) }
                dt { "Job" } dd { (text(&task["job_id"])) }
                dt { "Node" } dd { (node_cell(&task)) }
                dt { "Worker" } dd { (text(&task["worker_id"])) }
                dt { "Actor" } dd { @match task["actor_id"].as_str() { Some(actor) => (id(actor, Some(format!("/actors/{actor}")))), None => "—" } }
                dt { "Started" } dd { (time(task["start_time_ms"].as_u64())) }
                dt { "Ended" } dd { (time(task["end_time_ms"].as_u64())) }
                dt { "Error" } dd.error-text { (text(&task["error_message"])) }
            }
            @if let (Some(node), Some(worker)) = (task["node_id"].as_str(), task["worker_id"].as_str()) {
                p { a href={ "/logs?node_id=" (node) "&q=worker-" (worker) } { "This task's worker's log files →" } }
            }
            h2 { "State history" }
            table {
                thead { tr { th { "State" } th { "At" } } }
                tbody { @for entry in task["state_history"].as_array().into_iter().flatten() {
                    tr { td { (badge(entry["state"].as_str().unwrap_or_default())) } td { (time(entry["time_ms"].as_u64())) } }
                } }
            }
            h2 { "Lease outcomes" }
            (json_block(&task["lease_outcomes"]))
        },
    };
    render(&request, Nav::Tasks, &format!("Task {task_id}"), content)
}

/// `/actors/{id}`: the actor, its calls and its worker's log.
pub async fn actor(state: web::Data<AppState>, actor_id: web::Path<String>, request: HttpRequest) -> HttpResponse {
    let actor_id = actor_id.into_inner();
    let row = match one(&state, StateTable::Actors, "actor_id", &actor_id, false).await {
        Err(message) => return render(&request, Nav::Actors, "Actor", error_box(&message)),
        Ok(None) => {
            let content = html! { (heading("Actor", None)) (empty(&format!("There is no actor {actor_id} (the history keeps the newest 10,000 dead actors)."))) };
            return render(&request, Nav::Actors, "Actor", content);
        }
        Ok(Some(row)) => row,
    };
    let params = ListParams::of(&request).unwrap_or_else(|_| ListParams::first_page());
    let calls_query = StateQuery {
        filters: vec![StateFilter::parse(&format!("actor_id={actor_id}")).expect("filter")],
        ..params.query.clone()
    };
    let calls = gcs_page(&state, StateTable::Tasks, calls_query, false).await;
    let logs = worker_log(&state, &row).await;
    let pid = logs
        .as_ref()
        .ok()
        .and_then(|files| files.first())
        .and_then(|(name, _)| worker_of_log(name))
        .map(|(_, pid)| pid);
    let content = html! {
        p.crumbs { a href="/actors" { "Actors" } " / " (actor_id) }
        div.heading { h1 { (text(&row["class_name"])) " " (id(&actor_id, None)) } (badge(row["state"].as_str().unwrap_or_default())) }
        dl.facts {
            dt { "Name" } dd { (text(&row["name"])) }
            dt { "Namespace" } dd { (text(&row["ray_namespace"])) }
            dt { "Job" } dd { @if let Some(job) = row["job_id"].as_str() { a href={ "/jobs/" (job) } { (job) } } }
            dt { "Node" } dd { (node_cell(&row)) }
            dt { "Worker" } dd { (text(&row["worker_id"])) }
            dt { "PID" } dd { @match pid { Some(pid) => (pid), None => "—" } }
            dt { "Restarts" } dd { (text(&row["num_restarts"])) }
            dt { "Detached" } dd { (text(&row["is_detached"])) }
            dt { "Death cause" } dd.error-text { (text(&row["death_cause"])) }
        }
        h2 { "Calls" }
        @match &calls {
            Err(error) => (failed(error)),
            Ok((page, _)) if page.rows.is_empty() => (empty("No calls recorded for this actor.")),
            Ok((page, _)) => { (table_for("/tasks", &page.rows)) (pager(&format!("/actors/{actor_id}"), &params, page)) }
        }
        h2 { "Log" }
        (log_tails(&row, &logs))
    };
    render(&request, Nav::Actors, &format!("Actor {actor_id}"), content)
}

/// The actor's worker's log files with their last lines.
async fn worker_log(state: &AppState, row: &Value) -> Result<Vec<(String, String)>, String> {
    let (Some(node), Some(worker)) = (row["node_id"].as_str(), row["worker_id"].as_str()) else {
        return Ok(Vec::new());
    };
    let node_id: NodeId = node.parse().map_err(|_| format!("{node:?} is not a node id"))?;
    let peer = crate::http::logs::node_link(state, node_id).await?;
    let files = peer.rpc(ListLogsRequest {}, Duration::from_secs(5)).await.map_err(|error| error.to_string())?.files;
    let prefix = format!("worker-{worker}-");
    let mut tails = Vec::new();
    for file in files.into_iter().filter(|file| file.name.starts_with(&prefix)) {
        let read = ReadLogRequest { name: file.name.clone(), offset: 0, max_bytes: 64 << 10, tail_lines: Some(100) };
        let data = match peer.rpc(read, Duration::from_secs(5)).await {
            Ok(reply) => String::from_utf8_lossy(&reply.data).into_owned(),
            Err(error) => format!("(could not read: {error})"),
        };
        tails.push((file.name, data));
    }
    Ok(tails)
}

fn log_tails(row: &Value, logs: &Result<Vec<(String, String)>, String>) -> Markup {
    let node = row["node_id"].as_str().unwrap_or_default();
    html! {
        @match logs {
            Err(message) => (error_box(message)),
            Ok(files) if files.is_empty() => (empty("No log file of this actor's worker is on its node (the node may be gone).")),
            Ok(files) => @for (name, data) in files {
                h3 { a href={ "/logs/" (node) "/" (name) } { (name) } " " span.muted { "(last 100 lines; open to follow)" } }
                pre.log { (data) }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_log_names_give_worker_and_pid() {
        assert_eq!(worker_of_log("worker-ab12-345.out"), Some(("ab12", 345)));
        assert_eq!(worker_of_log("worker-ab12-345.err.1"), Some(("ab12", 345)));
        assert_eq!(worker_of_log("raylet.out"), None);
        assert_eq!(worker_of_log("worker-x.out"), None);
    }

    #[test]
    fn tables_escape_what_users_named() {
        let rows = vec![serde_json::json!({"actor_id": "a1", "class_name": "<b>C</b>", "state": "ALIVE", "name": "n"})];
        let html = table_for("/actors", &rows).into_string();
        assert!(html.contains("&lt;b&gt;C&lt;/b&gt;"), "{html}");
    }
}
