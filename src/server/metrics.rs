//! Counters the server exposes on `/metrics` in Prometheus' text format.
//! Everything is an atomic so that HTTP handlers and the engine thread update
//! them without locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    /// Requests by outcome.
    pub requests_ok: AtomicU64,
    pub requests_client_error: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub requests_failed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Busy time of the engine, in microseconds.
    pub prefill_micros: AtomicU64,
    pub decode_micros: AtomicU64,
    /// Decode steps and the sequences they carried (mean batch = ratio).
    pub decode_steps: AtomicU64,
    pub decode_sequences: AtomicU64,
    /// Gauges written by the engine thread.
    pub queue_length: AtomicU64,
    pub active_sequences: AtomicU64,
    /// Bytes of weights and KV cache the engine holds on its device.
    pub weight_bytes: AtomicU64,
    pub kv_cache_bytes: AtomicU64,
    /// Device memory in use, when the device reports it (GPU).
    pub device_memory_used: AtomicU64,
    /// Where the engine's layers are and its last prefill's timeline
    /// (written by the engine after each prefill).
    pub status: std::sync::Mutex<crate::engine::EngineStatus>,
}

/// Resident set size of this process (Linux), for watching memory growth.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

impl Metrics {
    pub fn add(counter: &AtomicU64, v: u64) {
        counter.fetch_add(v, Relaxed);
    }

    /// The figures the web page shows, as JSON (`/v1/ferry/status`).
    pub fn snapshot(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let rate = |tokens: u64, micros: u64| {
            if micros > 0 {
                tokens as f64 / (micros as f64 / 1e6)
            } else {
                0.0
            }
        };
        serde_json::json!({
            "requests_ok": get(&self.requests_ok),
            "prompt_tokens": get(&self.prompt_tokens),
            "generated_tokens": get(&self.generated_tokens),
            "prefill_tokens_per_second": rate(get(&self.prompt_tokens), get(&self.prefill_micros)),
            "decode_tokens_per_second": rate(get(&self.decode_sequences), get(&self.decode_micros)),
            "queue_length": get(&self.queue_length),
            "active_sequences": get(&self.active_sequences),
            "weight_bytes": get(&self.weight_bytes),
            "kv_cache_bytes": get(&self.kv_cache_bytes),
            "device_memory_used_bytes": get(&self.device_memory_used),
            "resident_memory_bytes": resident_bytes().unwrap_or(0),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let get = |c: &AtomicU64| c.load(Relaxed) as f64;
        metric(
            "ferry_requests_total",
            "counter",
            "Completion requests by outcome.",
            &[
                ("{outcome=\"ok\"}", get(&self.requests_ok)),
                (
                    "{outcome=\"client_error\"}",
                    get(&self.requests_client_error),
                ),
                ("{outcome=\"rejected\"}", get(&self.requests_rejected)),
                ("{outcome=\"cancelled\"}", get(&self.requests_cancelled)),
                ("{outcome=\"failed\"}", get(&self.requests_failed)),
            ],
        );
        metric(
            "ferry_prompt_tokens_total",
            "counter",
            "Prompt tokens prefilled.",
            &[("", get(&self.prompt_tokens))],
        );
        metric(
            "ferry_generated_tokens_total",
            "counter",
            "Tokens generated.",
            &[("", get(&self.generated_tokens))],
        );
        let prefill_s = get(&self.prefill_micros) / 1e6;
        let decode_s = get(&self.decode_micros) / 1e6;
        metric(
            "ferry_prefill_seconds_total",
            "counter",
            "Time the engine spent in prefill.",
            &[("", prefill_s)],
        );
        metric(
            "ferry_decode_seconds_total",
            "counter",
            "Time the engine spent in decode steps.",
            &[("", decode_s)],
        );
        let rate = |tokens: f64, secs: f64| if secs > 0.0 { tokens / secs } else { 0.0 };
        metric(
            "ferry_prefill_tokens_per_second",
            "gauge",
            "Prompt tokens per second of prefill time, since start.",
            &[("", rate(get(&self.prompt_tokens), prefill_s))],
        );
        // Each decoded sequence-step yields one token; the first token of each
        // request comes from its prefill.
        metric(
            "ferry_decode_tokens_per_second",
            "gauge",
            "Tokens per second of decode time (all sequences together), since start.",
            &[("", rate(get(&self.decode_sequences), decode_s))],
        );
        let steps = get(&self.decode_steps);
        metric(
            "ferry_decode_steps_total",
            "counter",
            "Decode steps (one batched forward pass each).",
            &[("", steps)],
        );
        metric(
            "ferry_decode_batch_mean",
            "gauge",
            "Mean number of sequences per decode step.",
            &[(
                "",
                if steps > 0.0 {
                    get(&self.decode_sequences) / steps
                } else {
                    0.0
                },
            )],
        );
        metric(
            "ferry_queue_length",
            "gauge",
            "Requests waiting for a free sequence slot.",
            &[("", get(&self.queue_length))],
        );
        metric(
            "ferry_active_sequences",
            "gauge",
            "Sequences being prefilled or decoded.",
            &[("", get(&self.active_sequences))],
        );
        metric(
            "ferry_weight_bytes",
            "gauge",
            "Bytes of model weights the engine holds.",
            &[("", get(&self.weight_bytes))],
        );
        metric(
            "ferry_kv_cache_bytes",
            "gauge",
            "Bytes of KV cache for all sequence slots.",
            &[("", get(&self.kv_cache_bytes))],
        );
        metric(
            "ferry_device_memory_used_bytes",
            "gauge",
            "Device memory in use (0 on the CPU).",
            &[("", get(&self.device_memory_used))],
        );
        metric(
            "ferry_resident_memory_bytes",
            "gauge",
            "Resident set size of the server process.",
            &[("", resident_bytes().unwrap_or(0) as f64)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.prompt_tokens, 100);
        Metrics::add(&m.prefill_micros, 500_000);
        let text = m.render();
        assert!(text.contains("# TYPE ferry_prompt_tokens_total counter\n"));
        assert!(text.contains("ferry_prompt_tokens_total 100\n"));
        assert!(text.contains("ferry_prefill_tokens_per_second 200\n"));
        assert!(text.contains("ferry_requests_total{outcome=\"ok\"} 0\n"));
        // Every sample line is `name[labels] value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("ferry_"), "{line}");
            value.parse::<f64>().unwrap();
        }
    }
}
