//! The dashboard: server-rendered pages (HTML written with maud, charts drawn
//! here as SVG), one small script for live updates, and a stylesheet, all
//! built into the binary. No Node toolchain builds or serves anything.
//!
//! Every view has a stable URL: `/` (overview), `/jobs`, `/jobs/{id}`,
//! `/cluster`, `/cluster/{node_id}`, `/actors`, `/actors/{id}`, `/tasks`,
//! `/tasks/{id}`, `/placement-groups`, `/charts` (metrics), `/logs`,
//! `/logs/{node_id}/{file}`. Lists are filtered and paged on the server
//! (`?state=`, `?filter=key=value`, `?page=`), through the same queries as the
//! state API. Live updates: the script listens to `/events` (server-sent
//! events, a tick every [`TICK`]) and re-fetches the page's content, which a
//! request with `X-Partial: 1` gets without the frame.

mod charts;
mod cluster;
mod jobs;
mod lists;
mod logs;
mod overview;

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use manta_proto::query::{MAX_LIMIT, StateFilter, StateQuery};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::state::{JsonPage, PageError, pairs, param};

/// How often open pages refresh.
pub const TICK: Duration = Duration::from_secs(2);
/// Rows per page unless asked.
const PER_PAGE: usize = 50;

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");
const ICON: &str = include_str!("assets/icon.svg");
/// Two overlapping squares (a glyph would need a font the viewer may lack).
const COPY_ICON: &str = r#"<svg viewBox="0 0 16 16" width="12" height="12" aria-hidden="true"><rect x="5.5" y="5.5" width="8" height="8" rx="1.5" fill="none" stroke="currentColor"/><path d="M3 10.5V3.5a1 1 0 0 1 1-1h6.5" fill="none" stroke="currentColor"/></svg>"#;

/// The static assets, served without login (they hold nothing of the cluster's).
pub(super) fn assets(config: &mut web::ServiceConfig) {
    let asset = |body: &'static str, kind: &'static str| {
        move || async move {
            HttpResponse::Ok().content_type(kind).insert_header(("Cache-Control", "max-age=300")).body(body)
        }
    };
    config
        .route("/static/app.css", web::get().to(asset(CSS, "text/css; charset=utf-8")))
        .route("/static/app.js", web::get().to(asset(JS, "text/javascript; charset=utf-8")))
        .route("/favicon.ico", web::get().to(asset(ICON, "image/svg+xml")))
        .route("/static/icon.svg", web::get().to(asset(ICON, "image/svg+xml")));
}

/// The pages (behind the login).
pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(overview::page))
        .route("/events", web::get().to(events))
        .route("/jobs", web::get().to(jobs::list))
        .route("/jobs/{id}", web::get().to(jobs::detail))
        .route("/cluster", web::get().to(cluster::list))
        .route("/cluster/{node_id}", web::get().to(cluster::detail))
        .route("/actors", web::get().to(lists::actors))
        .route("/actors/{id}", web::get().to(lists::actor))
        .route("/tasks", web::get().to(lists::tasks))
        .route("/tasks/{id}", web::get().to(lists::task))
        .route("/placement-groups", web::get().to(lists::placement_groups))
        .route("/charts", web::get().to(charts::page))
        .route("/logs", web::get().to(logs::browse))
        .route("/logs/{node_id}/{file:.*}", web::get().to(logs::file));
}

/// Which view a page belongs to (highlighted in the navigation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Jobs,
    Cluster,
    Actors,
    Tasks,
    PlacementGroups,
    Metrics,
    Logs,
}

const NAV: [(Nav, &str, &str); 8] = [
    (Nav::Overview, "/", "Overview"),
    (Nav::Jobs, "/jobs", "Jobs"),
    (Nav::Cluster, "/cluster", "Cluster"),
    (Nav::Actors, "/actors", "Actors"),
    (Nav::Tasks, "/tasks", "Tasks"),
    (Nav::PlacementGroups, "/placement-groups", "Placement groups"),
    (Nav::Metrics, "/charts", "Metrics"),
    (Nav::Logs, "/logs", "Logs"),
];

