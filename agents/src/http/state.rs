//! The state API: `GET /api/v0/{nodes,jobs,actors,tasks,placement_groups,objects}`
//! with Ray's query parameters (`limit`, repeated `filter_keys` /
//! `filter_predicates` / `filter_values`, `detail`) and Ray's envelope
//! (`{"result": true, "msg": "", "data": {"result": {"total", "num_after_truncation",
//! "num_filtered", "result": [...], ...}}}`), plus `offset` for paging and the
//! short form `filter=key=value` / `filter=key!=value`. Tasks, actors, jobs'
//! drivers and placement groups are filtered and paged by the GCS where they
//! live; nodes, objects and submitted jobs, which are small, here.
//!
//! Logs: `GET /api/v0/logs?node_id=` lists a node's files, and
//! `GET /api/v0/logs/file?node_id=&filename=` returns one (the last `lines`
//! lines, or from byte `offset` with the next offset in `X-Next-Offset`).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use manta_proto::gcs::GetAllNodesRequest;
use manta_proto::logs::{ListLogsRequest, ReadLogRequest};
use manta_proto::query::{FilterOp, MAX_LIMIT, StateFilter, StateQuery};
use manta_proto::task::{ListStateReply, ListStateRequest, StateRows, StateTable};
use manta_proto::{NodeId, WireError};
use serde_json::{Value, json};

use super::{AppState, call_error};
use crate::state_json;

/// Rows a query returns unless it says (Ray's default).
pub const DEFAULT_LIMIT: usize = 100;
/// Bytes one log read returns at most.
const LOG_READ_BYTES: u64 = 1 << 20;

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v0/logs", web::get().to(list_logs))
        .route("/v0/logs/file", web::get().to(read_log))
        .route("/v0/{resource}", web::get().to(list));
}

/// A query string's pairs, repeated keys kept.
pub fn pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).map(|(key, value)| (key.into_owned(), value.into_owned())).collect()
}

/// The first value of `key`.
pub fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
}

fn number(pairs: &[(String, String)], key: &str, default: usize) -> Result<usize, String> {
    match param(pairs, key) {
        None | Some("") => Ok(default),
        Some(text) => text.parse().map_err(|_| format!("{key} must be a whole number, not {text:?}")),
    }
}

/// Ray's parameters as a query: `filter_keys[i] filter_predicates[i] filter_values[i]`
/// triples (AND), `filter=key=value` pairs, `limit`, `offset`.
pub fn query_of(pairs: &[(String, String)]) -> Result<StateQuery, String> {
    fn all<'a>(pairs: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a str> {
        pairs.iter().filter(move |(name, _)| name == key).map(|(_, value)| value.as_str())
    }
    let keys: Vec<&str> = all(pairs, "filter_keys").collect();
    let predicates: Vec<&str> = all(pairs, "filter_predicates").collect();
    let values: Vec<&str> = all(pairs, "filter_values").collect();
    if keys.len() != values.len() || (!predicates.is_empty() && predicates.len() != keys.len()) {
        return Err("filter_keys, filter_predicates and filter_values must come in equal numbers".into());
    }
    let mut filters = Vec::new();
    for (index, (key, value)) in keys.iter().zip(&values).enumerate() {
        let op = predicates.get(index).map_or(Ok(FilterOp::Eq), |text| FilterOp::parse(text))?;
        filters.push(StateFilter { key: key.to_string(), op, value: value.to_string() });
    }
    for text in all(pairs, "filter").filter(|text| !text.trim().is_empty()) {
        filters.push(StateFilter::parse(text)?);
    }
    let limit = number(pairs, "limit", DEFAULT_LIMIT)?;
    let offset = number(pairs, "offset", 0)?;
    if limit > MAX_LIMIT {
        return Err(format!("limit {limit} is over the most rows one query returns, {MAX_LIMIT}"));
    }
    Ok(StateQuery { filters, offset, limit })
}

fn detail_of(pairs: &[(String, String)]) -> bool {
    matches!(param(pairs, "detail"), Some("1" | "true" | "True"))
}

/// Ray's failure envelope.
pub fn failure(status: actix_web::http::StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({"result": false, "msg": message.into(), "data": {}}))
}

