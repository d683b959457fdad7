//! The drill's picture, drawn with plotters as SVG and PNG: success rate (left axis) and
//! p99 latency (right axis, log scale) per 250 ms over time, a shaded band per phase with
//! its name above, and the per-phase table ([`crate::table`]) under the chart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_tests::font::{self, FAMILY, FontError};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::labels::{self, Band};
use crate::report::{PhaseStats, Record, percentile};
use crate::schedule::Fault;
use crate::table;

/// Width and height of both pictures, in pixels.
pub const SIZE: (u32, u32) = (1200, 830);
/// Band colours: phases that inject a fault, and those that heal (or wait, the baseline).
pub const FAULT_BAND: RGBColor = RGBColor(0xf6, 0xd5, 0xcc);
pub const HEAL_BAND: RGBColor = RGBColor(0xd7, 0xec, 0xd9);
const SUCCESS: RGBColor = RGBColor(0x1b, 0x7f, 0x3a);
const P99: RGBColor = RGBColor(0x2a, 0x5c, 0xc4);
pub const SUCCESS_AXIS: &str = "success rate (%)";
pub const P99_AXIS: &str = "p99 latency (ms, log scale)";
pub const TIME_AXIS: &str = "time since the start (s)";
/// Requests are counted in buckets of this length.
const BUCKET: Duration = Duration::from_millis(250);
/// Height of the part above the table, and the chart's margins and axis label areas.
const CHART_HEIGHT: u32 = 540;
const MARGIN: i32 = 16;
const AXIS_AREA: i32 = 64;
const TITLE_HEIGHT: i32 = 34;
/// Where the legend's line ends and the labels' rows begin.
const LEGEND_BOTTOM: i32 = TITLE_HEIGHT + 26;
const LABEL_ROW: i32 = 20;
const LABEL_FONT: u32 = 13;

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error(transparent)]
    Font(#[from] FontError),
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// Draws the picture of a run into `svg` and `png`.
pub fn write(
    svg: &Path,
    png: &Path,
    records: &[Record],
    stats: &[PhaseStats],
    bounds: &[Duration],
) -> Result<(), ChartError> {
    load_font()?;
    let series = Series::of(records, bounds[bounds.len() - 1]);
    let failed = |path: &Path, message| ChartError::Draw { path: path.to_owned(), message };
    draw(SVGBackend::new(svg, SIZE).into_drawing_area(), &series, stats, bounds).map_err(|e| failed(svg, e))?;
    draw(BitMapBackend::new(png, SIZE).into_drawing_area(), &series, stats, bounds).map_err(|e| failed(png, e))
}

/// Registers the PNG's font ([`lb_tests::font`]).
pub fn load_font() -> Result<(), ChartError> {
    Ok(font::load()?)
}

/// The two lines, a point per bucket (its middle, in seconds); `None` where the bucket had
/// no request (success rate) or no successful one (latency).
struct Series {
    success: Vec<(f64, Option<f64>)>,
    p99: Vec<(f64, Option<f64>)>,
}

impl Series {
    fn of(records: &[Record], total: Duration) -> Series {
        let buckets = (total.as_secs_f64() / BUCKET.as_secs_f64()).ceil() as usize;
        let mut sent = vec![0usize; buckets];
        let mut latencies = vec![Vec::new(); buckets];
        for r in records {
            let b = ((r.due.as_secs_f64() / BUCKET.as_secs_f64()) as usize).min(buckets - 1);
            sent[b] += 1;
            if r.outcome.is_ok() {
                latencies[b].push(r.latency);
            }
        }
        let middle = |b: usize| (b as f64 + 0.5) * BUCKET.as_secs_f64();
        let success = (0..buckets)
            .map(|b| (middle(b), (sent[b] > 0).then(|| 100.0 * latencies[b].len() as f64 / sent[b] as f64)))
            .collect();
        let p99 = latencies
            .iter_mut()
            .enumerate()
            .map(|(b, l)| {
                l.sort();
                (middle(b), (!l.is_empty()).then(|| percentile(l, 99)))
            })
            .collect();
        Series { success, p99 }
    }

    /// The latency axis: from the power of ten below every p99 (at most 1 ms) to half as
    /// much again as the largest, so that no decade is left empty above it.
    fn p99_range(&self) -> std::ops::Range<f64> {
        let values = || self.p99.iter().filter_map(|&(_, v)| v).filter(|&v| v > 0.0);
        let low = 10f64.powf(values().fold(1.0, f64::min).log10().floor());
        let high = (1.5 * values().fold(0.0, f64::max)).max(10.0 * low);
        low..high
    }
}

/// Runs of consecutive defined points: each is drawn as its own line, so gaps stay gaps.
fn runs(points: &[(f64, Option<f64>)]) -> Vec<Vec<(f64, f64)>> {
    points
        .split(|(_, v)| v.is_none())
        .filter(|run| !run.is_empty())
        .map(|run| run.iter().map(|&(t, v)| (t, v.expect("split at None"))).collect())
        .collect()
}

fn band_colour(fault: Fault) -> RGBColor {
    match fault {
        Fault::None | Fault::Heal | Fault::HealSiteA => HEAL_BAND,
        _ => FAULT_BAND,
    }
}

/// A phase's label: its number (as in the table) and name.
pub fn label(i: usize, phase: &PhaseStats) -> String {
    format!("{} {}", i + 1, phase.name)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &Series,
    stats: &[PhaseStats],
    bounds: &[Duration],
) -> Result<(), String> {
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(error)?;
    let (top, bottom) = root.split_vertically(CHART_HEIGHT);
    top.draw(&Text::new(
        "lb fault drill: success rate and p99 latency per 250 ms, by phase",
        (MARGIN, MARGIN / 2),
        (FAMILY, 20).into_font(),
    ))
    .map_err(error)?;
    draw_legend(&top, MARGIN + AXIS_AREA, TITLE_HEIGHT).map_err(error)?;
    draw_chart(&top, series, stats, bounds).map_err(error)?;
    table::draw(&bottom, stats, band_colour).map_err(error)?;
    root.present().map_err(error)
}

/// The legend, on a line of its own above the chart (inside it, it would hide data).
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    mut x: i32,
    y: i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style = TextStyle::from((FAMILY, LABEL_FONT).into_font());
    let entries = [
        (FAULT_BAND, false, "fault phase"),
        (HEAL_BAND, false, "heal phase (and the baseline)"),
        (SUCCESS, true, "success rate (left axis)"),
        (P99, true, "p99 latency (right axis)"),
    ];
    for (colour, line, text) in entries {
        if line {
            area.draw(&PathElement::new([(x, y + 8), (x + 24, y + 8)], colour.stroke_width(3)))?;
        } else {
            area.draw(&Rectangle::new([(x, y + 1), (x + 24, y + 15)], colour.filled()))?;
        }
        area.draw(&Text::new(text, (x + 30, y + 2), style.clone()))?;
        x += 30 + area.estimate_text_size(text, &style)?.0 as i32 + 28;
    }
    Ok(())
}

