//! Timelines of a forward pass: one span per layer on the compute stream and
//! per copy on the copy stream, written as a Chrome/Perfetto trace
//! (`chrome://tracing`, ui.perfetto.dev) and drawn as an SVG picture.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// One span of work: `lane` is "compute" or "copy".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub name: String,
    pub lane: String,
    /// Milliseconds from the start of the pass.
    pub start_ms: f64,
    pub dur_ms: f64,
    /// Bytes moved (copies) or 0.
    pub bytes: u64,
}

/// How much of the shorter of the two streams' busy time ran while the other
/// was busy too: 1 = copies fully hidden under compute (or the reverse), 0 =
/// one after the other. Each stream runs one span at a time, so the time both
/// were busy is their busy times minus the pass's length.
pub fn overlap(spans: &[Span]) -> Option<f64> {
    let busy = |lane: &str| -> f64 {
        spans
            .iter()
            .filter(|s| s.lane == lane)
            .map(|s| s.dur_ms)
            .sum()
    };
    let (copy, compute) = (busy("copy"), busy("compute"));
    let start = spans.iter().map(|s| s.start_ms).fold(f64::MAX, f64::min);
    let end = spans
        .iter()
        .map(|s| s.start_ms + s.dur_ms)
        .fold(f64::MIN, f64::max);
    let shorter = copy.min(compute);
    if spans.is_empty() || shorter <= 0.0 {
        return None;
    }
    Some(((copy + compute - (end - start)) / shorter).clamp(0.0, 1.0))
}

/// The Chrome trace event format: complete events (`ph: "X"`) in microseconds.
pub fn to_chrome_json(spans: &[Span]) -> String {
    let events: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "cat": s.lane,
                "ph": "X",
                "ts": s.start_ms * 1e3,
                "dur": s.dur_ms * 1e3,
                "pid": 1,
                "tid": if s.lane == "copy" { 2 } else { 1 },
                "args": {"bytes": s.bytes},
            })
        })
        .chain([
            serde_json::json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "compute stream"}}),
            serde_json::json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "copy stream (host to device)"}}),
        ])
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "traceEvents": events }))
        .expect("JSON values serialize")
}

/// Read back the spans of a trace written by `to_chrome_json`.
pub fn from_chrome_json(text: &str) -> Result<Vec<Span>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a JSON trace: {e}"))?;
    let events = v["traceEvents"]
        .as_array()
        .ok_or("no traceEvents array: not a Chrome trace")?;
    Ok(events
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| Span {
            name: e["name"].as_str().unwrap_or("").to_string(),
            lane: e["cat"].as_str().unwrap_or("compute").to_string(),
            start_ms: e["ts"].as_f64().unwrap_or(0.0) / 1e3,
            dur_ms: e["dur"].as_f64().unwrap_or(0.0) / 1e3,
            bytes: e["args"]["bytes"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// A timeline picture: one row per lane, a box per span (streamed layers and
/// copies in one colour, resident layers in another), a time axis in ms, and
/// the busy fraction of each lane.
pub fn to_svg(spans: &[Span], title: &str) -> String {
    let end = spans
        .iter()
        .map(|s| s.start_ms + s.dur_ms)
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let (w, left, right) = (1200.0, 170.0, 20.0);
    let pw = w - left - right;
    let lanes = ["copy", "compute"];
    let row_h = 46.0;
    let top = 50.0;
    let h = top + row_h * lanes.len() as f64 + 70.0;
    let x = |ms: f64| left + pw * ms / end;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    for (r, lane) in lanes.iter().enumerate() {
        let y = top + row_h * r as f64;
        let busy: f64 = spans
            .iter()
            .filter(|s| s.lane == *lane)
            .map(|s| s.dur_ms)
            .sum();
        let _ = writeln!(
            out,
            r#"<text x="8" y="{:.1}">{} ({:.0} % busy)</text>"#,
            y + row_h / 2.0 + 4.0,
            if *lane == "copy" {
                "copy stream"
            } else {
                "compute stream"
            },
            100.0 * busy / end
        );
        let _ = writeln!(
            out,
            r##"<rect x="{left}" y="{y:.1}" width="{pw}" height="{:.1}" fill="#f4f4f4"/>"##,
            row_h - 8.0
        );
        for s in spans.iter().filter(|s| s.lane == *lane) {
            let colour = if s.lane == "copy" {
                "#ff7f0e"
            } else if s.name.contains("streamed") {
                "#1f77b4"
            } else {
                "#2ca02c"
            };
            let _ = writeln!(
                out,
                r#"<rect x="{:.2}" y="{y:.1}" width="{:.2}" height="{:.1}" fill="{colour}" stroke="white" stroke-width="0.3"><title>{} {:.3} ms</title></rect>"#,
                x(s.start_ms),
                (x(s.start_ms + s.dur_ms) - x(s.start_ms)).max(0.3),
                row_h - 8.0,
                escape(&s.name),
                s.dur_ms
            );
        }
    }
    let axis_y = top + row_h * lanes.len() as f64 + 4.0;
    let step = nice_step(end / 10.0);
    let mut t = 0.0;
    while t <= end + 1e-9 {
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="#999"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4}</text>"##,
            x(t),
            axis_y,
            axis_y + 6.0,
            axis_y + 20.0,
            format_ms(t)
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{:.1}" text-anchor="middle">time (ms) — green: resident layer, blue: streamed layer, orange: copy of a layer into a slot</text>"##,
        left + pw / 2.0,
        axis_y + 42.0
    );
    out.push_str("</svg>\n");
    out
}

fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * p)
}

