//! Scenarios for metrics: user metrics recorded in tasks, actors and the driver.

use std::io::BufRead;

use super::check;

/// Counts one finished unit of work in the task's process.
#[manta::remote]
fn counted_work(value: u64) -> u64 {
    let done = manta::metrics::Counter::new("scenario_tasks_done", "tasks done by the metrics scenario", &["kind"])
        .and_then(|counter| counter.with_default_tags(&[("kind", "square")]))
        .expect("a valid counter");
    done.inc().expect("an increment");
    value * value
}

/// Ten tasks increment a user counter; the driver sets a gauge and waits while
/// the test reads them back from Prometheus.
pub fn metrics() -> manta::Result<()> {
    let results = manta::get_all(&(0..10u64).map(counted_work::remote).collect::<Vec<_>>())?;
    check("the counting tasks ran", results.len() == 10, results.len());
    manta::metrics::Gauge::new("scenario_driver_gauge", "set by the driver", &[])?.set(42.0, &[])?;
    let histogram = manta::metrics::Histogram::new("scenario_sizes", "sizes seen", &[1.0, 10.0], &[])?;
    for size in [0.5, 5.0, 50.0] {
        histogram.observe(size, &[])?;
    }
    println!("counted");
    let _ = std::io::stdin().lock().lines().next();
    Ok(())
}
