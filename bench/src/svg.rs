//! A hand-written SVG plot of a comparison: four panels (delivered msgs/s at
//! max rate, p50 and p99 latency at the fixed rate, server RSS per idle
//! session) against the number of subscribers, one series per server.

use std::fmt::Write;

use crate::compare::{CompareReport, CompareRow};

const PANEL_W: f64 = 470.0;
const PANEL_H: f64 = 300.0;
const MARGIN_L: f64 = 72.0;
const MARGIN_R: f64 = 18.0;
const MARGIN_T: f64 = 34.0;
const MARGIN_B: f64 = 46.0;

const SERIES: [(&str, &str); 3] = [
    ("stompgate", "#1f77b4"),
    ("webstomp", "#ff7f0e"),
    ("ceiling", "#2ca02c"),
];

type Metric = fn(&CompareRow) -> Option<f64>;

pub fn plot(report: &CompareReport) -> String {
    let panels: [(String, Metric); 4] = [
        ("delivered msgs/s at max rate".to_owned(), |r| {
            r.max_rate
                .as_ref()
                .map(|m| m.steady_rate.unwrap_or(m.delivered_rate))
        }),
        (
            format!("p50 latency at {} msg/s (µs)", report.fixed_rate),
            |r| {
                r.fixed_rate
                    .as_ref()
                    .filter(|f| f.latency.count > 0)
                    .map(|f| f.latency.p50_us as f64)
            },
        ),
        (
            format!("p99 latency at {} msg/s (µs)", report.fixed_rate),
            |r| {
                r.fixed_rate
                    .as_ref()
                    .filter(|f| f.latency.count > 0)
                    .map(|f| f.latency.p99_us as f64)
            },
        ),
        ("server RSS per idle session (KiB)".to_owned(), |r| {
            r.rss_per_session_kib
        }),
    ];
    let width = PANEL_W * 2.0;
    let height = PANEL_H * 2.0 + 60.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">STOMP over WebSocket fan-out: stompgate vs RabbitMQ Web-STOMP vs ceiling ({} cores, {} B bodies)</text>"#,
        width / 2.0,
        report.cores,
        report.body_bytes
    );
    // Legend.
    let mut lx = width / 2.0 - 150.0;
    for (name, color) in SERIES {
        if report.rows.iter().any(|r| r.server == name) {
            let _ = writeln!(
                out,
                r#"<rect x="{lx}" y="34" width="14" height="4" fill="{color}"/><text x="{}" y="40">{name}</text>"#,
                lx + 18.0
            );
            lx += 110.0;
        }
    }
    for (i, (title, metric)) in panels.iter().enumerate() {
        let x0 = (i % 2) as f64 * PANEL_W;
        let y0 = 50.0 + (i / 2) as f64 * PANEL_H;
        panel(&mut out, report, title, *metric, x0, y0);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, report: &CompareReport, title: &str, metric: Metric, x0: f64, y0: f64) {
    let (pl, pt) = (x0 + MARGIN_L, y0 + MARGIN_T);
    let (pw, ph) = (PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B);
    let mut xs: Vec<usize> = report.rows.iter().map(|r| r.subscribers).collect();
    xs.sort_unstable();
    xs.dedup();
    // One subscriber count: in the middle; several: a linear axis from 0.
    let x_max = xs.last().copied().unwrap_or(1).max(1) as f64 * 1.1;
    let single_x = xs.len() == 1;
    let sx = |x: f64| {
        if single_x {
            pl + pw / 2.0
        } else {
            pl + x / x_max * pw
        }
    };
    let values: Vec<f64> = report
        .rows
        .iter()
        .filter_map(metric)
        .filter(|v| v.is_finite())
        .collect();
    let y_data_max = values.iter().copied().fold(0.0f64, f64::max);
    let y_data_min = values
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    // Servers differ by orders of magnitude: a log axis when they do.
    let log = y_data_min.is_finite() && y_data_max / y_data_min > 20.0;
    let (y_lo, y_max) = if log {
        let lo = 10f64.powf(y_data_min.log10().floor());
        let hi = 10f64.powf(y_data_max.log10().ceil()).max(lo * 10.0);
        (lo, hi)
    } else {
        (0.0, nice_ceiling(y_data_max.max(1e-9) * 1.1))
    };
    let sy = |y: f64| {
        if log {
            let f = (y.max(y_lo).log10() - y_lo.log10()) / (y_max.log10() - y_lo.log10());
            pt + ph - f * ph
        } else {
            pt + ph - (y.max(0.0) / y_max) * ph
        }
    };
    let title = if log {
        format!("{title} (log scale)")
    } else {
        title.to_owned()
    };

    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
        pl + pw / 2.0,
        y0 + 22.0,
        title
    );
    let _ = writeln!(
        out,
        r##"<rect x="{pl}" y="{pt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    let ticks: Vec<f64> = if log {
        let (a, b) = (y_lo.log10().round() as i32, y_max.log10().round() as i32);
        (a..=b).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|k| y_max * k as f64 / 5.0).collect()
    };
    for v in ticks {
        let y = sy(v);
        let _ = writeln!(
            out,
            r##"<line x1="{pl}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            pl + pw,
            pl - 6.0,
            y + 4.0,
            short(v)
        );
    }
    for &x in &xs {
        let px = sx(x as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#999"/><text x="{px:.1}" y="{}" text-anchor="middle">{x}</text>"##,
            pt + ph,
            pt + ph + 5.0,
            pt + ph + 18.0
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">subscribers</text>"##,
        pl + pw / 2.0,
        pt + ph + 36.0
    );
    if y_data_max <= 0.0 {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#999">no data</text>"##,
            pl + pw / 2.0,
            pt + ph / 2.0
        );
    }
    for (name, color) in SERIES {
        let mut points: Vec<(f64, f64)> = report
            .rows
            .iter()
            .filter(|r| r.server == name)
            .filter_map(|r| {
                metric(r)
                    .filter(|v| v.is_finite())
                    .map(|v| (r.subscribers as f64, v))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if points.len() > 1 {
            let path: Vec<String> = points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                path.join(" ")
            );
        }
        for (x, y) in points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{name}, {x} subscribers: {}</title></circle>"#,
                sx(x),
                sy(y),
                short(y)
            );
        }
    }
}

