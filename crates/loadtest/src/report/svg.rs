//! Inline SVG line charts with axes, tick labels, a legend and markers.

use std::fmt::Write as _;

pub(super) const GREY: &str = "#888888";
pub(super) const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a chart. A non-finite `y` breaks the line (a gap in the data).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub colour: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

impl Series {
    /// Missing values become gaps.
    pub fn from_optional(
        name: &str,
        colour: &str,
        points: impl IntoIterator<Item = (f64, Option<f64>)>,
    ) -> Series {
        Series {
            name: name.to_string(),
            colour: colour.to_string(),
            points: points
                .into_iter()
                .map(|(x, y)| (x, y.unwrap_or(f64::NAN)))
                .collect(),
            dashed: false,
        }
    }

    pub fn dashed(self) -> Series {
        Series {
            dashed: true,
            ..self
        }
    }
}

/// A vertical line across a chart, e.g. when a fault was injected.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

const CHART_WIDTH: f64 = 900.0;
const CHART_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 50.0;
const MARGIN_BOTTOM: f64 = 45.0;

/// A line chart to draw with [`line_chart`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Vertical lines, e.g. fault injections.
    pub markers: Vec<Marker>,
    /// Makes the x axis cover at least this range, so charts of one run share their time axis.
    pub x_range: Option<(f64, f64)>,
}

/// An inline SVG line chart with axes, tick labels, a legend and optional markers.
/// Charts without any finite point say "no data" instead of drawing axes.
pub fn line_chart(chart: &Chart) -> String {
    let Chart {
        title,
        x_label,
        y_label,
        series,
        markers,
        x_range,
    } = chart;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" \
         viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\" \
         role=\"img\" aria-label=\"{0}\">\n<text x=\"{MARGIN_LEFT}\" y=\"18\" font-size=\"14\" \
         font-weight=\"bold\">{0}</text>\n",
        escape(title)
    );

    let finite: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if finite.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n</svg>",
            CHART_WIDTH / 2.0,
            CHART_HEIGHT / 2.0
        );
        return svg;
    }

    let x_ends = x_range.iter().flat_map(|&(from, to)| [from, to]);
    let x_axis = Axis::covering(finite.iter().map(|p| p.0).chain(x_ends), false, 8.0);
    let y_axis = Axis::covering(finite.iter().map(|p| p.1), true, 5.0);
    let plot_width = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let bottom = MARGIN_TOP + plot_height;
    let px = |x: f64| MARGIN_LEFT + x_axis.fraction(x) * plot_width;
    let py = |y: f64| bottom - y_axis.fraction(y) * plot_height;

    // Grid and tick labels.
    for tick in y_axis.ticks() {
        let y = py(tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{MARGIN_LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            MARGIN_LEFT + plot_width,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            tick_label(tick, y_axis.step)
        );
    }
    for tick in x_axis.ticks() {
        let x = px(tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{MARGIN_TOP}\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"#f3f3f3\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            bottom + 15.0,
            tick_label(tick, x_axis.step)
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        svg,
        "<line x1=\"{MARGIN_LEFT}\" y1=\"{MARGIN_TOP}\" x2=\"{MARGIN_LEFT}\" y2=\"{bottom}\" stroke=\"#444\"/>\
         <line x1=\"{MARGIN_LEFT}\" y1=\"{bottom}\" x2=\"{:.1}\" y2=\"{bottom}\" stroke=\"#444\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        MARGIN_LEFT + plot_width,
        MARGIN_LEFT + plot_width / 2.0,
        CHART_HEIGHT - 8.0,
        escape(x_label),
        MARGIN_TOP + plot_height / 2.0,
        escape(y_label)
    );

    for line in series {
        svg.push_str(&series_path(line, &px, &py));
    }

    // Markers after the lines, so their labels stay readable.
    for marker in markers
        .iter()
        .filter(|m| m.x >= x_axis.min && m.x <= x_axis.max)
    {
        let x = px(marker.x);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{MARGIN_TOP}\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"#cf222e\" \
             stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#cf222e\" \
             stroke=\"#fff\" stroke-width=\"3\" paint-order=\"stroke\">{}</text>",
            x + 3.0,
            MARGIN_TOP + 10.0,
            escape(&marker.label)
        );
    }

    // Legend, left to right above the plot.
    let mut legend_x = MARGIN_LEFT;
    for line in series {
        let colour = escape(&line.colour);
        let _ = writeln!(
            svg,
            "<rect x=\"{legend_x:.1}\" y=\"28\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"38\">{}</text>",
            legend_x + 16.0,
            escape(&line.name)
        );
        legend_x += 28.0 + 6.5 * line.name.chars().count() as f64;
    }
    svg.push_str("</svg>");
    svg
}