/// The chart, with the phases' names in rows above it (see [`labels::layout`]).
fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &Series,
    stats: &[PhaseStats],
    bounds: &[Duration],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let total = bounds[bounds.len() - 1].as_secs_f64();
    let labels = PhaseLabels::new(area, stats, bounds)?;
    let plot_top = LEGEND_BOTTOM + LABEL_ROW * labels::rows(&labels.boxes) as i32 + 6;
    let mut chart = ChartBuilder::on(area)
        .margin_top(plot_top)
        .margin_left(MARGIN)
        .margin_right(MARGIN)
        .margin_bottom(4)
        .x_label_area_size(44)
        .y_label_area_size(AXIS_AREA)
        .right_y_label_area_size(AXIS_AREA)
        .build_cartesian_2d(0f64..total, 0f64..105f64)?
        .set_secondary_coord(0f64..total, series.p99_range().log_scale());
    let bands = stats.iter().enumerate().map(|(i, phase)| {
        let corners = [(bounds[i].as_secs_f64(), 0.0), (bounds[i + 1].as_secs_f64(), 105.0)];
        Rectangle::new(corners, band_colour(phase.fault).filled())
    });
    chart.draw_series(bands)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .x_desc(TIME_AXIS)
        .y_desc(SUCCESS_AXIS)
        .y_labels(8)
        .x_labels(16)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .axis_desc_style((FAMILY, 15))
        .label_style((FAMILY, 13))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc(P99_AXIS)
        .y_label_formatter(&|v| if *v >= 1.0 { format!("{v:.0}") } else { format!("{v}") })
        .axis_desc_style((FAMILY, 15))
        .label_style((FAMILY, 13))
        .draw()?;
    for run in runs(&series.success) {
        chart.draw_series(LineSeries::new(run, SUCCESS.stroke_width(2)))?;
    }
    for run in runs(&series.p99) {
        chart.draw_secondary_series(LineSeries::new(run, P99.stroke_width(2)))?;
    }
    labels.draw(area, stats, plot_top)
}

/// The phases' labels and where [`labels::layout`] puts them.
struct PhaseLabels {
    texts: Vec<String>,
    boxes: Vec<labels::LabelBox>,
    style: TextStyle<'static>,
}