/// 1, 2, 2.5, 5 x 10^k at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let exp = v.log10().floor();
    let base = 10f64.powf(exp);
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * base >= v {
            return m * base;
        }
    }
    10.0 * base
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceiling(0.9), 1.0);
        assert_eq!(nice_ceiling(1.1), 2.0);
        assert_eq!(nice_ceiling(230.0), 250.0);
        assert_eq!(nice_ceiling(4100.0), 5000.0);
        assert_eq!(short(1_250_000.0), "1.2M");
        assert_eq!(short(12_500.0), "12k");
    }

    #[test]
    fn plots_an_empty_and_a_small_report() {
        let mut report = CompareReport {
            cores: 2,
            duration_s: 1.0,
            fixed_rate: 10.0,
            body_bytes: 100,
            window: 128,
            max_age_s: 1.0,
            ceiling_coalesce: true,
            publisher_confirms: true,
            rows: Vec::new(),
            notes: Vec::new(),
            total_seconds: 1.0,
        };
        assert!(plot(&report).contains("no data"));
        report.rows.push(CompareRow {
            server: "stompgate".into(),
            subscribers: 1000,
            rss_per_session_kib: Some(12.5),
            ..CompareRow::default()
        });
        report.rows.push(CompareRow {
            server: "stompgate".into(),
            subscribers: 5000,
            rss_per_session_kib: Some(10.0),
            ..CompareRow::default()
        });
        let svg = plot(&report);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<polyline"));
    }
}
