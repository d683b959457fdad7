//! The picture: every panel as a small time-series chart in a grid ([`COLUMNS`] wide), each
//! with its title, a time axis in seconds, a value axis and a legend of its largest series.

use std::ops::Range;
use std::path::{Path, PathBuf};

use lb_tests::font::{self, FAMILY, FontError};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Panels per row, and the size of each panel's cell in pixels.
pub const COLUMNS: usize = 4;
pub const CELL: (u32, u32) = (400, 290);
/// The heading's height above the grid.
const HEADING: u32 = 36;
/// Series named in a panel's legend; the others are drawn in [`OTHERS`].
pub const LEGEND_SERIES: usize = 4;
const LEGEND_ROW: u32 = 14;
pub const PALETTE: [RGBColor; LEGEND_SERIES] =
    [RGBColor(0x2a, 0x5c, 0xc4), RGBColor(0xd0, 0x5a, 0x1e), RGBColor(0x1b, 0x7f, 0x3a), RGBColor(0x8e, 0x3c, 0xa8)];
const OTHERS: RGBColor = RGBColor(0xb4, 0xb4, 0xb4);
/// The fault's seconds (the drill's fault colour).
pub const SHADE: RGBColor = RGBColor(0xf6, 0xd5, 0xcc);

/// One line of a panel: its legend text and its points (seconds since the start, value).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A panel's title and every series its queries returned.
#[derive(Clone, Debug, PartialEq)]
pub struct PanelData {
    pub title: String,
    pub series: Vec<Series>,
}

#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error(transparent)]
    Font(#[from] FontError),
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// The picture's size for `panels` panels.
pub fn size(panels: usize) -> (u32, u32) {
    let rows = panels.div_ceil(COLUMNS) as u32;
    (COLUMNS as u32 * CELL.0, HEADING + rows * CELL.1)
}

/// Draws `panels` over `0..span` seconds as a PNG at `path`, `heading` above them and the
/// seconds `shade` (the fault) shaded in each.
pub fn write(path: &Path, heading: &str, panels: &[PanelData], span: f64, shade: Range<f64>) -> Result<(), GridError> {
    font::load()?;
    let root = BitMapBackend::new(path, size(panels.len())).into_drawing_area();
    draw(&root, heading, panels, span, shade).map_err(|message| GridError::Draw { path: path.to_owned(), message })
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    heading: &str,
    panels: &[PanelData],
    span: f64,
    shade: Range<f64>,
) -> Result<(), String> {
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(error)?;
    root.draw(&Text::new(heading, (12, 9), (FAMILY, 19).into_font())).map_err(error)?;
    let (_, grid) = root.split_vertically(HEADING);
    let cells = grid.split_evenly((panels.len().div_ceil(COLUMNS), COLUMNS));
    for (panel, cell) in panels.iter().zip(&cells) {
        draw_panel(cell, panel, span, shade.clone()).map_err(error)?;
    }
    root.present().map_err(error)
}

/// The series in the order they are drawn: the [`LEGEND_SERIES`] with the highest peaks
/// first (those get colours and a legend line), then the rest.
pub fn by_peak(series: &[Series]) -> Vec<&Series> {
    let peak = |s: &Series| s.points.iter().map(|&(_, v)| v).fold(f64::NEG_INFINITY, f64::max);
    let mut sorted: Vec<&Series> = series.iter().collect();
    sorted.sort_by(|a, b| peak(b).total_cmp(&peak(a)).then_with(|| a.label.cmp(&b.label)));
    sorted
}

/// The value axis: from 0 (or the lowest value, when negative) to a little above the
/// highest, and 0..1 when everything is 0 or there is nothing.
pub fn value_range(series: &[Series]) -> std::ops::Range<f64> {
    let values = || series.iter().flat_map(|s| s.points.iter().map(|&(_, v)| v));
    let low = values().fold(0.0, f64::min);
    let high = values().fold(0.0, f64::max);
    if high - low <= f64::EPSILON { low..low + 1.0 } else { low..high + 0.08 * (high - low) }
}

/// A value axis label: short, with k and M for thousands and millions, two significant
/// digits below 1.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        // Two significant digits: a whole axis of 0.005 steps must not read "0.01 0.01 ...".
        let decimals = (1.0 - a.log10().floor()) as usize;
        format!("{v:.decimals$}")
    }
}

