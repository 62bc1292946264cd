//! Calibration: the rates the cost model needs, measured on this machine with
//! ferry's own kernels, and written as a machine profile that `plan`, `bench`
//! and the executor read back (`~/.cache/ferry/machine.json`).

use std::path::PathBuf;

use crate::backend::cpu::{CpuAct, CpuBackend, CpuWeight};
use crate::backend::{Backend, BackendError};
use crate::gguf::SharedBytes;
use crate::model::TensorRef;
use crate::quant::GgmlType;

use super::CpuProfile;

/// Where `ferry calibrate` writes the profile of this machine.
pub fn default_profile_path() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("ferry")
        .join("machine.json")
}

/// A `rows × cols` matrix of `ty` built from one quantized random row repeated
/// (the contents do not matter for timing; every row is its own memory).
pub fn synthetic_weight(
    ty: GgmlType,
    rows: usize,
    cols: usize,
) -> Result<(SharedBytes, TensorRef), BackendError> {
    let mut seed = 0x1234_5678_u64;
    let row: Vec<f32> = (0..cols)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let q = crate::quant::quantize(ty, &row).map_err(|e| BackendError::Invalid(e.to_string()))?;
    let mut bytes = Vec::with_capacity(q.len() * rows);
    for _ in 0..rows {
        bytes.extend_from_slice(&q);
    }
    let t = TensorRef {
        name: format!("calibration.{ty}"),
        ty,
        shape: vec![cols as u64, rows as u64],
        file_index: 0,
        file_offset: 0,
        n_bytes: bytes.len() as u64,
    };
    Ok((SharedBytes::external(Box::new(bytes)), t))
}

/// The weight types `ferry calibrate` times one by one: every type a matrix
/// of a model can have (each has its own kernels, and its own speed).
pub fn gemv_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::WEIGHT_TYPES
        .into_iter()
        .filter(|t| *t != GgmlType::F32)
}

/// ferry's one-token GEMV rate on the GPU, GB/s of weights: matrices of
/// `ty` in a 32B model's feed-forward shapes (27648 × 5120 and 5120 × 27648,
/// 80 MB each in Q4_K, past any L2), alternating as gate and down
/// projections do.
pub fn measure_cuda_gemv(
    cuda: &crate::backend::cuda::CudaBackend,
    ty: GgmlType,
    reps: usize,
) -> Result<f64, BackendError> {
    let weights = [(27648, 5120), (5120, 27648)]
        .into_iter()
        .map(|(rows, cols)| synthetic_weight(ty, rows, cols))
        .collect::<Result<Vec<_>, _>>()?;
    cuda.measure_gemv_gbps(&weights, reps)
}

/// The CPU's one-token matrix-vector rate over a `rows × cols` matrix of
/// `ty`, GB/s of weights (best of `reps`), and the time of a `n`-token
/// product over it (seconds; 0 when `n` is 0).
fn cpu_product_times(
    cpu: &CpuBackend,
    ty: GgmlType,
    (rows, cols): (usize, usize),
    reps: usize,
    n: usize,
) -> Result<(f64, f64), BackendError> {
    let (bytes, t) = synthetic_weight(ty, rows, cols)?;
    let w = CpuWeight::new(bytes, &t)?;
    let time = |n: usize, reps: usize| {
        let mut x = CpuAct::zeros(n, cols);
        x.data
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = ((i % 97) as f32 - 48.0) / 50.0);
        let mut out = CpuAct::zeros(n, rows);
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t0 = std::time::Instant::now();
            cpu.matmul(&x, &w, &mut out);
            best = best.min(t0.elapsed().as_secs_f64());
        }
        best
    };
    let gemv = t.n_bytes as f64 / time(1, reps) / 1e9;
    let gemm = if n > 0 { time(n, 2) } else { 0.0 };
    Ok((gemv, gemm))
}

/// The CPU's quantized matrix-vector bandwidth (one token over a Q4_K matrix
/// much larger than the caches) and matrix-matrix rate (a 256-token batch).
pub fn measure_cpu(cpu: &CpuBackend) -> Result<CpuProfile, BackendError> {
    let (rows, cols, n) = (32768, 8192, 256);
    let (gemv, gemm) = cpu_product_times(cpu, GgmlType::Q4_K, (rows, cols), 8, n)?;
    Ok(CpuProfile {
        name: format!("{} (calibrated)", cpu.name()),
        gemv_gbps: gemv,
        gemv_gbps_by_type: Default::default(),
        gemm_gflops: 2.0 * (rows * cols * n) as f64 / gemm / 1e9,
        host_read_gbps: 0.0,
    })
}

/// The CPU's one-token matrix-vector rate for `ty`, GB/s of weights, over a
/// 16384 × 8192 matrix (64 MiB and more: past the caches).
pub fn measure_cpu_gemv(cpu: &CpuBackend, ty: GgmlType) -> Result<f64, BackendError> {
    Ok(cpu_product_times(cpu, ty, (16384, 8192), 4, 0)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rates_are_measured_with_real_kernels() {
        let cpu = CpuBackend::new(2);
        let p = cpu.run(|| measure_cpu(&cpu)).unwrap();
        // A 2-core test machine reads a few GB/s; anything outside this range
        // means the timing or the byte count is wrong.
        assert!(p.gemv_gbps > 0.5 && p.gemv_gbps < 2000.0, "{p:?}");
        assert!(p.gemm_gflops > 1.0 && p.gemm_gflops < 1e6, "{p:?}");
    }

    #[test]
    fn cpu_rates_per_type_are_measured() {
        let cpu = CpuBackend::new(2);
        for ty in [GgmlType::Q5_K, GgmlType::Q8_0] {
            let r = cpu.run(|| measure_cpu_gemv(&cpu, ty)).unwrap();
            assert!(r > 0.5 && r < 2000.0, "{ty}: {r}");
        }
        assert!(gemv_types().any(|t| t == GgmlType::BF16));
        assert!(gemv_types().all(|t| t != GgmlType::F32));
    }
}
