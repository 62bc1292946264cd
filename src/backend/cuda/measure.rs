//! Timing the device for `ferry calibrate`: copies, device memory, GEMM,
//! decode GEMVs and prompt attention, with the kernels ferry runs.

use std::sync::Arc;

use super::*;

impl CudaBackend {
    /// Speed of prompt attention on tensor cores: one causal prompt of `n`
    /// tokens (random queries, keys and values), best of `reps` kernel runs.
    /// Returns (milliseconds, effective TFLOP/s), counting 4 · head dim FLOPs
    /// per (query, visible key, head): the two products, no masked work.
    pub fn measure_attention(
        &self,
        (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
        n: usize,
        reps: usize,
    ) -> Result<(f64, f64), BackendError> {
        let kv_width = n_kv_heads * head_dim;
        let mut random = xorshift_values(0x2545_f491_4f6c_dd1d, 1.0);
        let to_f16 = |x: Vec<f32>| -> Vec<f16> { x.into_iter().map(f16::from_f32).collect() };
        let kv = CudaKv {
            n_ctx: n,
            n_seq: 1,
            width: kv_width,
            k: self.upload(&to_f16(random(n * kv_width)))?,
            v: self.upload(&to_f16(random(n * kv_width)))?,
        };
        let q = self.act_from_host(n, n_heads * head_dim, &random(n * n_heads * head_dim))?;
        let mut out = self.act(n, n_heads * head_dim)?;
        let heads = AttnSpec::full(n_heads, n_kv_heads, head_dim);
        let mut best = f64::MAX;
        for _ in 0..reps.max(1) + 1 {
            self.stream.synchronize().map_err(err)?;
            let t0 = std::time::Instant::now();
            // SAFETY: the cache holds `n` rows, the prompt's positions 0 .. n.
            unsafe { self.launch_flash(&heads, &q, &kv, 0, 0, &mut out) }?;
            self.stream.synchronize().map_err(err)?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let flops = 4.0 * (head_dim * n_heads) as f64 * (n as f64 * (n as f64 + 1.0) / 2.0);
        Ok((best * 1e3, flops / best / 1e12))
    }

    /// Median host-to-device bandwidth in GB/s over `reps` copies of `bytes`:
    /// (from pinned memory, from pageable memory).
    pub fn measure_h2d(&self, bytes: usize, reps: usize) -> Result<(f64, f64), BackendError> {
        let mut dev = self.zeros::<u8>(bytes)?;
        // SAFETY: a plain page-locked allocation; flags 0 keeps it cacheable.
        let mut pinned =
            unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }.map_err(err)?;
        pinned.as_mut_slice().map_err(err)?.fill(1);
        let pageable = vec![1u8; bytes];
        let mut time = |pin: bool| -> Result<f64, BackendError> {
            let mut t = Vec::new();
            for _ in 0..reps.max(1) {
                self.stream.synchronize().map_err(err)?;
                let t0 = std::time::Instant::now();
                if pin {
                    self.stream.memcpy_htod(&pinned, &mut dev).map_err(err)?;
                } else {
                    self.stream
                        .memcpy_htod(&pageable[..], &mut dev)
                        .map_err(err)?;
                }
                self.stream.synchronize().map_err(err)?;
                t.push(t0.elapsed().as_secs_f64());
            }
            t.sort_by(f64::total_cmp);
            Ok(bytes as f64 / t[t.len() / 2] / 1e9)
        };
        Ok((time(true)?, time(false)?))
    }

    /// The card's rate for the GEMM ferry's prefill runs (cuBLAS, f16 in,
    /// f32 accumulate and out) on an `m × k` by `k × k` product, TFLOP/s (best
    /// of `reps`): the GEMM alone, not the conversions before it.
    pub fn measure_gemm_tflops(
        &self,
        m: usize,
        k: usize,
        reps: usize,
    ) -> Result<f64, BackendError> {
        // Random operands: zeros would draw less power and run at higher clocks.
        let mut values = xorshift_values(0x9e37_79b9_7f4a_7c15, 1.0);
        let mut random =
            |len: usize| -> Vec<f16> { values(len).into_iter().map(f16::from_f32).collect() };
        let w = self.upload(&random(k * k))?;
        let x = self.upload(&random(m * k))?;
        let mut out = self.zeros::<f32>(m * k)?;
        let mut best = f64::MAX;
        for _ in 0..reps.max(1) + 1 {
            self.stream.synchronize().map_err(err)?;
            let t0 = std::time::Instant::now();
            self.gemm_f16(&w, &x, &mut out, (k, m, k), false)?;
            self.stream.synchronize().map_err(err)?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        Ok(2.0 * (m * k * k) as f64 / best / 1e12)
    }

    /// Weight bytes per second of ferry's decode GEMVs, GB/s: one token
    /// through each of `weights` in turn (`LAUNCHES` products per timing, so
    /// the gaps between launches count, as in a decode step), median of
    /// `reps`. The activations are random, as a step's are.
    pub fn measure_gemv_gbps(
        &self,
        weights: &[(crate::gguf::SharedBytes, TensorRef)],
        reps: usize,
    ) -> Result<f64, BackendError> {
        const LAUNCHES: usize = 16;
        let mut values = xorshift_values(0x2545_f491_4f6c_dd1d, 1.0);
        let mut ops = Vec::new();
        for (bytes, t) in weights {
            let buf = Arc::new(self.upload(bytes.as_slice())?);
            let w = CudaWeight::in_buffer(&self.stream, buf, 0, t)?;
            let x = CudaAct {
                n: 1,
                width: w.cols,
                data: self.upload(&values(w.cols))?,
            };
            let out = self.act(1, w.rows)?;
            ops.push((w, x, out, t.n_bytes));
        }
        if ops.is_empty() {
            return Err(BackendError::Invalid(
                "measure_gemv_gbps: no weights".into(),
            ));
        }
        let mut t = Vec::new();
        let mut bytes = 0;
        for rep in 0..reps.max(1) + 1 {
            self.check()?;
            let t0 = std::time::Instant::now();
            bytes = 0;
            let count = ops.len();
            for i in 0..LAUNCHES {
                let (w, x, out, n) = &mut ops[i % count];
                self.matmul(x, w, out);
                bytes += *n;
            }
            self.check()?;
            if rep > 0 {
                t.push(t0.elapsed().as_secs_f64());
            }
        }
        t.sort_by(f64::total_cmp);
        Ok(bytes as f64 / t[t.len() / 2] / 1e9)
    }

    /// Device memory bandwidth: a device-to-device copy reads and writes every
    /// byte, so GB/s = 2 · bytes / time (median of `reps`).
    pub fn measure_hbm(&self, bytes: usize, reps: usize) -> Result<f64, BackendError> {
        let src = self.zeros::<u8>(bytes)?;
        let mut dst = self.zeros::<u8>(bytes)?;
        let mut t = Vec::new();
        for _ in 0..reps.max(1) + 1 {
            self.stream.synchronize().map_err(err)?;
            let t0 = std::time::Instant::now();
            self.stream.memcpy_dtod(&src, &mut dst).map_err(err)?;
            self.stream.synchronize().map_err(err)?;
            t.push(t0.elapsed().as_secs_f64());
        }
        t.remove(0);
        t.sort_by(f64::total_cmp);
        Ok(2.0 * bytes as f64 / t[t.len() / 2] / 1e9)
    }
}
