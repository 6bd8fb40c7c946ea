//! `/cluster` and `/cluster/{node_id}`: nodes with their address, state,
//! resources, labels and machine use; a node's page has its workers, actors,
//! recent tasks and log files.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use manta_proto::NodeId;
use manta_proto::logs::ListLogsRequest;
use manta_proto::query::{StateFilter, StateQuery};
use manta_proto::task::StateTable;
use maud::{Markup, html};
use serde_json::Value;

use super::overview::meter;
use super::{
    ListParams, Nav, badge, bytes, empty, error_box, failed, filter_form, heading, id, pager, render, text, time,
};
use crate::http::AppState;
use crate::http::state::{gcs_page, page};
use crate::metrics_history::NodeUsage;

const KEYS: &[&str] = &["node_id", "node_ip", "is_head_node", "state"];

fn usage_of(state: &AppState, node_id: &str) -> Option<NodeUsage> {
    let history = state.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let latest = history.latest()?;
    latest.nodes.iter().find(|(id, _)| id.to_string() == node_id).map(|(_, usage)| usage.clone())
}

fn resource(node: &Value, name: &str) -> Markup {
    let total = node["resources_total"][name].as_f64().unwrap_or_default();
    let available = node["resources_available"][name].as_f64().unwrap_or_default();
    if total > 0.0 {
        meter(name, (total - available).max(0.0), total)
    } else {
        html! { span.muted { "—" } }
    }
}

fn machine(usage: &Option<NodeUsage>) -> (Markup, Markup) {
    let cpu = match usage.as_ref().and_then(|usage| usage.cpu_percent) {
        Some(percent) => {
            html! { span.meter { meter min="0" max="100" value=(percent) {} " " (format!("{percent:.0}")) " %" } }
        }
        None => html! { span.muted { "—" } },
    };
    let memory = match usage.as_ref().and_then(|usage| Some((usage.mem_used?, usage.mem_total?))) {
        Some((used, total)) => {
            html! { span.meter { meter min="0" max=(total) value=(used) {} " " (bytes(used)) " / " (bytes(total)) } }
        }
        None => html! { span.muted { "—" } },
    };
    (cpu, memory)
}

fn labels(node: &Value) -> Markup {
    html! {
        @for (key, value) in node["labels"].as_object().into_iter().flatten() {
            span.label { (key) "=" (text(value)) } " "
        }
    }
}

/// `/cluster`.
pub async fn list(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let params = match ListParams::of(&request) {
        Ok(params) => params,
        Err(message) => return render(&request, Nav::Cluster, "Cluster", error_box(&message)),
    };
    let loaded = page(&state, "nodes", params.query.clone(), false).await;
    let content = html! {
        (heading("Cluster", Some(html! { "Logical resources are what the scheduler hands out; CPU and memory use are the machine's, read from each node's /metrics." })))
        (filter_form("/cluster", &params, &["ALIVE", "DEAD"], KEYS))
        @match &loaded {
            Err(error) => (failed(error)),
            Ok(nodes) if nodes.rows.is_empty() => (empty("No node matches.")),
            Ok(nodes) => {
                table {
                    thead { tr { th { "Node" } th { "Address" } th { "State" } th { "CPUs" } th { "GPUs" } th { "Memory" } th { "Object store" } th { "CPU use" } th { "Memory use" } th { "Labels" } th { "Started" } } }
                    tbody { @for node in &nodes.rows {
                        @let node_id = node["node_id"].as_str().unwrap_or_default();
                        @let (cpu, memory) = machine(&usage_of(&state, node_id));
                        tr {
                            td { (id(node_id, Some(format!("/cluster/{node_id}")))) @if node["is_head"] == true { " " span.label { "head" } } }
                            td { code { (text(&node["address"])) } }
                            td { (badge(node["state"].as_str().unwrap_or_default())) }
                            td { (resource(node, "CPU")) }
                            td { (resource(node, "GPU")) }
                            td { (resource(node, "memory")) }
                            td { (resource(node, "object_store_memory")) }
                            td { (cpu) }
                            td { (memory) }
                            td { (labels(node)) }
                            td { (time(node["start_time_ms"].as_u64())) }
                        }
                    } }
                }
                (pager("/cluster", &params, nodes))
            }
        }
    };
    render(&request, Nav::Cluster, "Cluster", content)
}