impl PhaseLabels {
    /// Measures each label in the font it is drawn in, against its band's pixels (the
    /// plotting area spans the width between the margins and the two axes' label areas).
    fn new<DB: DrawingBackend>(
        area: &DrawingArea<DB, Shift>,
        stats: &[PhaseStats],
        bounds: &[Duration],
    ) -> Result<PhaseLabels, DrawingAreaErrorKind<DB::ErrorType>> {
        let total = bounds[bounds.len() - 1].as_secs_f64();
        let (left, right) = (MARGIN + AXIS_AREA, area.dim_in_pixel().0 as i32 - MARGIN - AXIS_AREA);
        let to_x = |d: Duration| left + ((right - left) as f64 * d.as_secs_f64() / total).round() as i32;
        let style = TextStyle::from((FAMILY, LABEL_FONT).into_font());
        let texts: Vec<String> = stats.iter().enumerate().map(|(i, phase)| label(i, phase)).collect();
        let mut bands = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let (width, _) = area.estimate_text_size(text, &style)?;
            bands.push(Band { x0: to_x(bounds[i]), x1: to_x(bounds[i + 1]), text_width: width as i32 + 6 });
        }
        let boxes = labels::layout(&bands, right);
        Ok(PhaseLabels { texts, boxes, style })
    }

    /// Each label on its band's colour, row 0 just above the plot's top at `plot_top`.
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        stats: &[PhaseStats],
        plot_top: i32,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        for ((text, b), phase) in self.texts.iter().zip(&self.boxes).zip(stats) {
            let y = plot_top - LABEL_ROW * (b.row as i32 + 1);
            let colour = band_colour(phase.fault).filled();
            area.draw(&Rectangle::new([(b.x, y + 1), (b.x + b.width, y + LABEL_ROW - 2)], colour))?;
            area.draw(&Text::new(text.as_str(), (b.x + 3, y + 3), self.style.clone()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::phase_stats;
    use crate::schedule::{PHASES, phase_bounds};

    /// 50 requests/s through the drill's 11 phases (4 s each, the site phases longer): the
    /// first half second of each fault phase fails, the rest take 1-3 ms, slower after faults.
    fn synthetic_run() -> (Vec<Record>, Vec<PhaseStats>, Vec<Duration>) {
        let bounds = phase_bounds(Duration::from_secs(4));
        let total = bounds[PHASES.len()];
        let records: Vec<Record> = (0..)
            .map(|n| Duration::from_millis(20 * n))
            .take_while(|&due| due < total)
            .map(|due| {
                let phase = bounds.iter().rposition(|&b| b <= due).expect("after the start");
                let since_fault = due - bounds[phase];
                let faulty = band_colour(PHASES[phase].1) == FAULT_BAND;
                let outcome = if faulty && since_fault < Duration::from_millis(500) {
                    Err("connection refused".to_owned())
                } else {
                    Ok(format!("b{}", due.as_millis() % 3))
                };
                let slow = if faulty && since_fault < Duration::from_secs(1) { 80 } else { 1 };
                Record { due, latency: Duration::from_micros(slow * 1000 + (due.as_millis() % 2000) as u64), outcome }
            })
            .collect();
        let stats = phase_stats(&records, &bounds[..PHASES.len()], &bounds);
        (records, stats, bounds)
    }

    #[test]
    fn renders_svg_and_png_of_a_run_with_failures() {
        let dir = std::env::temp_dir().join(format!("lb-drill-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (svg, png) = (dir.join("drill.svg"), dir.join("drill.png"));
        let (records, stats, bounds) = synthetic_run();
        assert!(stats.iter().any(|s| s.failed > 0), "the run must have failures to draw");
        let written = write(&svg, &png, &records, &stats, &bounds);
        let svg_text = std::fs::read_to_string(&svg);
        let png_bytes = std::fs::read(&png);
        std::fs::remove_dir_all(&dir).expect("removing the temp dir");
        written.expect("drawing the pictures");

        let svg_text = svg_text.expect("the SVG was written");
        for text in [SUCCESS_AXIS, P99_AXIS, TIME_AXIS] {
            assert!(svg_text.contains(text), "the SVG lacks the axis title {text:?}");
        }
        for (i, phase) in stats.iter().enumerate() {
            assert!(svg_text.contains(&label(i, phase)), "the SVG lacks the label of phase {}", phase.name);
        }

        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes.expect("the PNG was written")));
        let mut reader = decoder.read_info().expect("a PNG header");
        let mut pixels = vec![0; reader.output_buffer_size()];
        let frame = reader.next_frame(&mut pixels).expect("PNG pixels");
        assert_eq!((frame.width, frame.height), SIZE);
        assert_eq!(frame.color_type, png::ColorType::Rgb);
        let colours: std::collections::HashSet<&[u8]> = pixels[..frame.buffer_size()].chunks(3).collect();
        for (name, RGBColor(r, g, b)) in
            [("fault band", FAULT_BAND), ("heal band", HEAL_BAND), ("success line", SUCCESS)]
        {
            assert!(colours.contains(&[r, g, b][..]), "no pixel has the {name}'s colour");
        }
        assert!(colours.len() > 20, "only {} colours: the picture is nearly blank", colours.len());
    }
}