/// A page of rows as JSON, with the counts, for the API and the pages alike.
pub struct JsonPage {
    /// The rows, newest first.
    pub rows: Vec<Value>,
    /// Rows in the table.
    pub total: usize,
    /// Rows that passed the filters.
    pub matched: usize,
    /// Rows dropped by the history bound.
    pub dropped: u64,
    /// Things the reader should know (nodes that did not answer).
    pub warnings: Vec<String>,
}

/// Why a page could not be made: a bad query (400) or a cluster that did not answer.
pub enum PageError {
    /// The caller's mistake.
    Invalid(String),
    /// The GCS or a node did not answer.
    Unavailable(String),
}

impl PageError {
    /// The error as Ray's envelope.
    pub fn response(&self) -> HttpResponse {
        match self {
            PageError::Invalid(message) => failure(actix_web::http::StatusCode::BAD_REQUEST, message),
            PageError::Unavailable(message) => failure(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, message),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            PageError::Invalid(message) | PageError::Unavailable(message) => message,
        }
    }
}

fn gcs_error(error: manta_proto::net::CallError) -> PageError {
    match error {
        manta_proto::net::CallError::Remote(WireError { code: manta_proto::ErrorCode::InvalidArgument, message }) => {
            PageError::Invalid(message)
        }
        other => PageError::Unavailable(format!("the GCS did not answer: {other}; retry in a moment")),
    }
}

/// A GCS table's rows as state API JSON, one at a time.
pub fn rows_of(rows: &StateRows, detail: bool) -> Box<dyn Iterator<Item = Value> + '_> {
    match rows {
        StateRows::Jobs(jobs) => Box::new(jobs.iter().map(state_json::job)),
        StateRows::Actors(actors) => Box::new(actors.iter().map(state_json::actor)),
        StateRows::PlacementGroups(groups) => Box::new(groups.iter().map(state_json::placement_group)),
        StateRows::Tasks(tasks) => Box::new(tasks.iter().map(move |task| state_json::task(task, detail))),
    }
}

async fn gcs_reply(state: &AppState, table: StateTable, query: StateQuery) -> Result<ListStateReply, PageError> {
    let request = ListStateRequest { table, limit: query.limit, offset: query.offset, filters: query.filters };
    state.gcs.call(request).await.map_err(gcs_error)
}

/// One GCS table's page.
pub async fn gcs_page(
    state: &AppState,
    table: StateTable,
    query: StateQuery,
    detail: bool,
) -> Result<(JsonPage, ListStateReply), PageError> {
    let reply = gcs_reply(state, table, query).await?;
    let rows = rows_of(&reply.rows, detail).collect();
    let page =
        JsonPage { rows, total: reply.total, matched: reply.matched, dropped: reply.dropped, warnings: Vec::new() };
    Ok((page, reply))
}

fn gcs_table(resource: &str) -> Option<StateTable> {
    match resource {
        "tasks" => Some(StateTable::Tasks),
        "actors" => Some(StateTable::Actors),
        "placement_groups" => Some(StateTable::PlacementGroups),
        _ => None,
    }
}

/// A page of rows filtered here.
pub fn local_page(all: Vec<Value>, query: &StateQuery, warnings: Vec<String>) -> JsonPage {
    let total = all.len();
    let matching: Vec<Value> = all.into_iter().filter(|row| state_json::passes(row, &query.filters)).collect();
    let matched = matching.len();
    let rows = matching.into_iter().skip(query.offset).take(query.limit).collect();
    JsonPage { rows, total, matched, dropped: 0, warnings }
}