fn format_ms(t: f64) -> String {
    if t >= 10.0 {
        format!("{t:.0}")
    } else {
        format!("{t:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans() -> Vec<Span> {
        vec![
            Span {
                name: "copy layer 1".into(),
                lane: "copy".into(),
                start_ms: 0.0,
                dur_ms: 5.0,
                bytes: 1 << 28,
            },
            Span {
                name: "layer 0 (resident)".into(),
                lane: "compute".into(),
                start_ms: 0.1,
                dur_ms: 4.0,
                bytes: 0,
            },
            Span {
                name: "layer 1 (streamed)".into(),
                lane: "compute".into(),
                start_ms: 5.0,
                dur_ms: 4.0,
                bytes: 0,
            },
        ]
    }

    #[test]
    fn overlap_measures_hidden_copy_time() {
        // Copy 0-5 ms; compute 0.1-4.1 and 5-9 (8 ms, the longer). The pass
        // lasts 9 ms, so both streams were busy for 5 + 8 - 9 = 4 of the
        // copy's 5 ms.
        let o = overlap(&spans()).unwrap();
        assert!((o - (5.0 + 8.0 - 9.0) / 5.0).abs() < 1e-9, "{o}");
        // One after the other: no overlap; no copies: nothing to say.
        let serial = vec![
            Span {
                name: "copy".into(),
                lane: "copy".into(),
                start_ms: 0.0,
                dur_ms: 2.0,
                bytes: 1,
            },
            Span {
                name: "layer".into(),
                lane: "compute".into(),
                start_ms: 2.0,
                dur_ms: 2.0,
                bytes: 0,
            },
        ];
        assert_eq!(overlap(&serial), Some(0.0));
        assert_eq!(overlap(&serial[1..]), None);
    }

    #[test]
    fn chrome_trace_round_trips() {
        let json = to_chrome_json(&spans());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["traceEvents"].as_array().unwrap().len(), 5);
        let back = from_chrome_json(&json).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in back.iter().zip(spans()) {
            assert_eq!(
                (a.name.as_str(), a.lane.as_str(), a.bytes),
                (b.name.as_str(), b.lane.as_str(), b.bytes)
            );
            assert!((a.start_ms - b.start_ms).abs() < 1e-9 && (a.dur_ms - b.dur_ms).abs() < 1e-9);
        }
        assert!(from_chrome_json("[1, 2]").is_err());
    }

    #[test]
    fn svg_draws_every_span_and_the_busy_fractions() {
        let svg = to_svg(&spans(), "pp512 <test>");
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("pp512 &lt;test&gt;"));
        // Copy busy 5 of 9 ms, compute 8 of 9 ms.
        assert!(svg.contains("copy stream (56 % busy)"), "{svg}");
        assert!(svg.contains("compute stream (89 % busy)"));
    }
}
