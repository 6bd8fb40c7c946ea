//! `/logs`: browse each node's log files (by name, or by the actor or task
//! whose worker wrote them), and `/logs/{node_id}/{file}`: a file's last
//! lines, followed live while "Follow" is on.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use manta_proto::logs::ReadLogRequest;
use manta_proto::query::{StateFilter, StateQuery};
use manta_proto::task::StateTable;
use maud::html;

use super::cluster::{file_table, log_files};
use super::{Nav, empty, error_box, failed, heading, id, render};
use crate::http::AppState;
use crate::http::state::{gcs_page, page, pairs, param};

/// Lines a file view starts with.
const TAIL_LINES: u64 = 1000;

/// The worker (node id, worker id) that ran a task or hosts an actor.
async fn worker_of(state: &AppState, table: StateTable, key: &str, value: &str) -> Result<(String, String), String> {
    let filter = StateFilter::parse(&format!("{key}={value}"))?;
    let query = StateQuery { filters: vec![filter], ..StateQuery::newest(1) };
    let (page, _) = gcs_page(state, table, query, false).await.map_err(|error| error.message().to_string())?;
    let row = page
        .rows
        .first()
        .ok_or_else(|| format!("no {} {value} in the cluster's history", key.trim_end_matches("_id")))?;
    match (row["node_id"].as_str(), row["worker_id"].as_str()) {
        (Some(node), Some(worker)) => Ok((node.to_string(), worker.to_string())),
        _ => Err(format!("{value} has not run on a worker yet")),
    }
}

/// `/logs`.
pub async fn browse(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let pairs = pairs(request.query_string());
    let mut node_id = param(&pairs, "node_id").unwrap_or_default().to_string();
    let mut q = param(&pairs, "q").unwrap_or_default().to_string();
    let mut problem = None;
    for (key, table) in [("actor_id", StateTable::Actors), ("task_id", StateTable::Tasks)] {
        if let Some(value) = param(&pairs, key).filter(|value| !value.trim().is_empty()) {
            match worker_of(&state, table, key, value.trim()).await {
                Ok((node, worker)) => {
                    node_id = node;
                    q = format!("worker-{worker}");
                }
                Err(message) => problem = Some(message),
            }
        }
    }
    let nodes = page(&state, "nodes", StateQuery::newest(manta_proto::query::MAX_LIMIT), false).await;
    let files = if node_id.is_empty() { None } else { Some(log_files(&state, &node_id).await) };
    let content = html! {
        (heading("Logs", Some(html! { "Every node's log files: the node's own, and each worker's stdout and stderr." })))
        form.filters method="get" action="/logs" {
            label { "Node "
                select name="node_id" {
                    option value="" { "choose a node" }
                    @if let Ok(nodes) = &nodes {
                        @for node in nodes.rows.iter().filter(|node| node["state"] == "ALIVE") {
                            @let value = node["node_id"].as_str().unwrap_or_default();
                            option value=(value) selected[value == node_id] { (value) @if node["is_head"] == true { " (head)" } }
                        }
                    }
                }
            }
            label { "File name contains " input type="text" name="q" value=(q) placeholder="worker-, raylet, job-driver-"; }
            button type="submit" { "Show" }
        }
        form.filters method="get" action="/logs" {
            label { "Actor id " input type="text" name="actor_id" placeholder="the actor's worker's logs"; }
            label { "Task id " input type="text" name="task_id" placeholder="the task's worker's logs"; }
            button type="submit" { "Find" }
        }
        @if let Some(message) = &problem { (error_box(message)) }
        @if let Err(error) = &nodes { (failed(error)) }
        @match &files {
            None => (empty("Choose a node, or give an actor or task id.")),
            Some(Err(message)) => (error_box(message)),
            Some(Ok(files)) => {
                h2 { "Node " (id(&node_id, Some(format!("/cluster/{node_id}")))) }
                @let shown: Vec<(String, u64)> = files.iter().filter(|(name, _)| name.contains(q.as_str())).cloned().collect();
                (file_table(&node_id, &shown))
            }
        }
    };
    render(&request, Nav::Logs, "Logs", content)
}

/// `/logs/{node_id}/{file}`.
pub async fn file(state: web::Data<AppState>, path: web::Path<(String, String)>, request: HttpRequest) -> HttpResponse {
    let (node_id, name) = path.into_inner();
    let read = async {
        let node = node_id.parse().map_err(|_| format!("{node_id:?} is not a node id"))?;
        let peer = crate::http::logs::node_link(&state, node).await?;
        let request =
            ReadLogRequest { name: name.clone(), offset: 0, max_bytes: 4 << 20, tail_lines: Some(TAIL_LINES) };
        peer.rpc(request, Duration::from_secs(10)).await.map_err(|error| error.to_string())
    };
    let content = match read.await {
        Err(message) => html! { (heading(&name, None)) (error_box(&message)) },
        Ok(reply) => html! {
            p.crumbs { a href={ "/logs?node_id=" (node_id) } { "Logs" } " / " (id(&node_id, Some(format!("/cluster/{node_id}")))) " / " (name) }
            div.heading {
                h1 { code { (name) } }
                label.follow data-keep="follow" { input #follow type="checkbox" checked; " Follow" }
                a href={ "/api/v0/logs/file?node_id=" (node_id) "&filename=" (name) "&offset=0" } download=(name) { "Download" }
            }
            p.muted { "The last " (TAIL_LINES) " lines; new output is appended while Follow is on." }
            pre.log #file-log data-keep="file-log" data-node=(node_id) data-file=(name) data-offset=(reply.next_offset) {
                (String::from_utf8_lossy(&reply.data))
            }
        },
    };
    render(&request, Nav::Logs, &name, content)
}