/// Any resource's page.
pub async fn page(state: &AppState, resource: &str, query: StateQuery, detail: bool) -> Result<JsonPage, PageError> {
    if let Some(table) = gcs_table(resource) {
        return Ok(gcs_page(state, table, query, detail).await?.0);
    }
    match resource {
        "nodes" => {
            let nodes = state.gcs.call(GetAllNodesRequest {}).await.map_err(gcs_error)?.nodes;
            Ok(local_page(nodes.iter().rev().map(state_json::node).collect(), &query, Vec::new()))
        }
        "jobs" => {
            let mut all = super::jobs::all_jobs(state)
                .await
                .map_err(|_| PageError::Unavailable("the GCS did not list the jobs; retry in a moment".into()))?;
            all.sort_by_key(|job| std::cmp::Reverse(job["start_time"].as_u64().unwrap_or_default()));
            Ok(local_page(all, &query, Vec::new()))
        }
        "objects" => {
            let nodes = state.gcs.call(GetAllNodesRequest {}).await.map_err(gcs_error)?.nodes;
            let net = state.net.clone();
            let connect = |address: String| {
                let net = net.clone();
                async move {
                    let service = std::sync::Arc::new(manta_proto::net::NoService);
                    manta_proto::net::connect(&address, net, service, None, Duration::from_secs(5))
                        .await
                        .map_err(|error| format!("cannot reach {address}: {error}"))
                }
            };
            let (rows, notes) = state_json::gather_objects(&nodes, MAX_LIMIT, connect).await;
            Ok(local_page(rows, &query, notes))
        }
        other => Err(PageError::Invalid(format!(
            "no state resource {other:?}; the resources are nodes, jobs, actors, tasks, placement_groups, objects and logs"
        ))),
    }
}

/// Ray's success envelope around rows, written row by row: a page of 10,000
/// tasks never exists as one JSON tree, only as the bytes sent.
pub fn envelope(counts: (usize, usize, u64), mut warnings: Vec<String>, rows: impl Iterator<Item = Value>) -> Vec<u8> {
    let (total, matched, dropped) = counts;
    let partial = warnings.join("; ");
    if dropped > 0 {
        warnings.push(format!("{dropped} rows were dropped from the history by its bound"));
    }
    let mut out = b"{\"result\":true,\"msg\":\"\",\"data\":{\"result\":{\"result\":[".to_vec();
    let mut written = 0;
    for row in rows {
        if written > 0 {
            out.push(b',');
        }
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &row);
        written += 1;
    }
    out.extend_from_slice(b"],");
    let tail = json!({
        "total": total,
        "num_after_truncation": written,
        "num_filtered": matched,
        "partial_failure_warning": partial,
        "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
    });
    // `{"total":...}` without its `{` closes the inner object; two more close `data` and the whole.
    out.extend_from_slice(&serde_json::to_vec(&tail).unwrap_or_default()[1..]);
    out.extend_from_slice(b"}}");
    out
}

async fn list(state: web::Data<AppState>, resource: web::Path<String>, request: HttpRequest) -> HttpResponse {
    let pairs = pairs(request.query_string());
    let query = match query_of(&pairs) {
        Ok(query) => query,
        Err(message) => return failure(actix_web::http::StatusCode::BAD_REQUEST, message),
    };
    let detail = detail_of(&pairs);
    let body = match gcs_table(&resource) {
        Some(table) => gcs_reply(&state, table, query).await.map(|reply| {
            envelope((reply.total, reply.matched, reply.dropped), Vec::new(), rows_of(&reply.rows, detail))
        }),
        None => page(&state, &resource, query, detail)
            .await
            .map(|page| envelope((page.total, page.matched, page.dropped), page.warnings, page.rows.into_iter())),
    };
    match body {
        Ok(body) => HttpResponse::Ok().content_type("application/json").body(body),
        Err(error) => error.response(),
    }
}

fn node_of(pairs: &[(String, String)]) -> Result<NodeId, String> {
    let text = param(pairs, "node_id").ok_or("node_id is required; /api/v0/nodes lists the nodes")?;
    text.parse().map_err(|_| format!("{text:?} is not a node id"))
}

async fn list_logs(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let pairs = pairs(request.query_string());
    let node_id = match node_of(&pairs) {
        Ok(node_id) => node_id,
        Err(message) => return failure(actix_web::http::StatusCode::BAD_REQUEST, message),
    };
    let peer = match super::logs::node_link(&state, node_id).await {
        Ok(peer) => peer,
        Err(message) => return failure(actix_web::http::StatusCode::NOT_FOUND, message),
    };
    match peer.rpc(ListLogsRequest {}, Duration::from_secs(10)).await {
        Ok(reply) => {
            let glob = param(&pairs, "glob").unwrap_or_default();
            let files: Vec<Value> = reply
                .files
                .iter()
                .filter(|file| glob.is_empty() || file.name.contains(glob.trim_matches('*')))
                .map(|file| json!({"name": file.name, "size": file.size}))
                .collect();
            HttpResponse::Ok().json(json!({"result": true, "msg": "", "data": {"result": files}}))
        }
        Err(error) => call_error(error),
    }
}