fn draw_panel<DB: DrawingBackend>(
    cell: &DrawingArea<DB, Shift>,
    panel: &PanelData,
    span: f64,
    shade: Range<f64>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let series = by_peak(&panel.series);
    let legend_rows = series.len().min(LEGEND_SERIES) as u32 + u32::from(series.len() > LEGEND_SERIES);
    let (plot, legend) = cell.split_vertically(CELL.1 - 6 - LEGEND_ROW * legend_rows.max(1));
    let values = value_range(&panel.series);
    let mut chart = ChartBuilder::on(&plot)
        .caption(&panel.title, (FAMILY, 15))
        .margin(6)
        .x_label_area_size(30)
        .y_label_area_size(44)
        .build_cartesian_2d(0f64..span, values.clone())?;
    chart.draw_series([Rectangle::new([(shade.start, values.start), (shade.end, values.end)], SHADE.filled())])?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.1))
        .x_labels(7)
        .y_labels(5)
        .x_desc("s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| compact(*v))
        .label_style((FAMILY, 11))
        .axis_desc_style((FAMILY, 11))
        .draw()?;
    // The uncoloured ones first, so that the named lines stay on top.
    for (i, s) in series.iter().enumerate().rev() {
        let colour = PALETTE.get(i).copied().unwrap_or(OTHERS);
        chart.draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))?;
    }
    if series.is_empty() {
        let grey = BLACK.mix(0.5);
        let style = TextStyle::from((FAMILY, 13).into_font()).color(&grey);
        let (w, h) = plot.dim_in_pixel();
        plot.draw(&Text::new("no data", (w as i32 / 2 - 24, h as i32 / 2), style))?;
    }
    draw_legend(&legend, &series)
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[&Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style = TextStyle::from((FAMILY, 11).into_font());
    let mut rows: Vec<(RGBColor, String)> =
        series.iter().zip(PALETTE).map(|(s, colour)| (colour, s.label.clone())).collect();
    if series.len() > LEGEND_SERIES {
        rows.push((OTHERS, format!("{} more", series.len() - LEGEND_SERIES)));
    }
    for (i, (colour, text)) in rows.into_iter().enumerate() {
        let y = (i as u32 * LEGEND_ROW) as i32;
        area.draw(&PathElement::new([(52, y + 7), (70, y + 7)], colour.stroke_width(3)))?;
        area.draw(&Text::new(text, (76, y + 1), style.clone()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 panels over 90 s: panel i has i % 6 series (so some have none and some more
    /// than the legend names), sines of different heights, a step in the middle.
    fn synthetic_panels() -> Vec<PanelData> {
        (0..20)
            .map(|p| PanelData {
                title: format!("Panel {p}"),
                series: (0..p % 6)
                    .map(|s| Series {
                        label: format!("vip-{s}"),
                        points: (0..=45)
                            .map(|k| {
                                let t = 2.0 * k as f64;
                                let step = if (30.0..60.0).contains(&t) { 0.5 } else { 1.0 };
                                (t, (s + 1) as f64 * 100.0 * step * (1.2 + (t / 10.0).sin()))
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn the_grid_is_a_png_of_the_expected_size_with_the_series_drawn() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("panels.png");
        let panels = synthetic_panels();
        write(&path, "synthetic panels", &panels, 90.0, 30.0..60.0).expect("drawing the grid");

        let decoder = png::Decoder::new(std::fs::File::open(&path).expect("the PNG was written"));
        let mut reader = decoder.read_info().expect("a PNG header");
        let mut pixels = vec![0; reader.output_buffer_size()];
        let frame = reader.next_frame(&mut pixels).expect("PNG pixels");
        assert_eq!((frame.width, frame.height), size(panels.len()));
        assert_eq!((frame.width, frame.height), (1600, HEADING + 5 * CELL.1));
        let colours: std::collections::HashSet<&[u8]> = pixels[..frame.buffer_size()].chunks(3).collect();
        for RGBColor(r, g, b) in PALETTE.into_iter().chain([OTHERS, SHADE]) {
            assert!(colours.contains(&[r, g, b][..]), "no pixel has the colour {r:02x}{g:02x}{b:02x}");
        }
        let white = pixels.chunks(3).filter(|p| p == &[255, 255, 255]).count();
        assert!(white < pixels.len() / 3 * 97 / 100, "the picture is nearly blank ({white} white pixels)");
    }

    #[test]
    fn the_legend_names_the_highest_series_first() {
        let flat = |label: &str, v: f64| Series { label: label.into(), points: vec![(0.0, v), (2.0, v)] };
        let series = [flat("low", 1.0), flat("high", 9.0), flat("mid", 5.0)];
        let labels: Vec<&str> = by_peak(&series).iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["high", "mid", "low"]);
        assert_eq!(value_range(&series), 0.0..9.0 + 0.08 * 9.0);
        assert_eq!(value_range(&[flat("zero", 0.0)]), 0.0..1.0);
        assert_eq!(value_range(&[]), 0.0..1.0);
    }

    #[test]
    fn value_labels_are_short() {
        let labels: Vec<String> =
            [0.0, 0.005, 0.025, 0.25, 2.5, 42.0, 1500.0, 25_000.0, 3_200_000.0].map(compact).into();
        assert_eq!(labels, ["0", "0.0050", "0.025", "0.25", "2.5", "42", "1.5k", "25k", "3.2M"]);
    }
}
