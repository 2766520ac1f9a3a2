//! `summary.md`: the run's tables in Markdown, as BENCHMARKS.md embeds
//! them (written with the charts, and by `--replot` from `summary.json`).

use std::fmt::Write as _;

use serde_json::Value;

fn num(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or(f64::NAN)
}

/// A figure with thousands separators (no decimals) or, below 10, two.
fn fig(value: f64) -> String {
    if !value.is_finite() {
        return "—".to_owned();
    }
    if value.abs() < 10.0 {
        return format!("{value:.2}");
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

/// A latency figure; an empty histogram (nothing measured) reads as 0.
fn lat(value: f64) -> String {
    if value > 0.0 {
        fig(value)
    } else {
        "—".to_owned()
    }
}

fn latency_headline(point: &Value) -> bool {
    point["headline"].as_str() == Some("p99")
}

fn ratios(point: &Value) -> (f64, f64) {
    point["ratios"]
        .as_array()
        .map(|ratios| {
            ratios
                .iter()
                .filter_map(Value::as_f64)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
                    (lo.min(r), hi.max(r))
                })
        })
        .unwrap_or((f64::NAN, f64::NAN))
}

/// The three tables of a run.
pub fn markdown(summary: &Value) -> String {
    let points = summary["points"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let machine = &summary["machine"];
    let _ = writeln!(
        out,
        "Run: {} runs in {:.1} min; load average {} at the start, {} at the end; one 128 B pwrite + fdatasync: p50 {} µs at the start, {} µs at the end, {} µs paced at {}/s (the W3 D2 rate).\n",
        summary["runs"],
        num(summary, "elapsed_seconds") / 60.0,
        machine["load_average_at_start"],
        summary["load_average_at_end"],
        machine["fdatasync_at_start"]["p50_us"],
        summary["fdatasync_at_end"]["p50_us"],
        machine["fdatasync_paced_at_start"]["p50_us"],
        machine["fdatasync_paced_at_start"]["paced_per_s"],
    );
    let _ = writeln!(
        out,
        "| point | level | unit | peer median (min–max) | Herald median (min–max) | ratio (min–max) | other cores (max) | load (max) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for point in &points {
        let (peer, herald) = (&point["peer_figures"], &point["herald_figures"]);
        let (lo, hi) = ratios(point);
        let ratio = num(point, "ratio_median");
        let ratio = if !ratio.is_finite() || ratio <= 0.0 {
            "— (a side delivered nothing scheduled in the window in time)".to_owned()
        } else if latency_headline(point) {
            format!("{ratio:.2}× ({lo:.2}–{hi:.2}) of the peer's p99")
        } else {
            format!("{ratio:.2}× ({lo:.2}–{hi:.2})")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} {} ({}–{}) | {} ({}–{}) | {} | {:.2} | {:.1} |",
            point["point"].as_str().unwrap_or(""),
            point["durability"].as_str().unwrap_or(""),
            point["unit"].as_str().unwrap_or(""),
            point["peer"].as_str().unwrap_or(""),
            lat(num(peer, "median")),
            lat(num(peer, "min")),
            lat(num(peer, "max")),
            lat(num(herald, "median")),
            lat(num(herald, "min")),
            lat(num(herald, "max")),
            ratio,
            num(peer, "other_cores_max").max(num(herald, "other_cores_max")),
            num(peer, "load_average_max").max(num(herald, "load_average_max")),
        );
    }
    let _ = writeln!(
        out,
        "\nLatency, medians over the runs of each percentile (µs; W3/W5 from the scheduled send time):\n"
    );
    let _ = writeln!(
        out,
        "| point | system | p50 | p99 | p99.9 | max | rate (/s) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for point in &points {
        if point["herald_figures"]["p50_us_median"].is_null() {
            continue;
        }
        for (name, side) in [
            (point["peer"].as_str().unwrap_or(""), &point["peer_figures"]),
            ("herald", &point["herald_figures"]),
        ] {
            let _ = writeln!(
                out,
                "| {} | {name} | {} | {} | {} | {} | {} |",
                point["point"].as_str().unwrap_or(""),
                lat(num(side, "p50_us_median")),
                lat(num(side, "p99_us_median")),
                lat(num(side, "p999_us_median")),
                lat(num(side, "max_us_median")),
                fig(num(side, "throughput_median")),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nCPU per unit of the headline rate (µs; server = its process tree, client = herald-bench or pgbench), medians over the runs, and device flushes per second:\n"
    );
    let _ = writeln!(
        out,
        "| point | server: peer | server: Herald | client: peer | client: Herald | flushes/s: peer | flushes/s: Herald |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for point in &points {
        let (peer, herald) = (&point["peer_figures"], &point["herald_figures"]);
        let client = |side: &Value| {
            num(side, "client_cpu_cores_median") * 1e6 / num(side, "throughput_median")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            point["point"].as_str().unwrap_or(""),
            fig(num(peer, "server_cpu_us_per_unit_median")),
            fig(num(herald, "server_cpu_us_per_unit_median")),
            fig(client(peer)),
            fig(client(herald)),
            fig(num(peer, "flushes_per_s_median")),
            fig(num(herald, "flushes_per_s_median")),
        );
    }
    out
}
