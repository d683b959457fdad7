//! The per-phase table drawn under the drill's chart: phase, sent, failed, failure share,
//! last failure after the fault and p99, each row on its band's colour.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use lb_tests::font::FAMILY;

use crate::chart::label;
use crate::report::PhaseStats;
use crate::schedule::Fault;

const ROW: i32 = 22;
const LEFT: i32 = 24;
/// Each column: its heading and the x of its right edge (the phase's, of its left edge).
const COLUMNS: [(&str, i32); 6] = [
    ("phase", LEFT + 6),
    ("sent", 520),
    ("failed", 620),
    ("failed %", 730),
    ("last failure after the fault", 990),
    ("p99 ms", 1130),
];

/// Draws the table from the top of `area`; `colour` gives a phase's band colour.
pub fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    stats: &[PhaseStats],
    colour: impl Fn(Fault) -> RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let right_edge = COLUMNS[COLUMNS.len() - 1].1 + 10;
    let headings: Vec<String> = COLUMNS.iter().map(|(heading, _)| heading.to_string()).collect();
    cells(area, ROW / 2, &headings)?;
    let line_y = ROW / 2 + ROW;
    area.draw(&PathElement::new([(LEFT, line_y), (right_edge, line_y)], BLACK.mix(0.6)))?;
    for (i, phase) in stats.iter().enumerate() {
        let y = line_y + 2 + ROW * i as i32;
        area.draw(&Rectangle::new([(LEFT, y), (right_edge, y + ROW - 2)], colour(phase.fault).filled()))?;
        cells(area, y + 2, &row(i, phase))?;
    }
    Ok(())
}

/// A phase's cells, in the order of [`COLUMNS`].
fn row(i: usize, phase: &PhaseStats) -> Vec<String> {
    vec![
        label(i, phase),
        phase.sent.to_string(),
        phase.failed.to_string(),
        format!("{:.2}", phase.share),
        phase.last_failure.map_or("-".to_owned(), |d| format!("+{:.2} s", d.as_secs_f64())),
        format!("{:.1}", phase.p99),
    ]
}

/// One line of cells at `y`: the first left-aligned, the numbers right-aligned.
fn cells<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    y: i32,
    cells: &[String],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (column, (cell, &(_, x))) in cells.iter().zip(&COLUMNS).enumerate() {
        let anchor = if column == 0 { HPos::Left } else { HPos::Right };
        let style = (FAMILY, 14).into_font().color(&BLACK).pos(Pos::new(anchor, VPos::Top));
        area.draw(&Text::new(cell.as_str(), (x, y), style))?;
    }
    Ok(())
}
