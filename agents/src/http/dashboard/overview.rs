//! `/`: the cluster at a glance: resources used and in all, nodes, jobs
//! running and recent, actors by state, task throughput and recent errors.

use actix_web::{HttpRequest, HttpResponse, web};
use manta_proto::query::{StateFilter, StateQuery};
use manta_proto::task::StateTable;
use maud::{Markup, html};

use super::{Nav, badge, charts, empty, error_box, heading, id, render, text, time};
use crate::http::AppState;
use crate::http::state::{gcs_page, page as state_page};

/// The overview.
pub async fn page(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let (latest, rates) = {
        let history = state.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (history.latest().cloned(), history.throughput())
    };
    let jobs = state_page(&state, "jobs", StateQuery::newest(8), false).await;
    let failed_query =
        StateQuery { filters: vec![StateFilter::parse("state=FAILED").expect("filter")], ..StateQuery::newest(5) };
    let failed = gcs_page(&state, StateTable::Tasks, failed_query, false).await;
    let actors = gcs_page(&state, StateTable::Actors, StateQuery::newest(0), false).await;
    let tasks = gcs_page(&state, StateTable::Tasks, StateQuery::newest(0), false).await;
    let nodes = state_page(&state, "nodes", StateQuery::newest(manta_proto::query::MAX_LIMIT), false).await;

    let content = html! {
        (heading("Overview", None))
        section.cards {
            @match &latest {
                Some(sample) => {
                    @for name in ["CPU", "GPU", "memory", "object_store_memory"] {
                        @let total = sample.resources_total.get(name).copied().unwrap_or_default();
                        @let used = sample.resources_used.get(name).copied().unwrap_or_default();
                        div.card {
                            h2 { (resource_label(name)) }
                            @if total > 0.0 {
                                p.big { (amount(name, used)) " / " (amount(name, total)) }
                                meter min="0" max=(total) value=(used) {}
                            } @else {
                                p.big.muted { "none" }
                            }
                        }
                    }
                }
                None => div.card { p.empty { "The first sample of the cluster's resources comes within a few seconds." } }
            }
            div.card {
                h2 { "Nodes" }
                @match &nodes {
                    Ok(nodes) => {
                        @let alive = nodes.rows.iter().filter(|row| row["state"] == "ALIVE").count();
                        p.big { (alive) " alive" }
                        p.muted { (nodes.total - alive) " dead" }
                        a href="/cluster" { "Cluster →" }
                    }
                    Err(error) => (error_box(error.message())),
                }
            }
        }
        section.grid2 {
            div.panel {
                h2 { "Jobs" a.more href="/jobs" { "all jobs →" } }
                @match &jobs {
                    Ok(jobs) if jobs.rows.is_empty() => (empty("No jobs yet. Submit one with `manta job submit -- <command>`.")),
                    Ok(jobs) => table {
                        thead { tr { th { "Job" } th { "Status" } th { "Entrypoint" } th { "Started" } } }
                        tbody {
                            @for job in &jobs.rows {
                                @let key = job["submission_id"].as_str().or(job["job_id"].as_str()).unwrap_or_default().to_string();
                                tr {
                                    td { (id(&key, Some(format!("/jobs/{key}")))) }
                                    td { (badge(job["status"].as_str().unwrap_or_default())) }
                                    td.clip { code { (text(&job["entrypoint"])) } }
                                    td { (time(job["start_time"].as_u64())) }
                                }
                            }
                        }
                    },
                    Err(error) => (error_box(error.message())),
                }
            }
            div.panel {
                h2 { "Actors" a.more href="/actors" { "all actors →" } }
                @match &actors {
                    Ok((_, reply)) if reply.total == 0 => (empty("No actors yet.")),
                    Ok((_, reply)) => ul.counts {
                        @for (state, count) in &reply.counts {
                            li { a href={ "/actors?state=" (state) } { (badge(state)) } " " strong { (count) } }
                        }
                    },
                    Err(error) => (error_box(error.message())),
                }
                h2 { "Tasks" a.more href="/tasks" { "all tasks →" } }
                @match &tasks {
                    Ok((_, reply)) => {
                        ul.counts {
                            @for (state, count) in &reply.counts {
                                li { a href={ "/tasks?state=" (state) } { (badge(state)) } " " strong { (count) } }
                            }
                        }
                        p.muted { (reply.completed_total) " tasks finished or failed since the head started" }
                    }
                    Err(error) => (error_box(error.message())),
                }
                (charts::sparkline("Tasks completed per second", &rates))
            }
        }
        section.panel {
            h2 { "Recent errors" a.more href="/tasks?state=FAILED" { "all failed tasks →" } }
            @match &failed {
                Ok((page, _)) if page.rows.is_empty() => (empty("No failed tasks.")),
                Ok((page, _)) => table {
                    thead { tr { th { "Task" } th { "Name" } th { "Error" } th { "Ended" } } }
                    tbody {
                        @for task in &page.rows {
                            @let task_id = task["task_id"].as_str().unwrap_or_default();
                            tr {
                                td { (id(task_id, Some(format!("/tasks/{task_id}")))) }
                                td { (text(&task["name"])) }
                                td.clip.error-text { (text(&task["error_message"])) }
                                td { (time(task["end_time_ms"].as_u64())) }
                            }
                        }
                    }
                },
                Err(error) => (error_box(error.message())),
            }
        }
    };
    render(&request, Nav::Overview, "Overview", content)
}

fn resource_label(name: &str) -> &str {
    match name {
        "object_store_memory" => "Object store",
        "memory" => "Memory",
        other => other,
    }
}

/// A resource amount: memory-like ones in bytes, others as counts.
pub fn amount(name: &str, value: f64) -> String {
    if name.contains("memory") { super::bytes(value) } else { format!("{}", (value * 100.0).round() / 100.0) }
}

/// Used/total of one resource as a meter (for tables).
pub fn meter(name: &str, used: f64, total: f64) -> Markup {
    html! {
        span.meter {
            meter min="0" max=(total) value=(used) {}
            " " (amount(name, used)) " / " (amount(name, total))
        }
    }
}
