//! The cluster scenario's report: Markdown with the product's claims checked one by one, and
//! SVG plots of latency and throughput over time (drawn here: a few polylines need no crate).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::Sample;

pub fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// One line of a plot: its name, colour and (x, y) points.
struct Series {
    name: &'static str,
    colour: &'static str,
    points: Vec<(f64, f64)>,
}

fn svg(title: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 300.0, 64.0, 16.0, 32.0, 40.0);
    let xmax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |v: f64| left + v / xmax * (w - left - right);
    let y = |v: f64| h - bottom - v / ymax * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="18" font-size="13" font-weight="bold">{title}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">seconds</text>
<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{y_label}</text>
"#,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (left + w - right) / 2.0,
        h - 6.0,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
    );
    for i in 0..=4 {
        let v = ymax / 1.1 * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(v),
            w - right,
            left - 4.0,
            y(v) + 4.0,
            fmt_num(v)
        );
        let t = xmax * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.0}</text>"#,
            x(t),
            h - bottom + 14.0,
            t
        );
    }
    for (i, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            se.colour,
            pts.join(" ")
        );
        let lx = left + 10.0 + i as f64 * 150.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{}" width="10" height="3" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            top - 4.0,
            se.colour,
            lx + 14.0,
            top,
            se.name
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Per-second buckets of (start ms, latency, ok) samples: count, failures, p50 and p95 (ms).
fn buckets(
    samples: impl Iterator<Item = (u64, Duration, bool)>,
) -> Vec<(f64, usize, usize, f64, f64)> {
    let mut by: std::collections::BTreeMap<u64, (Vec<Duration>, usize)> = Default::default();
    for (at, lat, ok) in samples {
        let b = by.entry(at / 1000).or_default();
        b.0.push(lat);
        if !ok {
            b.1 += 1;
        }
    }
    by.into_iter()
        .map(|(sec, (lats, failed))| {
            let ms = |q| quantile(&lats, q).as_secs_f64() * 1e3;
            (sec as f64, lats.len(), failed, ms(0.5), ms(0.95))
        })
        .collect()
}