/// A whole page, or only its content for a live refresh (`X-Partial`).
pub fn render(request: &HttpRequest, nav: Nav, title: &str, content: Markup) -> HttpResponse {
    let body = if request.headers().contains_key("x-partial") {
        content.into_string()
    } else {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta name="color-scheme" content="light dark";
                    title { (title) " · manta" }
                    link rel="icon" href="/static/icon.svg";
                    link rel="stylesheet" href="/static/app.css";
                    script src="/static/app.js" defer {}
                }
                body {
                    header.top {
                        a.brand href="/" { img src="/static/icon.svg" alt="" width="22" height="22"; " manta" }
                        nav {
                            @for (item, href, label) in NAV {
                                a href=(href) class=[(item == nav).then_some("active")] { (label) }
                            }
                        }
                        span #live.live title="Live: the page refreshes every few seconds" { "live" }
                        form.logout method="post" action="/logout" { button type="submit" { "Log out" } }
                    }
                    main #content { (content) }
                }
            }
        }
        .into_string()
    };
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ))
        .body(body)
}

/// Server-sent events: a tick every [`TICK`] while the page is open.
async fn events() -> HttpResponse {
    let ticks = futures_util::stream::unfold(0u64, |count| async move {
        if count > 0 {
            actix_web::rt::time::sleep(TICK).await;
        }
        let chunk = format!("event: tick\ndata: {count}\n\n");
        Some((Ok::<_, actix_web::Error>(actix_web::web::Bytes::from(chunk)), count + 1))
    });
    HttpResponse::Ok().content_type("text/event-stream").insert_header(("Cache-Control", "no-store")).streaming(ticks)
}

/// A heading with an optional note.
pub fn heading(title: &str, note: Option<Markup>) -> Markup {
    html! { div.heading { h1 { (title) } @if let Some(note) = note { span.note { (note) } } } }
}

/// The clear "nothing here" state.
pub fn empty(message: &str) -> Markup {
    html! { p.empty { (message) } }
}

/// The clear "something went wrong" state.
pub fn error_box(message: &str) -> Markup {
    html! { div.error role="alert" { strong { "Could not load this: " } (message) } }
}

