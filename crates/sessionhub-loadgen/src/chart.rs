//! PNG charts with plotters' bitmap backend. Text needs a TrueType font: the first of a few
//! usual system paths (or `LOADGEN_FONT`) is loaded at run time, so building needs no font
//! libraries; without a font, charts are skipped.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Font paths tried in order.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers the font once; `false` if none could be found.
pub(crate) fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let from_env = std::env::var("LOADGEN_FONT").ok();
        let candidates = from_env.iter().map(String::as_str).chain(FONT_PATHS);
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Distinct colours for series, in order.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0xd6, 0x27, 0x28), // sessionhub first: red
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// The colour of series `i`.
pub(crate) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One named line.
pub(crate) struct Series {
    /// Legend text.
    pub(crate) name: String,
    /// Points.
    pub(crate) points: Vec<(f64, f64)>,
}

/// An x axis of percentiles drawn as "nines": 0 = p0, 1 = p90, 2 = p99, 3 = p99.9...
pub(crate) fn nines(percentile: f64) -> f64 {
    let tail = (1.0 - percentile / 100.0).max(1e-5);
    -tail.log10()
}

fn nines_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if *x < 0.05 {
        "p0".into()
    } else if (p - p.round()).abs() < 1e-6 {
        format!("p{p:.0}")
    } else {
        format!("p{}", format!("{p:.4}").trim_end_matches('0'))
    }
}

/// Draws latency-distribution lines (x: percentile in nines, y: ms on a log scale).
pub(crate) fn latency_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let max_y = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.5;
    let min_y = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(f64::MAX, f64::min)
        .clamp(0.01, 1.0)
        / 1.5;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..5f64, (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&nines_label)
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|&(x, y)| (x, y.max(min_y))),
                c.stroke_width(2),
            ))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Draws plain lines with linear axes.
pub(crate) fn line_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let max_x = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let max_y = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Draws horizontal bars, one per item, with the value written at the end of each bar,
/// and an optional vertical target line.
pub(crate) fn bar_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    unit: &str,
    items: &[(String, f64)],
    target: Option<(f64, &str)>,
) -> anyhow::Result<()> {
    let max_x = items
        .iter()
        .map(|i| i.1)
        .chain(target.map(|t| t.0))
        .fold(1e-9f64, f64::max)
        * 1.3;
    let n = items.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(210)
        .build_cartesian_2d(0f64..max_x, 0f64..n)?;
    let names: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(items.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let i = y.floor() as usize;
            if (y - i as f64 - 0.5).abs() < 0.01 {
                names.get(items.len() - 1 - i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc(unit)
        .x_label_formatter(&|v| short(*v))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (_, value)) in items.iter().enumerate() {
        let row = (items.len() - 1 - i) as f64;
        let c = color(i);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, row + 0.15), (*value, row + 0.85)],
            c.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!(" {}", short(*value)),
            (*value, row + 0.62),
            ("sans-serif", 14).into_font(),
        )))?;
    }
    if let Some((x, label)) = target {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, 0.0), (x, n)],
            BLACK.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!(" {label}"),
            (x, n - 0.1),
            ("sans-serif", 13).into_font(),
        )))?;
    }
    Ok(())
}

/// A number in a few characters: 1234567 -> 1.23M.
pub(crate) fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Creates a `width` x `height` PNG at `path`, split into `panels` side by side, lets
/// `draw` fill them and saves it.
pub(crate) fn png(
    path: &Path,
    width: u32,
    height: u32,
    panels: usize,
    draw: impl FnOnce(&[DrawingArea<BitMapBackend<'_>, Shift>]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !font_ready() {
        bail!(
            "no TrueType font found (set LOADGEN_FONT); skipping {}",
            path.display()
        );
    }
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.max(1)));
    draw(&areas)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert!((nines(100.0) - 5.0).abs() < 1e-9);
        assert_eq!(nines_label(&0.0), "p0");
        assert_eq!(nines_label(&1.0), "p90");
        assert_eq!(nines_label(&2.0), "p99");
        assert_eq!(nines_label(&3.0), "p99.9");
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(1_234_567.0), "1.23M");
        assert_eq!(short(45_600.0), "45.6k");
        assert_eq!(short(512.0), "512");
        assert_eq!(short(12.34), "12.3");
        assert_eq!(short(1.234), "1.23");
    }
}
