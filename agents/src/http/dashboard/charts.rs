//! `/charts`: the built-in metrics over the last hour, from the head's own
//! samples ([`crate::metrics_history`]), drawn here as SVG line charts, plus a
//! link to Grafana when `MANTA_GRAFANA_HOST` names one.

use std::collections::BTreeMap;
use std::fmt::Write;

use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};

use super::{Nav, bytes, empty, heading, raw, render};
use crate::http::AppState;
use crate::metrics_history::{INTERVAL, KEEP, Sample};

/// A named series of `(time_ms, value)` points.
pub type Series = (String, Vec<(u64, f64)>);

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 22.0;
/// Series drawn per chart; more are left out (and said so).
const MAX_SERIES: usize = 8;

/// The metrics page.
pub async fn page(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let samples: Vec<Sample> = {
        let history = state.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        history.samples().cloned().collect()
    };
    let throughput = state.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).throughput();
    let cluster = |name: &str, pick: fn(&Sample, &str) -> f64| -> Vec<(u64, f64)> {
        samples.iter().map(|sample| (sample.time_ms, pick(sample, name))).collect()
    };
    let used = |sample: &Sample, name: &str| sample.resources_used.get(name).copied().unwrap_or_default();
    let total = |sample: &Sample, name: &str| sample.resources_total.get(name).copied().unwrap_or_default();
    let per_node = |pick: fn(&crate::metrics_history::NodeUsage) -> Option<f64>| -> Vec<Series> {
        let mut series: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
        for sample in &samples {
            for (node_id, usage) in &sample.nodes {
                if let Some(value) = pick(usage) {
                    series.entry(node_id.to_string()[..8].to_string()).or_default().push((sample.time_ms, value));
                }
            }
        }
        series.into_iter().collect()
    };
    let by_state = |pick: fn(&Sample) -> &BTreeMap<String, usize>| -> Vec<Series> {
        let mut series: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
        for sample in &samples {
            for (state, count) in pick(sample) {
                series.entry(state.clone()).or_default().push((sample.time_ms, *count as f64));
            }
        }
        series.into_iter().collect()
    };
    let count = |value: f64| format!("{}", (value * 10.0).round() / 10.0);
    let content = html! {
        (heading("Metrics", Some(html! {
            "The last hour, sampled by the head every " (INTERVAL.as_secs()) " s (" (samples.len()) " of " (KEEP) " samples). "
            @match &state.grafana_url {
                Some(url) => a href=(url) target="_blank" rel="noopener" { "Open Grafana →" },
                None => "Every node's /metrics can also be scraped by Prometheus (set MANTA_GRAFANA_HOST on the head to link Grafana here).",
            }
        })))
        @if samples.is_empty() {
            (empty("No samples yet: the first comes within a few seconds of the head starting."))
        } @else {
            section.charts {
                (line_chart("Logical CPUs", &[("used".into(), cluster("CPU", used)), ("total".into(), cluster("CPU", total))], count))
                (line_chart("Object store", &[("used".into(), cluster("object_store_memory", used)), ("total".into(), cluster("object_store_memory", total))], bytes))
                (line_chart("Node CPU use (%)", &per_node(|usage| usage.cpu_percent), count))
                (line_chart("Node memory in use", &per_node(|usage| usage.mem_used), bytes))
                (line_chart("Tasks completed per second", &[("tasks/s".into(), throughput)], count))
                (line_chart("Tasks by state", &by_state(|sample| &sample.tasks_by_state), count))
                (line_chart("Actors by state", &by_state(|sample| &sample.actors_by_state), count))
                (line_chart("Nodes alive", &[("alive".into(), samples.iter().map(|sample| (sample.time_ms, sample.nodes_alive as f64)).collect())], count))
            }
        }
    };
    render(&request, Nav::Metrics, "Metrics", content)
}

/// A line chart of up to [`MAX_SERIES`] series with a legend.
pub fn line_chart(title: &str, series: &[Series], label: fn(f64) -> String) -> Markup {
    let points = series.iter().flat_map(|(_, points)| points.iter());
    let (mut start, mut end, mut top) = (u64::MAX, 0u64, 0.0f64);
    for (time, value) in points {
        start = start.min(*time);
        end = end.max(*time);
        top = top.max(*value);
    }
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let span = end.saturating_sub(start).max(1) as f64;
    let x = |time: u64| LEFT + (time.saturating_sub(start)) as f64 / span * (WIDTH - LEFT - 8.0);
    let y = |value: f64| 8.0 + (1.0 - value / top) * (HEIGHT - BOTTOM - 8.0);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">",
        maud::html! { (title) }.into_string()
    );
    for step in 0..=2 {
        let value = top * f64::from(step) / 2.0;
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"axis\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - 8.0,
            LEFT - 6.0,
            y(value) + 4.0,
            maud::html! { (label(value)) }.into_string(),
            y = y(value),
        );
    }
    let ago = if span < 120_000.0 {
        format!("{} s ago", (span / 1000.0).round())
    } else {
        format!("{} min ago", (span / 60_000.0).round())
    };
    let _ = write!(
        svg,
        "<text class=\"axis\" x=\"{LEFT}\" y=\"{}\">{ago}</text><text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"end\">now</text>",
        HEIGHT - 4.0,
        WIDTH - 8.0,
        HEIGHT - 4.0
    );
    for (index, (_, points)) in series.iter().take(MAX_SERIES).enumerate() {
        let mut path = String::new();
        for (time, value) in points {
            let _ = write!(path, "{:.1},{:.1} ", x(*time), y(*value));
        }
        let _ = write!(svg, "<polyline class=\"s{index}\" points=\"{}\"/>", path.trim_end());
        // The newest point as a dot, so a series of one sample still shows.
        if let Some((time, value)) = points.last() {
            let _ =
                write!(svg, "<circle class=\"s{index}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\"/>", x(*time), y(*value));
        }
    }
    svg.push_str("</svg>");
    html! {
        figure.chart {
            figcaption { (title) }
            (raw(svg))
            ul.legend {
                @for (index, (name, points)) in series.iter().take(MAX_SERIES).enumerate() {
                    li { span class={ "swatch s" (index) } {} (name) @if let Some((_, last)) = points.last() { " " span.muted { (label(*last)) } } }
                }
                @if series.len() > MAX_SERIES { li.muted { (series.len() - MAX_SERIES) " more not drawn" } }
            }
        }
    }
}

/// A small chart without axes, for the overview.
pub fn sparkline(title: &str, points: &[(u64, f64)]) -> Markup {
    if points.len() < 2 {
        return html! { p.muted { (title) ": not enough samples yet" } };
    }
    let series = [(title.to_string(), points.to_vec())];
    line_chart(title, &series, |value| format!("{}", (value * 10.0).round() / 10.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_scale_points_into_the_box() {
        let series = vec![("a".to_string(), vec![(0, 0.0), (180_000, 10.0)])];
        let markup = line_chart("A <chart>", &series, |value| format!("{value}")).into_string();
        assert!(markup.contains("<polyline class=\"s0\" points=\"64.0,158.0 632.0,"), "{markup}");
        assert!(markup.contains("A &lt;chart&gt;"), "titles are escaped: {markup}");
        assert!(markup.contains("3 min ago"), "{markup}");
        let empty = line_chart("nothing", &[], |value| format!("{value}")).into_string();
        assert!(empty.contains("<svg"), "an empty chart still draws its box: {empty}");
    }
}
