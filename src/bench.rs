//! `ferry bench`: llama-bench-style measurement. Each test runs `-r` times after
//! one warm-up; the table reports mean ± sample standard deviation of tokens/s.
//! Tests: `ppN` prefills N tokens into an empty cache, `tgN` generates N tokens
//! one at a time, `pgP,N` prefills P tokens then generates N (time for both).
//! With a depth D (`-d`, llama-bench's `n_depth`) every test starts with D
//! tokens already in the cache (prefilled untimed): `tg64 @ d8192` is decode
//! speed at an 8K context.

use std::time::Instant;

use serde::Serialize;

use crate::backend::Backend;
use crate::engine::Session;
use crate::model::Model;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    Prompt(usize),
    Generate(usize),
    PromptGenerate(usize, usize),
}

impl Test {
    pub fn name(&self) -> String {
        match self {
            Test::Prompt(p) => format!("pp{p}"),
            Test::Generate(n) => format!("tg{n}"),
            Test::PromptGenerate(p, n) => format!("pp{p}+tg{n}"),
        }
    }
    fn tokens(&self) -> usize {
        match *self {
            Test::Prompt(p) => p,
            Test::Generate(n) => n,
            Test::PromptGenerate(p, n) => p + n,
        }
    }
}

/// What every result of one model and setting shares (llama-bench's leading
/// columns, plus ferry's mode and VRAM budget).
#[derive(Debug, Clone, Serialize)]
pub struct ResultMeta {
    pub model_filename: String,
    pub model_type: String,
    pub model_size: u64,
    pub model_n_params: u64,
    /// llama-bench's name for this column.
    pub backends: String,
    pub n_threads: usize,
    pub n_batch: usize,
    pub n_ubatch: usize,
    /// How the model ran: `cpu`, `resident` (all on the GPU), or within a VRAM
    /// budget `stream`, `sync` or `static` (see `ferry bench --help`).
    pub mode: String,
    /// The VRAM budget, bytes (budgeted runs only).
    pub vram_budget: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    #[serde(flatten)]
    pub meta: ResultMeta,
    pub n_prompt: usize,
    pub n_gen: usize,
    /// Tokens in the cache before the test (prefilled, not timed).
    pub n_depth: usize,
    pub test: String,
    pub samples_ns: Vec<u64>,
    pub avg_ns: u64,
    pub stddev_ns: u64,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    /// Peak device memory the ledger saw during the test, bytes.
    pub vram_peak: Option<u64>,
    /// Streamed prefill: the fraction of the shorter of copy and compute time
    /// hidden under the other (1 = fully overlapped), from CUDA event timings.
    pub overlap: Option<f64>,
}

impl BenchResult {
    /// A result from the times of the repetitions (the warm-up excluded).
    pub fn from_samples(meta: &ResultMeta, test: Test, samples: Vec<u64>) -> Self {
        let n = samples.len().max(1) as f64;
        let avg_ns = samples.iter().sum::<u64>() as f64 / n;
        let tps: Vec<f64> = samples
            .iter()
            .map(|&ns| test.tokens() as f64 * 1e9 / ns.max(1) as f64)
            .collect();
        let avg_ts = tps.iter().sum::<f64>() / n;
        let sd = |v: &[f64], mean: f64| {
            if v.len() < 2 {
                0.0
            } else {
                (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
            }
        };
        let ns_f: Vec<f64> = samples.iter().map(|&s| s as f64).collect();
        let (n_prompt, n_gen) = match test {
            Test::Prompt(p) => (p, 0),
            Test::Generate(n) => (0, n),
            Test::PromptGenerate(p, n) => (p, n),
        };
        BenchResult {
            meta: meta.clone(),
            n_prompt,
            n_gen,
            n_depth: 0,
            test: test.name(),
            avg_ns: avg_ns as u64,
            stddev_ns: sd(&ns_f, avg_ns) as u64,
            samples_ns: samples,
            avg_ts,
            stddev_ts: sd(&tps, avg_ts),
            vram_peak: None,
            overlap: None,
        }
    }
}

/// Deterministic pseudo-random token ids in `[n_vocab/20, n_vocab/2)`, away
/// from special tokens.
fn tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed | 1;
    let (lo, hi) = (n_vocab / 20, n_vocab / 2);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (lo + (x as usize) % (hi - lo).max(1)) as u32
        })
        .collect()
}