async fn read_log(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let pairs = pairs(request.query_string());
    let node_id = match node_of(&pairs) {
        Ok(node_id) => node_id,
        Err(message) => return failure(actix_web::http::StatusCode::BAD_REQUEST, message),
    };
    let Some(name) = param(&pairs, "filename").map(str::to_string) else {
        return failure(actix_web::http::StatusCode::BAD_REQUEST, "filename is required; /api/v0/logs lists them");
    };
    let (offset, lines) = match (number(&pairs, "offset", 0), number(&pairs, "lines", 1000)) {
        (Ok(offset), Ok(lines)) => (offset as u64, lines as u64),
        (Err(message), _) | (_, Err(message)) => return failure(actix_web::http::StatusCode::BAD_REQUEST, message),
    };
    let tail_lines = param(&pairs, "offset").is_none().then_some(lines);
    let peer = match super::logs::node_link(&state, node_id).await {
        Ok(peer) => peer,
        Err(message) => return failure(actix_web::http::StatusCode::NOT_FOUND, message),
    };
    let read = ReadLogRequest { name, offset, max_bytes: LOG_READ_BYTES, tail_lines };
    match peer.rpc(read, Duration::from_secs(10)).await {
        Ok(reply) => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .insert_header(("X-Next-Offset", reply.next_offset.to_string()))
            .body(reply.data),
        Err(error) => call_error(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rays_filter_triples_and_the_short_form_parse() {
        let query = query_of(&pairs(
            "limit=5&offset=10&filter_keys=state&filter_predicates=%21%3D&filter_values=FAILED&filter=name%3Df",
        ))
        .unwrap();
        assert_eq!((query.limit, query.offset), (5, 10));
        assert_eq!(query.filters.len(), 2);
        assert_eq!(query.filters[0].op, FilterOp::Ne);
        assert_eq!((query.filters[1].key.as_str(), query.filters[1].value.as_str()), ("name", "f"));
        assert_eq!(query_of(&pairs("")).unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        assert!(query_of(&pairs("filter_keys=state")).unwrap_err().contains("equal numbers"));
        assert!(query_of(&pairs("limit=lots")).unwrap_err().contains("whole number"));
        assert!(query_of(&pairs("limit=10001")).unwrap_err().contains("10000"));
        assert!(query_of(&pairs("filter_keys=a&filter_predicates=~&filter_values=b")).unwrap_err().contains("="));
    }

    #[test]
    fn local_pages_filter_then_page() {
        let rows: Vec<Value> =
            (0..10).map(|n| json!({"n": n, "state": if n < 4 { "DEAD" } else { "ALIVE" }})).collect();
        let query = StateQuery { filters: vec![StateFilter::parse("state=alive").unwrap()], offset: 2, limit: 3 };
        let page = local_page(rows, &query, vec!["node x did not answer".into()]);
        assert_eq!((page.total, page.matched), (10, 6));
        assert_eq!(page.rows.iter().map(|row| row["n"].as_u64().unwrap()).collect::<Vec<_>>(), vec![6, 7, 8]);
        let body = envelope((page.total, page.matched, 4), page.warnings, page.rows.into_iter());
        let body: Value = serde_json::from_slice(&body).expect("the envelope is JSON");
        assert_eq!(body["result"], true);
        assert_eq!(body["data"]["result"]["result"][2]["n"], 8);
        assert_eq!(body["data"]["result"]["partial_failure_warning"], "node x did not answer");
        assert_eq!(body["data"]["result"]["warnings"].as_array().unwrap().len(), 2);
        let empty: Value = serde_json::from_slice(&envelope((0, 0, 0), Vec::new(), std::iter::empty())).unwrap();
        assert_eq!(empty["data"]["result"]["result"], json!([]));
        assert_eq!(body["data"]["result"]["num_after_truncation"], 3);
        assert_eq!(body["data"]["result"]["num_filtered"], 6);
    }
}
