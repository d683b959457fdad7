//! The font the lab programs' PNGs are drawn in (plotters' bitmap backend has none of its
//! own): DejaVu Sans from the Debian package fonts-dejavu-core (scripts/setup.sh installs it),
//! registered with plotters' ab_glyph backend under [`FAMILY`].

use std::sync::OnceLock;

use plotters::style::{FontStyle, register_font};

pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The family the texts ask for; an SVG names it too, for its viewer to pick.
pub const FAMILY: &str = "sans-serif";

#[derive(Debug, thiserror::Error)]
pub enum FontError {
    #[error("reading the font {FONT} (Debian package fonts-dejavu-core; scripts/setup.sh installs it): {0}")]
    Missing(#[source] std::io::Error),
    #[error("{FONT} is not a font plotters can read")]
    Invalid,
}

/// Registers [`FONT`] as [`FAMILY`] once per process (plotters keeps it for good).
pub fn load() -> Result<(), FontError> {
    static BYTES: OnceLock<&'static [u8]> = OnceLock::new();
    if BYTES.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT).map_err(FontError::Missing)?;
    let bytes = *BYTES.get_or_init(|| bytes.leak());
    register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| FontError::Invalid)
}