/// `/cluster/{node_id}`.
pub async fn detail(state: web::Data<AppState>, node_id: web::Path<String>, request: HttpRequest) -> HttpResponse {
    let node_id = node_id.into_inner();
    let filter = |key: &str| StateFilter::parse(&format!("{key}={node_id}")).map_err(|error| error_box(&error));
    let node_filter = match filter("node_id") {
        Ok(filter) => filter,
        Err(markup) => return render(&request, Nav::Cluster, "Node", markup),
    };
    let query = StateQuery { filters: vec![node_filter.clone()], ..StateQuery::newest(1) };
    let node = match page(&state, "nodes", query, false).await {
        Ok(page) => page.rows.into_iter().next(),
        Err(error) => return render(&request, Nav::Cluster, "Node", failed(&error)),
    };
    let Some(node) = node else {
        let content = html! { (heading("Node", None)) (empty(&format!("There is no node {node_id} in this cluster."))) a href="/cluster" { "← Cluster" } };
        return render(&request, Nav::Cluster, "Node", content);
    };
    let alive = node["state"] == "ALIVE";
    let actors_query = StateQuery {
        filters: vec![node_filter.clone(), StateFilter::parse("state=ALIVE").expect("filter")],
        ..StateQuery::newest(50)
    };
    let actors = gcs_page(&state, StateTable::Actors, actors_query, false).await;
    let tasks =
        gcs_page(&state, StateTable::Tasks, StateQuery { filters: vec![node_filter], ..StateQuery::newest(20) }, false)
            .await;
    let files = if alive { Some(log_files(&state, &node_id).await) } else { None };
    let (cpu, memory) = machine(&usage_of(&state, &node_id));
    let content = html! {
        p.crumbs { a href="/cluster" { "Cluster" } " / " (node_id) }
        div.heading { h1 { "Node " (id(&node_id, None)) } (badge(node["state"].as_str().unwrap_or_default())) @if node["is_head"] == true { span.label { "head" } } }
        dl.facts {
            dt { "Address" } dd { code { (text(&node["address"])) } }
            dt { "Process" } dd { "pid " (text(&node["pid"])) }
            dt { "Started" } dd { (time(node["start_time_ms"].as_u64())) }
            dt { "Ended" } dd { (time(node["end_time_ms"].as_u64())) }
            dt { "Death reason" } dd { (text(&node["death_reason"])) }
            dt { "CPU use" } dd { (cpu) }
            dt { "Memory use" } dd { (memory) }
            dt { "Labels" } dd { (labels(&node)) }
        }
        h2 { "Resources" }
        table {
            thead { tr { th { "Resource" } th { "In use / in all" } } }
            tbody { @for (name, _) in node["resources_total"].as_object().into_iter().flatten() {
                tr { td { (name) } td { (resource(&node, name)) } }
            } }
        }
        h2 { "Workers" }
        @match &files {
            None => (empty("The node is dead; its workers are gone.")),
            Some(Err(message)) => (error_box(message)),
            Some(Ok(files)) => (workers(&node_id, files)),
        }
        h2 { "Actors on this node" a.more href={ "/actors?filter=node_id%3D" (node_id) } { "all →" } }
        @match &actors {
            Err(error) => (failed(error)),
            Ok((page, _)) if page.rows.is_empty() => (empty("No alive actor on this node.")),
            Ok((page, _)) => (super::lists::table_for("/actors", &page.rows)),
        }
        h2 { "Recent tasks on this node" a.more href={ "/tasks?filter=node_id%3D" (node_id) } { "all →" } }
        @match &tasks {
            Err(error) => (failed(error)),
            Ok((page, _)) if page.rows.is_empty() => (empty("No task has run here yet.")),
            Ok((page, _)) => (super::lists::table_for("/tasks", &page.rows)),
        }
        h2 { "Log files" a.more href={ "/logs?node_id=" (node_id) } { "browse →" } }
        @match &files {
            None => (empty("The node is dead; its log files are gone with it.")),
            Some(Err(message)) => (error_box(message)),
            Some(Ok(files)) => (file_table(&node_id, files)),
        }
    };
    render(&request, Nav::Cluster, &format!("Node {node_id}"), content)
}

/// The node's log files: (name, size).
pub async fn log_files(state: &AppState, node_id: &str) -> Result<Vec<(String, u64)>, String> {
    let node: NodeId = node_id.parse().map_err(|_| format!("{node_id:?} is not a node id"))?;
    let peer = crate::http::logs::node_link(state, node).await?;
    let reply = peer.rpc(ListLogsRequest {}, Duration::from_secs(5)).await.map_err(|error| error.to_string())?;
    let mut files: Vec<(String, u64)> = reply.files.into_iter().map(|file| (file.name, file.size)).collect();
    files.sort();
    Ok(files)
}

/// The worker processes the node's log files name.
fn workers(node_id: &str, files: &[(String, u64)]) -> Markup {
    let mut seen: Vec<(String, u32)> = files
        .iter()
        .filter_map(|(name, _)| super::lists::worker_of_log(name))
        .map(|(worker, pid)| (worker.to_string(), pid))
        .collect();
    seen.dedup();
    html! {
        @if seen.is_empty() { (empty("No worker has started on this node yet.")) } @else {
            p.muted { "Worker processes this node has started (from their log files), newest last." }
            table {
                thead { tr { th { "Worker" } th { "PID" } th { "Logs" } } }
                tbody { @for (worker, pid) in &seen {
                    tr {
                        td { (id(worker, None)) }
                        td { (pid) }
                        td {
                            a href={ "/logs/" (node_id) "/worker-" (worker) "-" (pid) ".out" } { "stdout" } " · "
                            a href={ "/logs/" (node_id) "/worker-" (worker) "-" (pid) ".err" } { "stderr" }
                        }
                    }
                } }
            }
        }
    }
}

/// A table of log files with links to each.
pub fn file_table(node_id: &str, files: &[(String, u64)]) -> Markup {
    html! {
        @if files.is_empty() { (empty("No log files match.")) } @else {
            table {
                thead { tr { th { "File" } th { "Size" } } }
                tbody { @for (name, size) in files {
                    tr { td { a href={ "/logs/" (node_id) "/" (name) } { code { (name) } } } td { (bytes(*size as f64)) } }
                } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_come_from_log_names_once_each() {
        let files = vec![
            ("raylet.out".to_string(), 1),
            ("worker-aa-10.err".to_string(), 1),
            ("worker-aa-10.out".to_string(), 1),
        ];
        let html = workers("n1", &files).into_string();
        assert_eq!(html.matches("<tr>").count(), 2, "a header and one worker: {html}");
        assert!(html.contains("/logs/n1/worker-aa-10.out"), "{html}");
    }
}
