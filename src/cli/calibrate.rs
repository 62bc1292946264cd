//! `ferry calibrate`: the machine's rates, measured with ferry's own kernels,
//! written as the profile `plan`, `bench` and the executor read back.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferry::backend::Backend;
use ferry::backend::cpu::CpuBackend;
use ferry::plan::calibrate::{gemv_types, measure_cpu, measure_cpu_gemv, measure_cuda_gemv};
use ferry::plan::{GpuProfile, HumanBytes, MachineProfile, parse_size};
use ferry::quant::GgmlType;

pub(crate) fn calibrate(
    size: &str,
    repetitions: usize,
    out: Option<PathBuf>,
    attention: bool,
) -> Result<()> {
    let cuda = ferry::backend::cuda::CudaBackend::new(0)?;
    // Not part of the profile: the speed of ferry's own prompt-attention
    // kernel at an 8K context, for the head shapes of Qwen2.5-7B and -32B.
    let time_attention = || -> Result<()> {
        let kernel = if cuda.flash_wgmma() {
            "warpgroup MMAs"
        } else {
            "mma.sync"
        };
        for (label, heads) in [("7B", (28, 4, 128)), ("32B", (40, 8, 128))] {
            let (ms, tf) = cuda.measure_attention(heads, 8192, repetitions)?;
            println!(
                "prompt attention ({kernel}), 8192 tokens, causal, {label} heads {heads:?}: {ms:.2} ms, {tf:.0} TFLOP/s"
            );
        }
        Ok(())
    };
    if attention {
        return time_attention();
    }
    let bytes = parse_size(size).map_err(anyhow::Error::msg)? as usize;
    let (pinned, pageable) = cuda.measure_h2d(bytes, repetitions)?;
    println!(
        "{}: host-to-device {:.1} GB/s pinned, {:.1} GB/s pageable ({} per copy, median of {})",
        cuda.name(),
        pinned,
        pageable,
        HumanBytes(bytes as u64),
        repetitions
    );
    let hbm = cuda.measure_hbm(bytes, repetitions)?;
    println!("device memory: {hbm:.0} GB/s (device-to-device copy)");
    let tflops = cuda.measure_gemm_tflops(4096, 8192, repetitions)?;
    println!("GEMM (f16 in, f32 accumulate, 4096 x 8192 x 8192): {tflops:.0} TFLOP/s");
    // Every weight type's decode GEMV: the cost model prices each tensor
    // at its own type's rate.
    println!("decode GEMV, 1 token, 27648 x 5120 and 5120 x 27648, by weight type:");
    let mut gpu_by_type = ferry::plan::RatesByType::new();
    for ty in gemv_types() {
        let r = measure_cuda_gemv(&cuda, ty, repetitions)?;
        println!(
            "  {:<5} {r:>6.0} GB/s = {:>3.0} % of device memory",
            ty.name(),
            100.0 * r / hbm
        );
        gpu_by_type.insert(ty.name().to_string(), r);
    }
    let gemv = gpu_by_type[GgmlType::Q4_K.name()];
    time_attention()?;
    let cpu = CpuBackend::new(0);
    let host_read = cpu.measure_read_gbps(bytes.max(1 << 30), repetitions);
    println!(
        "host memory read: {:.1} GB/s with {} threads",
        host_read,
        cpu.threads()
    );
    let mut cpu_profile = cpu.run(|| measure_cpu(&cpu))?;
    cpu_profile.host_read_gbps = host_read;
    println!(
        "CPU Q4_K matrix-vector: {:.1} GB/s; matrix-matrix (256 tokens): {:.0} GFLOP/s",
        cpu_profile.gemv_gbps, cpu_profile.gemm_gflops
    );
    println!("CPU matrix-vector, 1 token, 16384 x 8192, by weight type:");
    for ty in gemv_types() {
        let r = cpu.run(|| measure_cpu_gemv(&cpu, ty))?;
        println!(
            "  {:<5} {r:>6.1} GB/s = {:>3.0} % of host memory",
            ty.name(),
            100.0 * r / host_read
        );
        cpu_profile
            .gemv_gbps_by_type
            .insert(ty.name().to_string(), r);
    }
    let (_, total) = cuda.free_memory()?;
    let profile = MachineProfile {
        gpu: GpuProfile {
            name: format!("{} (calibrated)", cuda.name()),
            vram_bytes: total as u64,
            h2d_gbps: pinned,
            h2d_pageable_gbps: pageable,
            copies_block_host: false,
            bf16_tflops: tflops,
            hbm_gbps: hbm,
            gemv_gbps: gemv,
            gemv_gbps_by_type: gpu_by_type,
        },
        cpu: cpu_profile,
    };
    let out = out.unwrap_or_else(ferry::plan::calibrate::default_profile_path);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&profile)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} (plan and bench use it with --gpu-profile calibrated)",
        out.display()
    );
    Ok(())
}
