//! The drill's picture: success rate and p99 latency over time, phases shaded and named.

use std::fmt::Write as _;
use std::time::Duration;

use crate::report::{Record, percentile};
use crate::schedule::PHASES;

/// Buckets of the picture.
const BUCKET: Duration = Duration::from_millis(250);

/// Success rate (top) and p99 latency (bottom) per bucket, phases (`bounds`, see
/// [`crate::schedule::phase_bounds`]) shaded and named.
pub fn svg(records: &[Record], bounds: &[Duration]) -> String {
    let in_buckets = |d: Duration| d.as_secs_f64() / BUCKET.as_secs_f64();
    let buckets = in_buckets(bounds[PHASES.len()]).ceil() as usize;
    let mut rate = vec![(0usize, 0usize); buckets];
    let mut latencies = vec![Vec::new(); buckets];
    for r in records {
        let b = (in_buckets(r.due) as usize).min(buckets - 1);
        rate[b].1 += 1;
        if r.outcome.is_ok() {
            rate[b].0 += 1;
            latencies[b].push(r.latency);
        }
    }
    let p99: Vec<f64> = latencies
        .iter_mut()
        .map(|l| {
            l.sort();
            percentile(l, 99)
        })
        .collect();
    let max_latency = p99.iter().copied().fold(1.0, f64::max);
    let (width, height, left) = (1000.0, 420.0, 60.0);
    let x = |b: f64| left + (width - left - 10.0) * b / buckets as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n"
    );
    for (i, (name, _)) in PHASES.iter().enumerate() {
        let (x0, x1) = (x(in_buckets(bounds[i])), x(in_buckets(bounds[i + 1])));
        let fill = if i % 2 == 0 { "#f4f4f4" } else { "#e6eef8" };
        let _ = writeln!(out, "<rect x=\"{x0:.1}\" y=\"22\" width=\"{:.1}\" height=\"378\" fill=\"{fill}\"/>", x1 - x0);
        // Names on two rows, so that long ones don't run into their neighbours.
        let _ = writeln!(out, "<text x=\"{:.1}\" y=\"{}\">{name}</text>", x0 + 2.0, if i % 2 == 0 { 9 } else { 18 });
    }
    let mut line = |values: Vec<f64>, top: f64, span: f64, color: &str, label: &str| {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(b, v)| format!("{:.1},{:.1}", x(b as f64), top + span * (1.0 - v)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(out, "<text x=\"4\" y=\"{:.1}\" fill=\"{color}\">{label}</text>", top + span / 2.0);
    };
    line(
        rate.iter().map(|&(ok, n)| if n == 0 { 1.0 } else { ok as f64 / n as f64 }).collect(),
        30.0,
        170.0,
        "#2a7",
        "success",
    );
    line(p99.iter().map(|l| l / max_latency).collect(), 220.0, 170.0, "#c33", &format!("p99 ≤{max_latency:.0}ms"));
    out.push_str("</svg>\n");
    out
}