pub fn write(
    dir: &Path,
    title: &str,
    notes: &[String],
    summary: &Value,
    http: &[Sample],
    ws: &[(u64, Duration)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let hb = buckets(http.iter().map(|s| (s.at_ms, s.latency, s.ok)));
    let wb = buckets(ws.iter().map(|(at, l)| (*at, *l, true)));
    let plots = [
        (
            "http-latency.svg",
            svg(
                "HTTP latency through the load balancer (per second)",
                "ms",
                &[
                    Series {
                        name: "p50",
                        colour: "#1f77b4",
                        points: hb.iter().map(|b| (b.0, b.3)).collect(),
                    },
                    Series {
                        name: "p95",
                        colour: "#d62728",
                        points: hb.iter().map(|b| (b.0, b.4)).collect(),
                    },
                ],
            ),
        ),
        (
            "http-throughput.svg",
            svg(
                "HTTP requests finished per second",
                "requests/s",
                &[
                    Series {
                        name: "finished",
                        colour: "#2ca02c",
                        points: hb.iter().map(|b| (b.0, b.1 as f64)).collect(),
                    },
                    Series {
                        name: "failed",
                        colour: "#d62728",
                        points: hb.iter().map(|b| (b.0, b.2 as f64)).collect(),
                    },
                ],
            ),
        ),
        (
            "ws-latency.svg",
            svg(
                "WebSocket message latency, send to receipt (per second)",
                "ms",
                &[
                    Series {
                        name: "p50",
                        colour: "#1f77b4",
                        points: wb.iter().map(|b| (b.0, b.3)).collect(),
                    },
                    Series {
                        name: "p95",
                        colour: "#d62728",
                        points: wb.iter().map(|b| (b.0, b.4)).collect(),
                    },
                ],
            ),
        ),
        (
            "ws-throughput.svg",
            svg(
                "WebSocket deliveries per second",
                "messages/s",
                &[Series {
                    name: "delivered",
                    colour: "#2ca02c",
                    points: wb.iter().map(|b| (b.0, b.1 as f64)).collect(),
                }],
            ),
        ),
    ];
    for (name, body) in &plots {
        std::fs::write(dir.join(name), body)?;
    }
    let f = |p: &str| summary.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    let claims = [
        (
            "100+ concurrent users",
            format!("{:.0} users", f("/users")),
            f("/users") >= 100.0,
        ),
        (
            "1,000+ requests/minute of mixed API traffic",
            format!("{:.0}/min", f("/http/per_minute")),
            f("/http/per_minute") >= 1000.0,
        ),
        (
            "API p95 < 2 s",
            format!(
                "{:.1} ms (p50 {:.1}, p99 {:.1})",
                f("/http/p95_ms"),
                f("/http/p50_ms"),
                f("/http/p99_ms")
            ),
            f("/http/p95_ms") < 2000.0,
        ),
        (
            "1,000+ WebSocket connections",
            format!("{:.0} open at once", f("/ws/peak_open")),
            f("/ws/peak_open") >= 1000.0,
        ),
        (
            "WebSocket message latency < 100 ms (p95)",
            format!(
                "{:.1} ms (p50 {:.1}, p99 {:.1})",
                f("/ws/p95_ms"),
                f("/ws/p50_ms"),
                f("/ws/p99_ms")
            ),
            f("/ws/p95_ms") < 100.0,
        ),
        (
            "90%+ of generations served locally",
            format!(
                "{:.1}% of {:.0}",
                f("/generations/local_share") * 100.0,
                f("/generations/total")
            ),
            f("/generations/local_share") >= 0.9,
        ),
        (
            "workflows run meanwhile, all finish",
            format!(
                "{:.0} of {:.0} completed",
                f("/workflows/completed"),
                f("/workflows/started")
            ),
            f("/workflows/started") > 0.0 && f("/workflows/completed") == f("/workflows/started"),
        ),
        (
            "nothing acknowledged is lost",
            format!(
                "{:.0} messages acked, {:.0} deliveries missing; {:.0} API requests failed",
                f("/ws/messages_acked"),
                f("/ws/missing"),
                f("/http/failed")
            ),
            f("/ws/missing") == 0.0 && f("/http/failed") == 0.0,
        ),
    ];
    let mut md = format!("# {title}\n\n");
    for n in notes {
        let _ = writeln!(md, "{n}  ");
    }
    md.push_str("\n| claim | measured | met |\n|---|---|---|\n");
    for (claim, measured, met) in &claims {
        let _ = writeln!(
            md,
            "| {claim} | {measured} | {} |",
            if *met { "yes" } else { "**no**" }
        );
    }
    md.push_str("\n| request | count | failed | retried | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|---|---|---|\n");
    let mut kinds: Vec<&str> = http.iter().map(|s| s.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for k in kinds {
        let of: Vec<&Sample> = http.iter().filter(|s| s.kind == k).collect();
        let lat: Vec<Duration> = of.iter().map(|s| s.latency).collect();
        let ms = |q| quantile(&lat, q).as_secs_f64() * 1e3;
        let _ = writeln!(
            md,
            "| {k} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            of.len(),
            of.iter().filter(|s| !s.ok).count(),
            of.iter().filter(|s| s.tries > 1).count(),
            ms(0.5),
            ms(0.95),
            ms(0.99)
        );
    }
    let _ = write!(
        md,
        "\n![HTTP latency](http-latency.svg)\n![HTTP throughput](http-throughput.svg)\n\
         ![WebSocket latency](ws-latency.svg)\n![WebSocket deliveries](ws-throughput.svg)\n\n\
         ```json\n{}\n```\n",
        serde_json::to_string_pretty(summary)?
    );
    std::fs::write(dir.join("report.md"), md)?;
    Ok(())
}
