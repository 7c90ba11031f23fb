//! SVG plots of per-tenant L2 rate over time: one panel per side, side by side.
//!
//! Each panel shows every tenant's rate (Mbit/s) in fixed time bins, with its entitlement as
//! a dashed line, so netd and the kernel's HTB can be compared at a glance.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One tenant's line in a panel.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    /// (seconds, Mbit/s)
    pub points: Vec<(f64, f64)>,
    /// The tenant's entitlement in Mbit/s during the run (if constant).
    pub expected: Option<f64>,
}

/// One side's panel.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub lines: Vec<Line>,
}

const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// Draw `panels` side by side into an SVG file at `path`.
pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    let n = panels.len().max(1);
    let width = u32::try_from(460 * n).unwrap_or(1840);
    let root = SVGBackend::new(path, (width, 360)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("plot {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(e)?;
    let x_max = panels
        .iter()
        .flat_map(|p| p.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)))
        .fold(1.0_f64, f64::max);
    let y_max = panels
        .iter()
        .flat_map(|p| p.lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)))
        .fold(10.0_f64, f64::max)
        * 1.1;
    for (area, panel) in root.split_evenly((1, n)).iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("s")
            .y_desc("Mbit/s (L2)")
            .light_line_style(WHITE)
            .draw()
            .map_err(e)?;
        for (i, line) in panel.lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(line.points.iter().copied(), colour))
                .map_err(e)?
                .label(line.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], colour));
            if let Some(want) = line.expected {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(0.0, want), (x_max, want)],
                        4,
                        4,
                        colour.mix(0.6).stroke_width(1),
                    ))
                    .map_err(e)?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}
