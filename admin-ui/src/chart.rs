//! Line charts drawn as inline SVG: no chart library, a few hundred points at most.

use leptos::prelude::*;

use crate::stats::WINDOW_MS;

/// One line of a chart: a name, a CSS colour and `(time ms, value)` points.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub name: &'static str,
    pub color: &'static str,
    pub points: Vec<(i64, f64)>,
}

const W: f64 = 600.0;
const H: f64 = 160.0;

/// The smallest "nice" number (1, 2, 2.5 or 5 × 10^k) at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let exp = v.log10().floor();
    let base = 10f64.powf(exp);
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * base {
            return m * base;
        }
    }
    10.0 * base
}

pub fn format_value(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v.fract().abs() < 1e-9 || v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The time span shown: the data there is, from one minute up to the whole window.
fn span(lines: &[Line], end: i64) -> i64 {
    let first = lines.iter().filter_map(|l| l.points.first().map(|p| p.0)).min().unwrap_or(end);
    (end - first).clamp(60_000, WINDOW_MS)
}

/// "2 min ago" for the left end of the time axis.
fn span_label(span: i64) -> String {
    format!("{} min ago", (span as f64 / 60_000.0).round().max(1.0))
}

/// The SVG markup of the chart, and the top of its y axis.
fn svg(lines: &[Line], end: i64) -> (String, f64) {
    let window = span(lines, end);
    let start = end - window;
    let max = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let top = nice_ceiling(max);
    let x = |t: i64| ((t - start) as f64 / window as f64 * W).clamp(0.0, W);
    let y = |v: f64| H - (v / top * (H - 4.0)).clamp(0.0, H - 4.0) - 1.0;
    let mut out = format!(
        r#"<svg class="chart-svg" viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" aria-hidden="true">"#
    );
    for i in 1..4 {
        let gy = H - (H - 4.0) * f64::from(i) / 4.0 - 1.0;
        out.push_str(&format!(
            r#"<line x1="0" x2="{W}" y1="{gy:.1}" y2="{gy:.1}" class="grid" vector-effect="non-scaling-stroke"/>"#
        ));
    }
    for line in lines {
        let pts: Vec<(f64, f64)> =
            line.points.iter().filter(|p| p.0 >= start).map(|&(t, v)| (x(t), y(v))).collect();
        if pts.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (i, (px, py)) in pts.iter().enumerate() {
            d.push_str(&format!("{}{px:.1},{py:.1}", if i == 0 { "M" } else { " L" }));
        }
        let (first, last) = (pts[0].0, pts[pts.len() - 1].0);
        out.push_str(&format!(
            r#"<path d="{d} L{last:.1},{H} L{first:.1},{H} Z" fill="{c}" fill-opacity="0.08" stroke="none"/>"#,
            c = line.color
        ));
        out.push_str(&format!(
            r#"<path d="{d}" fill="none" stroke="{c}" stroke-width="2" stroke-linejoin="round" vector-effect="non-scaling-stroke"/>"#,
            c = line.color
        ));
    }
    out.push_str("</svg>");
    (out, top)
}

/// A chart card: title, legend with the latest values, the plot and its axes.
pub fn chart(title: &'static str, lines: Vec<Line>, end: i64) -> impl IntoView {
    let (markup, top) = svg(&lines, end);
    let from = span_label(span(&lines, end));
    let legend = lines
        .iter()
        .map(|l| {
            let latest = l.points.last().map(|p| format_value(p.1)).unwrap_or_else(|| "–".into());
            let style = format!("background:{}", l.color);
            view! {
                <span class="legend-item">
                    <span class="swatch" style=style></span>
                    {l.name}
                    <strong>{latest}</strong>
                </span>
            }
        })
        .collect::<Vec<_>>();
    view! {
        <section class="card chart-card" data-chart=title>
            <header class="chart-head">
                <h3>{title}</h3>
                <div class="legend">{legend}</div>
            </header>
            <div class="chart-body">
                <div class="y-axis">
                    <span>{format_value(top)}</span>
                    <span>{format_value(top / 2.0)}</span>
                    <span>"0"</span>
                </div>
                <div class="plot" inner_html=markup></div>
            </div>
            <div class="x-axis">
                <span>{from}</span>
                <span>"now"</span>
            </div>
        </section>
    }
}

/// A small line without axes, for table rows.
pub fn sparkline(points: &[(i64, f64)], end: i64, color: &'static str) -> impl IntoView + use<> {
    let line = Line { name: "", color, points: points.to_vec() };
    let (markup, _) = svg(std::slice::from_ref(&line), end);
    view! { <div class="sparkline" inner_html=markup></div> }
}
