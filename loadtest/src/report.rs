//! The results folder: `report.json`, `summary.md` and the PNG plots.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::scenarios::Plot;

/// Fonts tried for plot text, in order (Debian's fonts-dejavu-core first).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a system font for plot text once; `false` when none is installed.
fn font_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        FONTS.iter().any(|path| {
            let Ok(bytes) = std::fs::read(path) else { return false };
            // The font lives for the whole run; leaking it gives plotters the 'static it needs.
            plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice())).is_ok()
        })
    })
}

/// Draws `plot` into `dir`; returns why it was skipped, if it was.
pub fn draw(dir: &Path, plot: &Plot) -> Result<Option<String>> {
    if !font_ready() {
        return Ok(Some(format!("{}: no TrueType font found in {FONTS:?}", plot.file)));
    }
    let points: Vec<(f64, f64)> = plot.series.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    if points.is_empty() {
        return Ok(Some(format!("{}: no data", plot.file)));
    }
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9) * 1.02;
    let x_min = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min).min(0.0);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let y_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).min(0.0);
    let path = dir.join(&plot.file);
    let draw_err = |e: String| Error::Invalid(format!("drawing {}: {e}", plot.file));
    let root = BitMapBackend::new(&path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&plot.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, y_min..y_max)
        .map_err(|e| draw_err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(plot.x_label.as_str())
        .y_desc(plot.y_label.as_str())
        .x_label_formatter(&|v| axis_label(*v))
        .y_label_formatter(&|v| axis_label(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| draw_err(e.to_string()))?;
    for (i, (name, series)) in plot.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(series.iter().copied(), color.stroke_width(2)))
            .map_err(|e| draw_err(e.to_string()))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| draw_err(e.to_string()))?;
    root.present().map_err(|e| draw_err(e.to_string()))?;
    Ok(None)
}

/// An axis value as a reader wants it: whole numbers from 100 up with thousands separators
/// (`12,500`), smaller ones with at most two decimals and no trailing zeros (`2.5`, `0.25`, `3`).
fn axis_label(v: f64) -> String {
    if v.abs() >= 100.0 {
        let whole = format!("{:.0}", v.abs());
        let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
        for (i, digit) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        return if v < 0.0 { format!("-{grouped}") } else { grouped };
    }
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" { "0".to_owned() } else { text.to_owned() }
}

pub fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::axis_label;

    #[test]
    fn axis_labels_are_readable() {
        for (v, want) in [
            (0.0, "0"),
            (3.0, "3"),
            (2.5, "2.5"),
            (0.25, "0.25"),
            (99.5, "99.5"),
            (100.0, "100"),
            (1000.0, "1,000"),
            (12_500.4, "12,500"),
            (1_234_567.0, "1,234,567"),
            (-4096.0, "-4,096"),
            (-0.001, "0"),
        ] {
            assert_eq!(axis_label(v), want, "{v}");
        }
    }
}