/// A time in the viewer's zone (the script rewrites the UTC text).
pub fn time(ms: Option<u64>) -> Markup {
    match ms {
        Some(ms) if ms > 0 => html! { time datetime=(iso(ms)) data-ms=(ms) { (iso(ms)) } },
        _ => html! { span.muted { "—" } },
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for milliseconds since the epoch.
pub fn iso(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

/// How long between two times, as `1h 2m`, `3.4s`.
pub fn duration(start: Option<u64>, end: Option<u64>) -> String {
    let (Some(start), Some(end)) = (start, end) else { return "—".into() };
    let ms = end.saturating_sub(start);
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h {}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// An id shown short, linked when `href` is given, with a copy button for the whole.
pub fn id(full: &str, href: Option<String>) -> Markup {
    let short: String = if full.len() > 12 { format!("{}…", &full[..12]) } else { full.to_string() };
    html! {
        span.id {
            @match href {
                Some(href) => a href=(href) title=(full) { code { (short) } },
                None => code title=(full) { (short) },
            }
            button.copy type="button" data-copy=(full) title="Copy the whole id" aria-label="Copy id" { (PreEscaped(COPY_ICON)) }
        }
    }
}

/// A state as a coloured badge.
pub fn badge(state: &str) -> Markup {
    let kind = match state {
        "RUNNING" | "ALIVE" | "SUCCEEDED" | "FINISHED" | "CREATED" | "SUBMITTED_TO_WORKER" => "good",
        "FAILED" | "DEAD" | "STOPPED" | "REMOVED" => "bad",
        _ => "wait",
    };
    html! { span class={ "badge " (kind) } { (state) } }
}

/// Bytes as `1.2 GiB`.
pub fn bytes(value: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = value.max(0.0);
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{value:.0} B") } else { format!("{value:.1} {}", units[unit]) }
}

/// A JSON field as text for a cell.
pub fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "—".into(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// What a list page was asked for: filters, page number, page size.
pub struct ListParams {
    pairs: Vec<(String, String)>,
    /// The query for the current page.
    pub query: StateQuery,
    /// 1-based.
    pub page: usize,
    /// Rows per page.
    pub per_page: usize,
}

impl ListParams {
    /// Reads `?state=`, `?filter=` (repeated, `key=value` or `key!=value`),
    /// `?page=`, `?per_page=`.
    pub fn of(request: &HttpRequest) -> Result<ListParams, String> {
        let pairs = pairs(request.query_string());
        let number = |key: &str, default: usize| match param(&pairs, key) {
            None | Some("") => Ok(default),
            Some(text) => text.parse::<usize>().map_err(|_| format!("{key} must be a whole number, not {text:?}")),
        };
        let page = number("page", 1)?.max(1);
        let per_page = number("per_page", PER_PAGE)?.clamp(1, 500);
        let mut filters = Vec::new();
        if let Some(state) = param(&pairs, "state").filter(|state| !state.is_empty()) {
            filters.push(StateFilter::parse(&format!("state={state}"))?);
        }
        for (key, value) in &pairs {
            if key == "filter" && !value.trim().is_empty() {
                filters.push(StateFilter::parse(value)?);
            }
        }
        let offset = (page - 1).saturating_mul(per_page).min(MAX_LIMIT * 100);
        Ok(ListParams { query: StateQuery { filters, offset, limit: per_page }, pairs, page, per_page })
    }

    /// The first page, no filters (when the parameters given were unusable).
    pub fn first_page() -> ListParams {
        ListParams { pairs: Vec::new(), query: StateQuery::newest(PER_PAGE), page: 1, per_page: PER_PAGE }
    }

    /// A parameter as given.
    pub fn get(&self, key: &str) -> &str {
        param(&self.pairs, key).unwrap_or_default()
    }

    /// The URL of page `page` with the same filters.
    pub fn href(&self, path: &str, page: usize) -> String {
        let mut url = form_urlencoded::Serializer::new(String::new());
        for (key, value) in self.pairs.iter().filter(|(key, _)| key != "page") {
            url.append_pair(key, value);
        }
        url.append_pair("page", &page.to_string());
        format!("{path}?{}", url.finish())
    }
}

/// The pager under a list: where we are, and the way to the pages around.
pub fn pager(path: &str, params: &ListParams, page: &JsonPage) -> Markup {
    let first = params.query.offset + 1;
    let last = params.query.offset + page.rows.len();
    let pages = page.matched.div_ceil(params.per_page).max(1);
    html! {
        nav.pager aria-label="Pages" {
            span {
                @if page.rows.is_empty() { "No rows" } @else { (first) "–" (last) }
                " of " (page.matched)
                @if page.matched != page.total { " (filtered from " (page.total) ")" }
                @if page.dropped > 0 { " · " (page.dropped) " older rows dropped by the history bound" }
            }
            @if params.page > 1 { a href=(params.href(path, params.page - 1)) rel="prev" { "← Newer" } }
            span.muted { "page " (params.page) " of " (pages) }
            @if params.page < pages { a href=(params.href(path, params.page + 1)) rel="next" { "Older →" } }
        }
    }
}

/// The filter form above a list.
pub fn filter_form(path: &str, params: &ListParams, states: &[&str], keys: &[&str]) -> Markup {
    let filters: Vec<&str> =
        params.pairs.iter().filter(|(key, _)| key == "filter").map(|(_, value)| value.as_str()).collect();
    html! {
        form.filters method="get" action=(path) {
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for state in states { option value=(state) selected[params.get("state") == *state] { (state) } }
                }
            }
            label { "Filter "
                input type="text" name="filter" value=(filters.first().copied().unwrap_or_default())
                    placeholder="key=value or key!=value" list={ "keys-" (path.trim_start_matches('/')) };
            }
            datalist id={ "keys-" (path.trim_start_matches('/')) } { @for key in keys { option value={ (key) "=" } {} } }
            button type="submit" { "Apply" }
            @if !params.query.filters.is_empty() { a href=(path) { "Clear" } }
        }
    }
}

/// A page's body for a failed load.
pub fn failed(error: &PageError) -> Markup {
    error_box(error.message())
}

/// JSON pretty-printed in a `<pre>`.
pub fn json_block(value: &serde_json::Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(value).unwrap_or_default()) } }
}

/// Raw markup (for the SVG charts, built as strings of numbers only).
pub fn raw(text: String) -> PreEscaped<String> {
    PreEscaped(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_well() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(1_764_910_000_000), "2025-12-05T04:46:40Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(duration(Some(0), Some(1500)), "1.5 s");
        assert_eq!(duration(Some(0), Some(3_720_000)), "1h 2m");
        assert_eq!(duration(None, Some(1)), "—");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(12.0), "12 B");
    }

    #[test]
    fn ids_are_escaped_and_shortened() {
        let markup = id("<script>0123456789abcdef", Some("/x".into())).into_string();
        assert!(!markup.contains("<script>"), "{markup}");
        assert!(markup.contains("&lt;script&gt;"), "{markup}");
        assert!(markup.contains("data-copy"), "{markup}");
    }
}
