//! The CPU backend: multi-threaded, SIMD quantized dot products, f16 KV cache.
//!
//! Work is split into many small tasks on a rayon pool (work stealing), so a
//! slow or busy core never sets the pace for the others.

mod attention;
mod gemm;
mod matmul;
pub mod reference_math;
pub mod simd;

use half::f16;
use rayon::prelude::*;

use super::{Backend, BackendError, Batch};
use crate::arch::{AttnSpec, Config, RopeKind, RopeParams, TensorRef};
use crate::gguf::Gguf;
use crate::quant::{self, GgmlType};

pub use matmul::{CpuWeight, matmul, matmul_with};

/// Row-major `[n, width]` f32 activations in host memory.
#[derive(Debug, Clone)]
pub struct CpuAct {
    pub n: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl CpuAct {
    pub fn zeros(n: usize, width: usize) -> Self {
        CpuAct {
            n,
            width,
            data: vec![0.0; n * width],
        }
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.width..(i + 1) * self.width]
    }
}

/// One layer's KV cache: f16 keys and values, `[seq][pos][kv_width]`.
pub struct CpuKv {
    pub n_ctx: usize,
    pub n_seq: usize,
    pub width: usize,
    pub k: Vec<f16>,
    pub v: Vec<f16>,
}

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    /// Batches of at most this many tokens use the per-token dot product;
    /// larger ones the GEMM path (see `with_batch_invariance`).
    dot_max_tokens: usize,
}

/// Physical cores (hyper-threads share a core's vector units, so counting them
/// rarely helps inference); falls back to the logical count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[cfg(target_os = "linux")]
    if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
        let mut cores = std::collections::HashSet::new();
        let (mut phys, mut core) = (None, None);
        for line in info.lines() {
            if let Some(v) = line.strip_prefix("physical id") {
                phys = v.trim_start_matches([' ', '\t', ':']).parse::<u32>().ok();
            } else if let Some(v) = line.strip_prefix("core id") {
                core = v.trim_start_matches([' ', '\t', ':']).parse::<u32>().ok();
            } else if line.is_empty() {
                if let (Some(p), Some(c)) = (phys, core) {
                    cores.insert((p, c));
                }
                phys = None;
                core = None;
            }
        }
        if !cores.is_empty() {
            return cores.len().min(logical);
        }
    }
    logical
}

impl CpuBackend {
    /// A backend with `threads` workers (0 = one per physical core).
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            physical_cores()
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ferry-cpu-{i}"))
            .build()
            .expect("creating the CPU thread pool");
        CpuBackend {
            pool,
            threads,
            dot_max_tokens: matmul::DEFAULT_DOT_MAX_TOKENS,
        }
    }

    /// Make every batch of up to `max_batch` tokens take the per-token dot
    /// product path. The GEMM path sums the k-quant block scales in a different
    /// order, so without this a sequence's logits would depend on how many other
    /// sequences share its decode step; a server that batches parallel requests
    /// sets this to its number of parallel sequences so that a greedy request
    /// gives the same text alone or in company.
    pub fn with_batch_invariance(mut self, max_batch: usize) -> Self {
        self.dot_max_tokens = self.dot_max_tokens.max(max_batch);
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Host memory read bandwidth with this backend's threads, GB/s (median of
    /// `reps` passes summing a `bytes` buffer): the ceiling of a memory-bound
    /// CPU matrix-vector product.
    pub fn measure_read_gbps(&self, bytes: usize, reps: usize) -> f64 {
        use rayon::prelude::*;
        let words: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
        let mut t = Vec::new();
        for _ in 0..reps.max(1) + 1 {
            let t0 = std::time::Instant::now();
            let sum: u64 = self.pool.install(|| {
                words
                    .par_chunks(1 << 16)
                    .map(|c| c.iter().fold(0u64, |a, &w| a.wrapping_add(w)))
                    .reduce(|| 0, u64::wrapping_add)
            });
            std::hint::black_box(sum);
            t.push(t0.elapsed().as_secs_f64());
        }
        t.remove(0);
        t.sort_by(f64::total_cmp);
        (words.len() * 8) as f64 / t[t.len() / 2] / 1e9
    }
}

fn float_vector(g: &Gguf, t: &TensorRef) -> Result<Vec<f32>, BackendError> {
    let bytes = g.files[t.file_index].bytes();
    let data = &bytes[t.file_offset as usize..(t.file_offset + t.n_bytes) as usize];
    quant::dequantize_to_vec(t.ty, data)
        .map_err(|e| BackendError::Invalid(format!("{}: {e}", t.name)))
}

impl Backend for CpuBackend {
    type Weight = CpuWeight;
    type Vector = Vec<f32>;
    type Act = CpuAct;
    type Kv = CpuKv;

