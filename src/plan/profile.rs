//! Machine profiles: what the cost model knows about a GPU and a CPU. Built-in
//! profiles describe common cards from their published or measured figures;
//! a JSON file (`ferry calibrate` writes one) describes the machine at hand.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::quant::GgmlType;

/// Decode GEMV rates per weight type (the type's name → GB/s of weights),
/// as `ferry calibrate` measures them: the kernels differ per type (Q4_K and
/// Q6_K have their own, the other quantized types share one template, F16
/// and BF16 a float one), and so do their speeds.
pub type RatesByType = BTreeMap<String, f64>;

/// The rate of `ty` in `by_type`, else `fallback`.
fn rate_of(by_type: &RatesByType, ty: GgmlType, fallback: f64) -> f64 {
    by_type
        .get(ty.name())
        .copied()
        .filter(|r| *r > 0.0)
        .unwrap_or(fallback)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuProfile {
    pub name: String,
    pub vram_bytes: u64,
    /// Pinned host-to-device copy bandwidth, GB/s.
    pub h2d_gbps: f64,
    /// Host-to-device bandwidth from pageable memory (`--no-pin`), GB/s;
    /// 0: not measured (estimated from the pinned rate).
    #[serde(default)]
    pub h2d_pageable_gbps: f64,
    /// Copies hold the host thread that issues them until they are done
    /// (pageable memory: the driver stages them synchronously), so they
    /// cannot overlap the CPU's layers in decode.
    #[serde(default)]
    pub copies_block_host: bool,
    /// Dense bf16 matrix rate with f32 accumulation, TFLOP/s (measured where known).
    pub bf16_tflops: f64,
    /// Device memory bandwidth, GB/s.
    pub hbm_gbps: f64,
    /// Weight bytes per second ferry's one-token decode GEMVs read, GB/s
    /// (`ferry calibrate` times them); 0: not measured, the cost model then
    /// assumes a fixed fraction of `hbm_gbps`.
    #[serde(default)]
    pub gemv_gbps: f64,
    /// The same per weight type; a type not measured reads at `gemv_gbps`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gemv_gbps_by_type: RatesByType,
}

impl GpuProfile {
    /// GB/s a one-token decode GEMV reads weights of `ty` at: measured for
    /// the type, else the measured Q4_K rate, else `hbm_gbps · efficiency`.
    pub fn gemv_rate(&self, ty: GgmlType, efficiency: f64) -> f64 {
        let general = if self.gemv_gbps > 0.0 {
            self.gemv_gbps
        } else {
            self.hbm_gbps * efficiency
        };
        rate_of(&self.gemv_gbps_by_type, ty, general)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuProfile {
    pub name: String,
    /// Bandwidth a quantized matrix-vector product achieves, GB/s (Q4_K).
    pub gemv_gbps: f64,
    /// The same per weight type; a type not measured reads at `gemv_gbps`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gemv_gbps_by_type: RatesByType,
    /// Rate of quantized matrix-matrix products, GFLOP/s.
    pub gemm_gflops: f64,
    /// Host memory read bandwidth, GB/s (0: unknown). The CPU's layers and
    /// the copy engine's reads of streamed layers share it during decode.
    #[serde(default)]
    pub host_read_gbps: f64,
}

impl CpuProfile {
    /// GB/s a one-token matrix-vector product reads weights of `ty` at.
    pub fn gemv_rate(&self, ty: GgmlType) -> f64 {
        rate_of(&self.gemv_gbps_by_type, ty, self.gemv_gbps)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineProfile {
    pub gpu: GpuProfile,
    pub cpu: CpuProfile,
}

const GIB: u64 = 1 << 30;

/// Built-in GPU profiles: (name, VRAM GiB, pinned H2D GB/s, bf16 TFLOP/s, HBM GB/s).
/// H100/H200 figures are measured on the project's device machines (55 GB/s
/// pinned over PCIe 5, 794 TFLOP/s bf16); the others are vendor figures with
/// PCIe 4 copy rates.
pub const GPUS: [(&str, u64, f64, f64, f64); 7] = [
    ("h100", 80, 55.0, 794.0, 3350.0),
    ("h200", 141, 55.0, 790.0, 4800.0),
    ("a100-80g", 80, 25.0, 312.0, 2039.0),
    ("l40s", 48, 25.0, 362.0, 864.0),
    ("rtx4090", 24, 25.0, 165.0, 1008.0),
    ("rtx3090", 24, 24.0, 71.0, 936.0),
    ("l4", 24, 25.0, 121.0, 300.0),
];

impl GpuProfile {
    pub fn builtin(name: &str) -> Option<Self> {
        GPUS.iter()
            .find(|g| g.0 == name)
            .map(|&(n, vram, h2d, tflops, hbm)| GpuProfile {
                name: n.to_string(),
                vram_bytes: vram * GIB,
                h2d_gbps: h2d,
                h2d_pageable_gbps: 0.0,
                copies_block_host: false,
                bf16_tflops: tflops,
                hbm_gbps: hbm,
                gemv_gbps: 0.0,
                gemv_gbps_by_type: Default::default(),
            })
    }
}

/// Pageable copies go through the driver's staging buffer: on the project's
/// H100/H200 machines they ran at 7.4-7.9 GB/s against 55 GB/s pinned. Used
/// only where no calibration measured the pageable rate.
const PAGEABLE_FRACTION_OF_PINNED: f64 = 7.4 / 55.0;

impl GpuProfile {
    /// The copy rate a run will see: pinned, or pageable with `--no-pin`.
    pub fn h2d_for(&self, pin: bool) -> f64 {
        match pin {
            true => self.h2d_gbps,
            false if self.h2d_pageable_gbps > 0.0 => self.h2d_pageable_gbps,
            false => self.h2d_gbps * PAGEABLE_FRACTION_OF_PINNED,
        }
    }
}

impl CpuProfile {
    /// A typical 16-core server with 8 memory channels, until calibrated.
    pub fn default_server() -> Self {
        CpuProfile {
            name: "server CPU (uncalibrated default)".into(),
            gemv_gbps: 80.0,
            gemv_gbps_by_type: Default::default(),
            gemm_gflops: 1500.0,
            host_read_gbps: 0.0,
        }
    }
}

impl MachineProfile {
    /// What `auto` stands for: this machine's calibration when `ferry
    /// calibrate` wrote one, else the built-in profile whose name the card's
    /// name contains, else h100.
    pub fn auto_name(card: Option<&str>) -> String {
        if super::calibrate::default_profile_path().exists() {
            return "calibrated".into();
        }
        let card = card.unwrap_or("").to_lowercase();
        GPUS.iter()
            .find(|g| card.contains(g.0))
            .map_or("h100", |g| g.0)
            .to_string()
    }

    /// A built-in GPU name, or a JSON file written by `ferry calibrate`.
    pub fn load(name_or_file: &str) -> Result<Self, String> {
        if name_or_file == "auto" {
            return Self::load(&Self::auto_name(None));
        }
        if name_or_file == "calibrated" {
            let path = super::calibrate::default_profile_path();
            return Self::load(&path.to_string_lossy())
                .map_err(|e| format!("{e} (run `ferry calibrate` on this machine first)"));
        }
        if let Some(gpu) = GpuProfile::builtin(name_or_file) {
            return Ok(MachineProfile {
                gpu,
                cpu: CpuProfile::default_server(),
            });
        }
        let text = std::fs::read_to_string(name_or_file).map_err(|e| {
            let names: Vec<&str> = GPUS.iter().map(|g| g.0).collect();
            format!(
                "'{name_or_file}' is neither a built-in profile ({}) nor a readable profile file: {e}",
                names.join(", ")
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{name_or_file}: not a machine profile: {e}"))
    }

    /// The profile as a run that keeps its streamed layers in pinned (`pin`)
    /// or pageable host memory sees it: the planner and the decode cost model
    /// then price every copy at the rate it will actually run at.
    pub fn for_host_memory(mut self, pin: bool) -> Self {
        if !pin {
            self.gpu.h2d_gbps = self.gpu.h2d_for(false);
            self.gpu.copies_block_host = true;
            self.gpu.name = format!("{} (pageable host memory)", self.gpu.name);
        }
        self
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({:.0} GiB, H2D {:.0} GB/s, bf16 {:.0} TFLOP/s, HBM {:.0} GB/s{}) + {} (GEMV {:.0} GB/s, GEMM {:.0} GFLOP/s{})",
            self.gpu.name,
            self.gpu.vram_bytes as f64 / GIB as f64,
            self.gpu.h2d_gbps,
            self.gpu.bf16_tflops,
            self.gpu.hbm_gbps,
            if self.gpu.gemv_gbps > 0.0 {
                format!(", decode GEMV {:.0} GB/s", self.gpu.gemv_gbps)
            } else {
                String::new()
            },
            self.cpu.name,
            self.cpu.gemv_gbps,
            self.cpu.gemm_gflops,
            if self.cpu.host_read_gbps > 0.0 {
                format!(", host memory {:.0} GB/s", self.cpu.host_read_gbps)
            } else {
                String::new()
            }
        )
    }
}