/// Time one run of `test`; returns nanoseconds.
fn run_once<B: Backend + Sync>(
    backend: &B,
    model: &Model<B>,
    test: Test,
    ubatch: usize,
    depth: usize,
) -> anyhow::Result<u64>
where
    B::Kv: Send,
    B::Act: Send,
    B::Weight: Sync,
    B::Vector: Sync,
{
    let n_vocab = model.config.n_vocab;
    let ctx = depth + test.tokens() + 1;
    let mut s = Session::new(backend, model, ctx.max(16), 1)?;
    s.ubatch = ubatch;
    if depth > 0 {
        let past = tokens(depth, n_vocab, 5);
        backend.run(|| s.prefill(0, &past))?;
        backend.check()?;
    }
    let t = match test {
        Test::Prompt(p) => {
            let toks = tokens(p, n_vocab, 7);
            let t0 = Instant::now();
            backend.run(|| s.prefill(0, &toks))?;
            backend.check()?;
            t0.elapsed()
        }
        Test::Generate(n) => {
            let toks = tokens(n, n_vocab, 11);
            backend.run(|| -> anyhow::Result<std::time::Duration> {
                let t0 = Instant::now();
                for &t in &toks {
                    s.decode(&[0], &[t])?;
                }
                backend.check()?;
                Ok(t0.elapsed())
            })?
        }
        Test::PromptGenerate(p, n) => {
            let toks = tokens(p + n, n_vocab, 13);
            backend.run(|| -> anyhow::Result<std::time::Duration> {
                let t0 = Instant::now();
                s.prefill(0, &toks[..p])?;
                for &t in &toks[p..] {
                    s.decode(&[0], &[t])?;
                }
                backend.check()?;
                Ok(t0.elapsed())
            })?
        }
    };
    Ok(t.as_nanos() as u64)
}

pub struct BenchSetup<'a, B: Backend> {
    pub backend: &'a B,
    pub model: &'a Model<B>,
    pub meta: ResultMeta,
    pub repetitions: usize,
    /// Tokens in the cache before each test (untimed).
    pub depth: usize,
}

pub fn run_test<B: Backend + Sync>(setup: &BenchSetup<B>, test: Test) -> anyhow::Result<BenchResult>
where
    B::Kv: Send,
    B::Act: Send,
    B::Weight: Sync,
    B::Vector: Sync,
{
    let ubatch = setup.meta.n_ubatch;
    let depth = setup.depth;
    run_once(setup.backend, setup.model, test, ubatch, depth)?; // warm-up
    let mut samples = Vec::with_capacity(setup.repetitions);
    for _ in 0..setup.repetitions.max(1) {
        samples.push(run_once(setup.backend, setup.model, test, ubatch, depth)?);
    }
    let mut r = BenchResult::from_samples(&setup.meta, test, samples);
    if depth > 0 {
        r.n_depth = depth;
        r.test = format!("{} @ d{depth}", r.test);
    }
    Ok(r)
}

fn human_size(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB")
    } else {
        format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.2} M", n as f64 / 1e6)
    }
}

/// A llama-bench-style markdown table, plus `mode` and `vram` (budget, and the
/// peak when measured) and, when any row has it, the overlap efficiency.
pub fn markdown(results: &[BenchResult]) -> String {
    let overlap = results.iter().any(|r| r.overlap.is_some());
    let mut s = String::new();
    s.push_str("| model | size | params | backend | threads | n_ubatch | mode | vram |");
    s.push_str(if overlap { " overlap |" } else { "" });
    s.push_str(" test | t/s |\n");
    s.push_str("| --- | ---: | ---: | --- | ---: | ---: | --- | ---: |");
    s.push_str(if overlap { " ---: |" } else { "" });
    s.push_str(" ---: | ---: |\n");
    for r in results {
        let m = &r.meta;
        let vram = match (m.vram_budget, r.vram_peak) {
            (Some(b), Some(p)) => format!("{} (peak {})", human_size(b), human_size(p)),
            (Some(b), None) => human_size(b),
            (None, _) => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            m.model_type,
            human_size(m.model_size),
            human_params(m.model_n_params),
            m.backends,
            m.n_threads,
            m.n_ubatch,
            m.mode,
            vram,
        ));
        if overlap {
            match r.overlap {
                Some(o) => s.push_str(&format!(" {:.0} % |", 100.0 * o)),
                None => s.push_str(" |"),
            }
        }
        s.push_str(&format!(
            " {} | {:.2} ± {:.2} |\n",
            r.test, r.avg_ts, r.stddev_ts
        ));
    }
    s
}
