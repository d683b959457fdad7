//! Where the phase names go above the chart's bands, so that no two of them collide.
//!
//! Pure: the caller measures the texts (in pixels, with the font it draws them in) and
//! draws them where this says.

/// Space kept between two labels on the same row, and a margin for renderers whose font
/// is a little wider than the one measured (the SVG's viewer picks its own sans-serif).
const GAP: i32 = 10;

/// A phase's band on the time axis, in pixels, and the width of its label's text.
#[derive(Clone, Copy, Debug)]
pub struct Band {
    pub x0: i32,
    pub x1: i32,
    pub text_width: i32,
}

/// Where one label goes: its left edge, its width and its row (0 nearest the chart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelBox {
    pub x: i32,
    pub width: i32,
    pub row: usize,
}

impl LabelBox {
    /// Whether two boxes share a row and their extents (with the gap) meet.
    pub fn collides(&self, other: &LabelBox) -> bool {
        self.row == other.row && self.x < other.x + other.width + GAP && other.x < self.x + self.width + GAP
    }
}

/// Each band's label box: centred over its band when the text fits in it, else starting at
/// the band's left edge; kept inside `0..right`; on the lowest row where it meets no label
/// already placed. Short phases with long neighbours thus climb to rows above.
pub fn layout(bands: &[Band], right: i32) -> Vec<LabelBox> {
    let mut placed: Vec<LabelBox> = Vec::with_capacity(bands.len());
    for band in bands {
        let width = band.text_width;
        let centred = (band.x0 + band.x1 - width) / 2;
        let x = if width <= band.x1 - band.x0 { centred } else { band.x0 };
        let x = x.min(right - width).max(0);
        let row = (0..)
            .find(|&row| {
                let candidate = LabelBox { x, width, row };
                placed.iter().all(|other| !candidate.collides(other))
            })
            .expect("some row is free");
        placed.push(LabelBox { x, width, row });
    }
    placed
}

/// How many rows `boxes` use.
pub fn rows(boxes: &[LabelBox]) -> usize {
    boxes.iter().map(|b| b.row + 1).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::PHASES;

    /// Bands of the given lengths (seconds) laid side by side at `px_per_s`, each label
    /// `px_per_char` wide per character of the real phase name.
    fn bands(lengths: &[f64], px_per_s: f64, px_per_char: i32) -> Vec<Band> {
        let mut x = 0.0;
        lengths
            .iter()
            .zip(PHASES)
            .map(|(length, (name, _))| {
                let band = Band {
                    x0: x as i32,
                    x1: (x + length * px_per_s) as i32,
                    text_width: px_per_char * name.len() as i32,
                };
                x += length * px_per_s;
                band
            })
            .collect()
    }

    fn assert_no_collisions(boxes: &[LabelBox]) {
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                assert!(!a.collides(b), "{a:?} and {b:?} overlap");
            }
        }
    }

    #[test]
    fn the_real_phases_at_the_drills_lengths_never_collide() {
        for (phase, site) in [(10.0, 16.0), (4.0, 10.0)] {
            let lengths: Vec<f64> = (0..PHASES.len()).map(|i| if i >= 9 { site } else { phase }).collect();
            let boxes = layout(&bands(&lengths, 900.0 / lengths.iter().sum::<f64>(), 7), 900);
            assert_no_collisions(&boxes);
            assert!(rows(&boxes) >= 2, "the long names must have been staggered: {boxes:?}");
        }
    }

    #[test]
    fn short_heal_phases_between_long_faults_climb_rows() {
        // Heals of 1 s between faults of 10 s: "heal" can never sit beside its neighbours.
        let lengths: Vec<f64> = (0..PHASES.len()).map(|i| if i % 2 == 0 { 1.0 } else { 10.0 }).collect();
        let boxes = layout(&bands(&lengths, 12.0, 7), 800);
        assert_no_collisions(&boxes);
        assert!(boxes.iter().all(|b| b.x >= 0 && b.x + b.width <= 800), "a label left the chart: {boxes:?}");
    }

    #[test]
    fn labels_that_fit_stay_on_one_row_centred() {
        let boxes = layout(&[Band { x0: 0, x1: 100, text_width: 40 }, Band { x0: 100, x1: 200, text_width: 40 }], 200);
        assert_eq!(boxes, [LabelBox { x: 30, width: 40, row: 0 }, LabelBox { x: 130, width: 40, row: 0 }]);
    }

    #[test]
    fn a_wide_label_starts_at_its_band_and_pushes_its_neighbour_up() {
        let boxes = layout(&[Band { x0: 0, x1: 50, text_width: 120 }, Band { x0: 50, x1: 100, text_width: 20 }], 300);
        assert_eq!(boxes, [LabelBox { x: 0, width: 120, row: 0 }, LabelBox { x: 65, width: 20, row: 1 }]);
    }

    #[test]
    fn the_last_label_is_kept_inside_the_right_edge() {
        let boxes = layout(&[Band { x0: 250, x1: 290, text_width: 100 }], 300);
        assert_eq!(boxes, [LabelBox { x: 200, width: 100, row: 0 }]);
    }
}
