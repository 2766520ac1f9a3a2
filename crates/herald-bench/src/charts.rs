//! Hand-written SVG charts from a run's summary: throughput per point as
//! paired bars (each pair scaled to its larger median, min–max as a
//! whisker), and latency percentiles (p50, p99, p99.9, max) per system as
//! curves on a log scale.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

const PEER: &str = "#8c8c8c";
const HERALD: &str = "#d9480f";

fn num(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or(f64::NAN)
}

/// Writes `throughput.svg` and `latency.svg` into `dir` from `points` (the
/// `points` array of `summary.json`).
pub fn write(dir: &Path, points: &[Value]) -> Result<()> {
    std::fs::write(dir.join("throughput.svg"), throughput(points))?;
    std::fs::write(dir.join("latency.svg"), latency(points))?;
    Ok(())
}

fn throughput(points: &[Value]) -> String {
    let rows: Vec<&Value> = points.iter().filter(|p| !latency_headline(p)).collect();
    let (row_h, left, width) = (44.0, 300.0, 830.0);
    let bar_w = width - left - 120.0;
    let height = 50.0 + row_h * rows.len() as f64;
    let mut svg = header(
        width,
        height,
        "Throughput: peer (grey) vs Herald (orange), median with min–max; each pair scaled to its larger median",
    );
    for (i, row) in rows.iter().enumerate() {
        let y = 40.0 + row_h * i as f64;
        let (p, h) = (&row["peer_figures"], &row["herald_figures"]);
        let scale = num(p, "median").max(num(h, "median")).max(1.0);
        let _ = write!(
            svg,
            r#"<text x="8" y="{:.1}" font-size="12">{} {} ({})</text>"#,
            y + 16.0,
            row["point"].as_str().unwrap_or(""),
            row["unit"].as_str().unwrap_or(""),
            row["peer"].as_str().unwrap_or(""),
        );
        for (j, (side, colour)) in [(p, PEER), (h, HERALD)].into_iter().enumerate() {
            let yy = y + 4.0 + 16.0 * j as f64;
            let w = bar_w * num(side, "median") / scale;
            let lo = left + bar_w * num(side, "min") / scale;
            let hi = left + bar_w * num(side, "max") / scale;
            let _ = write!(
                svg,
                r#"<rect x="{left}" y="{yy:.1}" width="{w:.1}" height="12" fill="{colour}"/><line x1="{lo:.1}" x2="{hi:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/><text x="{:.1}" y="{:.1}" font-size="11">{:.0}</text>"#,
                yy + 6.0,
                yy + 6.0,
                left + w.max(hi - left) + 6.0,
                yy + 10.0,
                num(side, "median"),
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" font-weight="bold">{:.2}×</text>"#,
            width - 60.0,
            y + 22.0,
            num(row, "ratio_median"),
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn latency(points: &[Value]) -> String {
    let rows: Vec<&Value> = points
        .iter()
        .filter(|p| !p["peer_figures"]["p50_us_median"].is_null())
        .filter(|p| num(&p["peer_figures"], "p50_us_median").is_finite())
        .collect();
    let (panel_w, panel_h) = (240.0, 200.0);
    let cols = 3usize;
    let width = panel_w * cols as f64 + 20.0;
    let height = 40.0 + (panel_h + 20.0) * rows.len().div_ceil(cols) as f64;
    let mut svg = header(
        width,
        height,
        "Latency percentiles (median of runs), log scale, µs: peer (grey) vs Herald (orange)",
    );
    let keys = [
        ("p50", "p50_us_median"),
        ("p99", "p99_us_median"),
        ("p99.9", "p999_us_median"),
        ("max", "max_us_median"),
    ];
    for (i, row) in rows.iter().enumerate() {
        let x0 = 10.0 + panel_w * (i % cols) as f64;
        let y0 = 30.0 + (panel_h + 20.0) * (i / cols) as f64;
        let values: Vec<f64> = ["peer_figures", "herald_figures"]
            .iter()
            .flat_map(|side| keys.iter().map(move |(_, k)| num(&row[*side], k)))
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let lo = values
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .log10()
            .floor();
        let hi = values
            .iter()
            .copied()
            .fold(1.0, f64::max)
            .log10()
            .ceil()
            .max(lo + 1.0);
        let plot =
            |v: f64| y0 + 30.0 + (panel_h - 60.0) * (1.0 - (v.max(1.0).log10() - lo) / (hi - lo));
        let _ = write!(
            svg,
            r#"<rect x="{x0}" y="{y0}" width="{}" height="{panel_h}" fill="none" stroke="silver"/><text x="{:.1}" y="{:.1}" font-size="12">{} ({})</text><text x="{:.1}" y="{:.1}" font-size="10">{:.0}</text><text x="{:.1}" y="{:.1}" font-size="10">{:.0}</text>"#,
            panel_w - 10.0,
            x0 + 6.0,
            y0 + 16.0,
            row["point"].as_str().unwrap_or(""),
            row["peer"].as_str().unwrap_or(""),
            x0 + 4.0,
            plot(10f64.powf(hi)) + 4.0,
            10f64.powf(hi),
            x0 + 4.0,
            plot(10f64.powf(lo)),
            10f64.powf(lo),
        );
        for (side, colour) in [("peer_figures", PEER), ("herald_figures", HERALD)] {
            let mut path = String::new();
            for (k, (label, key)) in keys.iter().enumerate() {
                let x = x0 + 50.0 + 55.0 * k as f64;
                let y = plot(num(&row[side], key));
                let _ = write!(path, "{}{x:.1},{y:.1} ", if k == 0 { "M" } else { "L" });
                let _ = write!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="10">{label}</text>"#,
                    x - 8.0,
                    y0 + panel_h - 12.0,
                );
            }
            let _ = write!(
                svg,
                r#"<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>"#
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Points whose headline is a latency (W3, W5): they go to the latency
/// chart only.
fn latency_headline(point: &Value) -> bool {
    point["headline"] == "p99 latency" || point["workload"] == "w3" || point["workload"] == "w5"
}

fn header(width: f64, height: f64, title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="8" y="20" font-size="13">{title}</text>"#
    )
}
