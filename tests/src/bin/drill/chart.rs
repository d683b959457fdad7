//! The drill's picture, drawn with plotters as SVG and PNG: success rate (left axis) and
//! p99 latency (right axis, log scale) per 250 ms over time, a shaded band per phase with
//! its name above, and the per-phase table ([`crate::table`]) under the chart.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::labels::{self, Band};
use crate::report::{PhaseStats, Record, percentile};
use crate::schedule::Fault;
use crate::table;

/// The font the PNG's text is drawn in (plotters' bitmap backend has none of its own); the
/// Debian package fonts-dejavu-core has it, installed by scripts/setup.sh.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The family the texts ask for; the SVG names it too, for its viewer to pick.
pub const FAMILY: &str = "sans-serif";
/// Width and height of both pictures, in pixels.
pub const SIZE: (u32, u32) = (1200, 860);
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
const LABEL_ROW: i32 = 20;
const LABEL_FONT: u32 = 13;

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("reading the font {FONT} (Debian package fonts-dejavu-core; scripts/setup.sh installs it): {0}")]
    FontMissing(#[source] std::io::Error),
    #[error("{FONT} is not a font plotters can read")]
    FontInvalid,
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

/// Registers [`FONT`] as [`FAMILY`] once per process (plotters keeps it for good).
pub fn load_font() -> Result<(), ChartError> {
    static BYTES: OnceLock<&'static [u8]> = OnceLock::new();
    if BYTES.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT).map_err(ChartError::FontMissing)?;
    let bytes = *BYTES.get_or_init(|| bytes.leak());
    register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| ChartError::FontInvalid)
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

    /// The latency axis: whole powers of ten around every p99.
    fn p99_range(&self) -> std::ops::Range<f64> {
        let values = || self.p99.iter().filter_map(|&(_, v)| v).filter(|&v| v > 0.0);
        let low = values().fold(f64::INFINITY, f64::min).min(1.0).log10().floor();
        let high = values().fold(1.0, f64::max).log10().ceil().max(low + 1.0);
        10f64.powf(low)..10f64.powf(high)
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
    draw_chart(&top, series, stats, bounds).map_err(error)?;
    table::draw(&bottom, stats, band_colour).map_err(error)?;
    root.present().map_err(error)
}

/// The chart, with the phases' names in rows above it (see [`labels::layout`]).
fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &Series,
    stats: &[PhaseStats],
    bounds: &[Duration],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let total = bounds[bounds.len() - 1].as_secs_f64();
    let (left, right) = (MARGIN + AXIS_AREA, area.dim_in_pixel().0 as i32 - MARGIN - AXIS_AREA);
    let to_x = |d: Duration| left + ((right - left) as f64 * d.as_secs_f64() / total).round() as i32;
    let label_style = TextStyle::from((FAMILY, LABEL_FONT).into_font());
    let names: Vec<String> = stats.iter().enumerate().map(|(i, phase)| label(i, phase)).collect();
    let mut bands = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let (width, _) = area.estimate_text_size(name, &label_style)?;
        bands.push(Band { x0: to_x(bounds[i]), x1: to_x(bounds[i + 1]), text_width: width as i32 + 6 });
    }
    let boxes = labels::layout(&bands, right);
    let plot_top = TITLE_HEIGHT + LABEL_ROW * labels::rows(&boxes) as i32 + 6;

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
    for kind in [Fault::KillProcess(0), Fault::Heal] {
        let colour = band_colour(kind);
        let rects = stats.iter().enumerate().filter(|(_, p)| band_colour(p.fault) == colour).map(|(i, _)| {
            Rectangle::new([(bounds[i].as_secs_f64(), 0.0), (bounds[i + 1].as_secs_f64(), 105.0)], colour.filled())
        });
        let name = if colour == FAULT_BAND { "fault phase" } else { "heal phase (and the baseline)" };
        chart
            .draw_series(rects)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], colour.filled()));
    }
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
    for (i, run) in runs(&series.success).into_iter().enumerate() {
        let drawn = chart.draw_series(LineSeries::new(run, SUCCESS.stroke_width(2)))?;
        if i == 0 {
            drawn
                .label("success rate (left)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], SUCCESS.stroke_width(2)));
        }
    }
    for (i, run) in runs(&series.p99).into_iter().enumerate() {
        let drawn = chart.draw_secondary_series(LineSeries::new(run, P99.stroke_width(2)))?;
        if i == 0 {
            drawn
                .label("p99 latency (right)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], P99.stroke_width(2)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;

    for ((name, b), stats) in names.iter().zip(&boxes).zip(stats) {
        let y = plot_top - LABEL_ROW * (b.row as i32 + 1);
        area.draw(&Rectangle::new(
            [(b.x, y + 1), (b.x + b.width, y + LABEL_ROW - 2)],
            band_colour(stats.fault).filled(),
        ))?;
        area.draw(&Text::new(name.as_str(), (b.x + 3, y + 3), label_style.clone()))?;
    }
    Ok(())
}