/// The series as SVG paths, one per unbroken run; a lone point between gaps becomes a dot.
fn series_path(series: &Series, px: &dyn Fn(f64) -> f64, py: &dyn Fn(f64) -> f64) -> String {
    let colour = escape(&series.colour);
    let dash = if series.dashed {
        " stroke-dasharray=\"6 4\""
    } else {
        ""
    };
    let mut out = String::new();
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(x, y) in &series.points {
        if x.is_finite() && y.is_finite() {
            if let Some(run) = runs.last_mut() {
                run.push((px(x), py(y)));
            }
        } else if runs.last().is_some_and(|run| !run.is_empty()) {
            runs.push(Vec::new());
        }
    }
    for run in runs.iter().filter(|run| !run.is_empty()) {
        if let [(x, y)] = run.as_slice() {
            let _ = writeln!(
                out,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\" fill=\"{colour}\"/>"
            );
            continue;
        }
        let mut d = String::new();
        for (i, (x, y)) in run.iter().enumerate() {
            let _ = write!(d, "{}{x:.1},{y:.1}", if i == 0 { "M" } else { " L" });
        }
        let _ = writeln!(
            out,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"{dash}/>"
        );
    }
    out
}

/// An axis range rounded out to "nice" ticks (1, 2 or 5 × 10ⁿ).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    min: f64,
    max: f64,
    step: f64,
}

impl Axis {
    /// `from_zero`: quantities like rates and stock read best against a zero baseline.
    /// `ticks`: roughly how many tick intervals to aim for.
    fn covering(values: impl Iterator<Item = f64>, from_zero: bool, ticks: f64) -> Axis {
        let (mut low, mut high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if from_zero {
            low = low.min(0.0);
        }
        if !(low.is_finite() && high.is_finite()) {
            (low, high) = (0.0, 1.0);
        }
        if high <= low {
            high = low + 1.0;
        }
        let step = nice_step((high - low) / ticks);
        Axis {
            min: (low / step).floor() * step,
            max: (high / step).ceil() * step,
            step,
        }
    }

    fn fraction(&self, value: f64) -> f64 {
        (value - self.min) / (self.max - self.min)
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let count = ((self.max - self.min) / self.step).round() as u64;
        (0..=count).map(move |i| self.min + i as f64 * self.step)
    }
}

fn nice_step(rough: f64) -> f64 {
    if !(rough.is_finite() && rough > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(rough.log10().floor());
    let nice = match rough / magnitude {
        f if f <= 1.0 => 1.0,
        f if f <= 2.0 => 2.0,
        f if f <= 5.0 => 5.0,
        _ => 10.0,
    };
    nice * magnitude
}

fn tick_label(value: f64, step: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 && step >= 1e5 {
        format!("{}M", trim_number(value / 1e6, 1))
    } else if magnitude >= 1e4 && step >= 1e3 {
        format!("{}k", trim_number(value / 1e3, 1))
    } else {
        let decimals = if step >= 1.0 {
            0
        } else {
            (-step.log10()).ceil() as usize
        };
        trim_number(value, decimals)
    }
}

fn trim_number(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    if text == "-0" {
        "0".into()
    } else {
        text
    }
}

/// Escapes text for markup (SVG and HTML alike): element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes() {
        let axis = Axis::covering([3.0, 947.0].into_iter(), true, 5.0);
        assert_eq!((axis.min, axis.max, axis.step), (0.0, 1000.0, 200.0));
        let ticks: Vec<f64> = axis.ticks().collect();
        assert_eq!(ticks, vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);

        let flat = Axis::covering([5.0, 5.0].into_iter(), false, 5.0);
        assert!(flat.max > flat.min);
        assert_eq!(tick_label(250_000.0, 50_000.0), "250k");
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(tick_label(1_500_000.0, 500_000.0), "1.5M");
    }
}