    fn name(&self) -> String {
        format!("CPU ({} threads, {})", self.threads, simd::describe())
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    fn load_weight(&self, g: &Gguf, t: &TensorRef) -> Result<CpuWeight, BackendError> {
        CpuWeight::new(g.files[t.file_index].bytes_handle(), t)
    }

    fn load_vector(&self, g: &Gguf, t: &TensorRef) -> Result<Vec<f32>, BackendError> {
        float_vector(g, t)
    }

    fn memory_available(&self) -> Option<u64> {
        host_memory_available()
    }

    fn act(&self, n: usize, width: usize) -> Result<CpuAct, BackendError> {
        Ok(CpuAct::zeros(n, width))
    }

    fn kv_cache(&self, cfg: &Config, n_ctx: usize, n_seq: usize) -> Result<CpuKv, BackendError> {
        let width = cfg.kv_width();
        Ok(CpuKv {
            n_ctx,
            n_seq,
            width,
            k: vec![f16::ZERO; n_seq * n_ctx * width],
            v: vec![f16::ZERO; n_seq * n_ctx * width],
        })
    }

    fn copy_kv(
        &self,
        kv: &mut CpuKv,
        from: usize,
        to: usize,
        len: usize,
    ) -> Result<(), BackendError> {
        super::check_copy_kv((kv.n_seq, kv.n_ctx), from, to, len)?;
        let row = kv.width;
        let (src, dst) = (from * kv.n_ctx * row, to * kv.n_ctx * row);
        kv.k.copy_within(src..src + len * row, dst);
        kv.v.copy_within(src..src + len * row, dst);
        Ok(())
    }

    fn embed(
        &self,
        table: &CpuWeight,
        tokens: &[u32],
        out: &mut CpuAct,
    ) -> Result<(), BackendError> {
        let width = table.cols;
        assert_eq!(out.width, width);
        for (i, &t) in tokens.iter().enumerate() {
            if t as usize >= table.rows {
                return Err(BackendError::Invalid(format!(
                    "token id {t} is outside the vocabulary of {} tokens",
                    table.rows
                )));
            }
            quant::dequantize(
                table.ty,
                table.row_bytes(t as usize),
                &mut out.data[i * width..(i + 1) * width],
            )
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    fn rms_norm(&self, x: &CpuAct, w: &Vec<f32>, eps: f32, out: &mut CpuAct) {
        let width = x.width;
        self.pool.install(|| {
            out.data
                .par_chunks_mut(width)
                .zip(x.data.par_chunks(width))
                .for_each(|(o, x)| reference_math::rms_norm_row(x, w, eps, o))
        });
    }

    fn rms_norm_heads(&self, x: &mut CpuAct, w: &Vec<f32>, head_dim: usize, eps: f32) {
        assert_eq!(x.width % head_dim, 0, "rms_norm_heads: row of whole heads");
        self.pool.install(|| {
            x.data
                .par_chunks_mut(head_dim)
                .for_each(|h| reference_math::rms_norm_in_place(h, w, eps))
        });
    }

    fn scale(&self, x: &mut CpuAct, s: f32) {
        for v in x.data.iter_mut() {
            *v *= s;
        }
    }

    fn softcap(&self, x: &mut CpuAct, c: f32) {
        // As llama.cpp's graph: scale by 1/c, tanh, scale by c.
        let inv = 1.0 / c;
        for v in x.data.iter_mut() {
            *v = (*v * inv).tanh() * c;
        }
    }

    fn matmul(&self, x: &CpuAct, w: &CpuWeight, out: &mut CpuAct) {
        self.pool
            .install(|| matmul::matmul_with(x, w, out, self.dot_max_tokens));
    }

    fn add_bias(&self, x: &mut CpuAct, b: &Vec<f32>) {
        for row in x.data.chunks_mut(x.width) {
            for (v, &b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
    }

    fn rope(
        &self,
        x: &mut CpuAct,
        n_heads: usize,
        head_dim: usize,
        rope: &RopeParams,
        positions: &[u32],
    ) {
        let width = x.width;
        assert_eq!(width, n_heads * head_dim);
        self.pool.install(|| {
            x.data
                .par_chunks_mut(width)
                .zip(positions)
                .for_each(|(row, &pos)| {
                    let half = rope.n_dims / 2;
                    let mut cos = vec![0f32; half];
                    let mut sin = vec![0f32; half];
                    rope.cos_sin(pos, &mut cos, &mut sin);
                    for head in row.chunks_mut(head_dim) {
                        for i in 0..half {
                            let (a, b) = match rope.kind {
                                RopeKind::Normal => (2 * i, 2 * i + 1),
                                RopeKind::Neox => (i, i + rope.n_dims / 2),
                            };
                            // Fused as llama.cpp's compiled C fuses them
                            // (x0·cos − x1·sin with one rounding of x0·cos).
                            let (x0, x1) = (head[a], head[b]);
                            head[a] = x0.mul_add(cos[i], -(x1 * sin[i]));
                            head[b] = x0.mul_add(sin[i], x1 * cos[i]);
                        }
                    }
                })
        });
    }

    fn attention(
        &self,
        cfg: &AttnSpec,
        q: &CpuAct,
        k: &CpuAct,
        v: &CpuAct,
        kv: &mut CpuKv,
        batch: &Batch,
        out: &mut CpuAct,
    ) -> Result<(), BackendError> {
        self.pool
            .install(|| attention::attention(cfg, q, k, v, kv, batch, out))
    }

    fn swiglu(&self, gate: &mut CpuAct, up: &CpuAct) {
        // Row by row, as llama.cpp's CPU backend computes it (its vector exp
        // on whole groups of 16): see `reference_math`.
        let width = gate.width;
        self.pool.install(|| {
            gate.data
                .par_chunks_mut(width)
                .zip(up.data.par_chunks(width))
                .for_each(|(g, u)| reference_math::swiglu_row(g, u))
        });
    }

    fn geglu(&self, gate: &mut CpuAct, up: &CpuAct) {
        let width = gate.width;
        self.pool.install(|| {
            gate.data
                .par_chunks_mut(width)
                .zip(up.data.par_chunks(width))
                .for_each(|(g, u)| reference_math::geglu_row(g, u))
        });
    }

    fn add(&self, x: &mut CpuAct, y: &CpuAct) {
        for (a, &b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
    }

    fn gather_rows(&self, x: &CpuAct, rows: &[usize]) -> Result<CpuAct, BackendError> {
        let mut out = CpuAct::zeros(rows.len(), x.width);
        for (i, &r) in rows.iter().enumerate() {
            out.data[i * x.width..(i + 1) * x.width].copy_from_slice(x.row(r));
        }
        Ok(out)
    }

    fn read_rows(&self, x: &CpuAct, rows: std::ops::Range<usize>) -> Result<CpuAct, BackendError> {
        Ok(CpuAct {
            n: rows.len(),
            width: x.width,
            data: x.data[rows.start * x.width..rows.end * x.width].to_vec(),
        })
    }

    fn write_rows(&self, dst: &mut CpuAct, first: usize, src: &CpuAct) {
        assert_eq!(dst.width, src.width);
        dst.data[first * dst.width..(first + src.n) * dst.width].copy_from_slice(&src.data);
    }

    /// llama.cpp's x86 backend runs a mixture's experts over its repacked
    /// Q4_K stacks one token at a time (its `mul_mat_id` calls the repacked
    /// GEMV per row), and every other type as its plain products: Q4_K rows
    /// take the single-token order whatever the batch, the rest `matmul`'s.
    /// Measured against llama.cpp (`tests/synth_reference.rs`): Q8_0 and
    /// Q4_K experts bit-identical, Q6_K within 1e-6.
    fn expert_matmul(&self, x: &CpuAct, w: &CpuWeight, out: &mut CpuAct) {
        let dot_max = match w.ty {
            crate::quant::GgmlType::Q4_K => usize::MAX,
            _ => self.dot_max_tokens,
        };
        self.pool
            .install(|| matmul::matmul_with(x, w, out, dot_max));
    }

    fn scatter_rows_scaled(
        &self,
        dst: &mut CpuAct,
        rows: &[usize],
        scales: &[f32],
        src: &CpuAct,
    ) -> Result<(), BackendError> {
        let w = dst.width;
        if src.width != w || rows.len() != src.n || scales.len() != src.n {
            return Err(BackendError::Invalid(format!(
                "scatter_rows_scaled: {} rows of width {} with {} targets and {} scales into width {w}",
                src.n,
                src.width,
                rows.len(),
                scales.len()
            )));
        }
        for (i, (&r, &s)) in rows.iter().zip(scales).enumerate() {
            for (d, &v) in dst.data[r * w..(r + 1) * w].iter_mut().zip(src.row(i)) {
                *d = v * s;
            }
        }
        Ok(())
    }

    fn add_rows(&self, x: &mut CpuAct, y: &CpuAct, first: usize) {
        assert_eq!(x.width, y.width, "add_rows: widths");
        let part = &y.data[first * y.width..(first + x.n) * y.width];
        for (a, &b) in x.data.iter_mut().zip(part) {
            *a += b;
        }
    }

    fn copy_rows(&self, dst: &mut CpuAct, src: &CpuAct, first: usize) {
        assert_eq!(dst.width, src.width, "copy_rows: widths");
        let n = dst.data.len();
        dst.data
            .copy_from_slice(&src.data[first * src.width..first * src.width + n]);
    }

    fn to_host(&self, x: &CpuAct) -> Result<Vec<f32>, BackendError> {
        Ok(x.data.clone())
    }
}

/// `MemAvailable` of `/proc/meminfo` (Linux), bytes.
pub fn host_memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// True when `ty` is stored as plain floats (no activation quantization).
pub fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}
