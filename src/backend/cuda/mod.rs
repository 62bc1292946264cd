//! The CUDA backend: weights stay in their GGUF block format on the device and
//! are decoded by our kernels (`kernels/*.cu`, compiled by NVRTC for the
//! card at first use and cached on disk); batched matrix products go through
//! cuBLAS (f16 in, f32 accumulate), small batches through a fused GEMV.
//!
//! This first version favours being obviously right over being fast: the
//! prefill path dequantizes a weight matrix to f16 for every product, and
//! attention keeps one block per (token, head). It is checked against the CPU
//! backend by `ferry gpu-check`.

use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PinnedHostSlice, PushKernelArg,
};
use half::f16;

use super::{Backend, BackendError, Batch, ExpertWeights, Routing};
use crate::arch::{Activation, AttnSpec, Config, RopeKind, RopeParams, TensorRef};
use crate::gguf::Gguf;
use crate::quant::GgmlType;

mod measure;

/// The kernel sources, one concern per file, compiled as one NVRTC source in
/// this order (each file may use what the ones before it define).
const KERNELS: &str = concat!(
    include_str!("kernels/ferry.cu"),
    include_str!("kernels/attention_prompt.cu"),
    include_str!("kernels/gemv_kquants.cu"),
    include_str!("kernels/gemv_persistent.cu"),
    include_str!("kernels/gemv_types.cu"),
    include_str!("kernels/convert.cu"),
    include_str!("kernels/moe.cu"),
);

/// The kernel source NVRTC compiles: the i-quant grids rendered from
/// `quant::iq_tables` (one definition for both backends), then `KERNELS`.
fn kernel_source() -> &'static str {
    static SRC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SRC.get_or_init(|| format!("{}{KERNELS}", crate::quant::grids_c_source("__device__")))
}

/// The persistent shared-memory GEMVs' format number of a block type
/// (`GemvSeg::fmt` in gemv_persistent.cu) and the alignment its loads need;
/// `None`: the type takes the typed or float kernels.
fn smem_gemv_format(ty: GgmlType) -> Option<(i32, u64)> {
    Some(match ty {
        GgmlType::Q4_K => (0, 16),
        GgmlType::Q6_K => (1, 2),
        GgmlType::Q5_K => (2, 16),
        GgmlType::Q4_0 => (3, 16),
        GgmlType::Q4_1 => (4, 16),
        GgmlType::Q5_0 => (5, 16),
        GgmlType::Q8_0 => (6, 16),
        GgmlType::IQ4_NL => (7, 16),
        GgmlType::IQ4_XS => (8, 8),
        _ => return None,
    })
}

/// The block types whose decode GEMVs come from `gemv_typed_t`
/// (kernels/gemv_types.cu): type, kernel name, and the alignment of the
/// type's loads (`ALIGN` of its struct there), which the weights' device
/// address must have.
const TYPED_GEMVS: [(GgmlType, &str, usize); 18] = [
    (GgmlType::Q4_0, "q4_0", 2),
    (GgmlType::Q4_1, "q4_1", 4),
    (GgmlType::Q5_0, "q5_0", 2),
    (GgmlType::Q5_1, "q5_1", 4),
    (GgmlType::Q8_0, "q8_0", 2),
    (GgmlType::Q2_K, "q2_k", 4),
    (GgmlType::Q3_K, "q3_k", 2),
    (GgmlType::Q5_K, "q5_k", 16),
    (GgmlType::IQ4_NL, "iq4_nl", 2),
    (GgmlType::IQ4_XS, "iq4_xs", 4),
    (GgmlType::MXFP4, "mxfp4", 1),
    (GgmlType::IQ2_XXS, "iq2_xxs", 2),
    (GgmlType::IQ2_XS, "iq2_xs", 2),
    (GgmlType::IQ2_S, "iq2_s", 2),
    (GgmlType::IQ3_XXS, "iq3_xxs", 2),
    (GgmlType::IQ3_S, "iq3_s", 2),
    (GgmlType::IQ1_S, "iq1_s", 2),
    (GgmlType::IQ1_M, "iq1_m", 2),
];

pub(crate) fn err(e: impl std::fmt::Debug) -> BackendError {
    BackendError::Invalid(format!("CUDA: {e:?}"))
}

/// Why no CUDA device can be used, in one line, or `Ok` when one can.
pub fn availability() -> Result<(), String> {
    // SAFETY: these only try to load the shared libraries.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return Err(
                "no CUDA driver found (libcuda.so); install the NVIDIA driver, or run on the CPU"
                    .into(),
            );
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            return Err(
                "NVRTC (libnvrtc.so) not found; add the CUDA toolkit's lib64 to LD_LIBRARY_PATH"
                    .into(),
            );
        }
        if !cudarc::cublas::sys::is_culib_present() {
            return Err(
                "cuBLAS (libcublas.so) not found; add the CUDA toolkit's lib64 to LD_LIBRARY_PATH"
                    .into(),
            );
        }
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("the CUDA driver reports no GPU".into()),
        Err(e) => Err(format!("the CUDA driver failed to start: {e:?}")),
    }
}

struct Kernels {
    dequant_f16: CudaFunction,
    dequant8_f16: CudaFunction,
    /// Prefill conversions at memory speed (whole k-quant matrices, 4-wide
    /// activations, SwiGLU that also writes the down projection's f16 input).
    dequant_q4k_f16: CudaFunction,
    dequant_q5k_f16: CudaFunction,
    dequant_q6k_f16: CudaFunction,
    f32_to_f16_x4: CudaFunction,
    swiglu_f16_x4: CudaFunction,
    swiglu_h16_x4: CudaFunction,
    flash_prefill_d64: CudaFunction,
    flash_prefill_d128: CudaFunction,
    /// Prompt attention on warpgroup MMAs for 128-dimension heads (sm_90a:
    /// loaded only for compute capability 9.0).
    flash_wgmma: Option<CudaFunction>,
    f32_to_f16: CudaFunction,
    gemv: CudaFunction,
    gemv8: CudaFunction,
    /// Specialised decode GEMVs for 1, 2, 4 and 8 tokens.
    gemv_q4k: [CudaFunction; 4],
    gemv_q6k: [CudaFunction; 4],
    quantize_q8: CudaFunction,
    /// The same with activations quantized to 8 bits (dp4a).
    gemv_q4k_q8: [CudaFunction; 4],
    gemv_q6k_q8: [CudaFunction; 4],
    /// The other block types' decode GEMVs on 8-bit activations, for 1, 2,
    /// 4 and 8 tokens, in `TYPED_GEMVS`' order.
    gemv_typed: Vec<[CudaFunction; 4]>,
    /// Persistent decode GEMVs on shared-memory activations, 1 and 2 tokens
    /// (`gemv_segs_t` in gemv_persistent.cu), with bias / residual / SwiGLU epilogues.
    /// Index: [register bound: none, 3 blocks, 4 blocks][tokens - 1].
    gemv_smem: [[CudaFunction; 2]; 3],
    /// The same for launches with a segment in another format than Q4_K and
    /// Q6_K (`ALLF` builds: every format; the Q4_K/Q6_K-only build keeps the
    /// registers of the code Q4_K_M models ran before the other formats).
    gemv_smem_all: [[CudaFunction; 2]; 3],
    gemv_swiglu_smem: [[CudaFunction; 2]; 3],
    /// The same fed by the copy engine through a shared-memory ring
    /// (`gemv_ring_t`, sm_90), 1 and 2 tokens.
    gemv_ring: [CudaFunction; 2],
    gemv_ring_all: [CudaFunction; 2],
    gemv_swiglu_ring: [CudaFunction; 2],
    /// RMSNorm that also writes the 8-bit copy of its output.
    rms_norm_q8: CudaFunction,
    embed: CudaFunction,
    rms_norm: CudaFunction,
    add_bias: CudaFunction,
    add: CudaFunction,
    swiglu: CudaFunction,
    geglu: CudaFunction,
    scale: CudaFunction,
    softcap: CudaFunction,
    rope_qk: CudaFunction,
    kv_store: CudaFunction,
    attention: CudaFunction,
    attention_tiled: CudaFunction,
    attention_split: CudaFunction,
    attention_combine: CudaFunction,
    gather_rows: CudaFunction,
    scatter_rows_scaled: CudaFunction,
    moe_gate_up: CudaFunction,
    moe_down: CudaFunction,
    moe_sum: CudaFunction,
    moe_route: CudaFunction,
    moe_gate_up_ids: CudaFunction,
    moe_down_ids: CudaFunction,
    copy_f32: CudaFunction,
}

/// The attention kernels gpu-check compares with the shared-memory reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// Tensor cores, online softmax (prompts and their chunks): the kernel
    /// in use (on an H100/H200 the warpgroup-MMA one for 128-dim heads).
    Flash,
    /// The mma.sync prompt kernel, where the warpgroup-MMA one is in use.
    FlashMma,
    /// Keys in tiles with an online softmax (decode past 12288 positions).
    Tiled,
    /// Keys split over blocks, parts combined (decode at long contexts).
    Split,
}

/// Reproducible test data: each call returns `len` values uniform in
/// `[-amplitude, amplitude)` from an xorshift generator seeded with `seed`.
fn xorshift_values(mut state: u64, amplitude: f32) -> impl FnMut(usize) -> Vec<f32> {
    move |len| {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 * amplitude - amplitude
            })
            .collect()
    }
}

/// Whether 128-dimension heads take the warpgroup-MMA prompt-attention kernel
/// (`flash_wgmma` in attention_prompt.cu; sm_90a cards only): `FERRY_FLASH` unset or
/// `wgmma` yes, `mma` no (the mma.sync kernel, 222 against 409-413 TFLOP/s
/// for 32B heads at 8K tokens on an H100).
fn flash_wgmma_from(v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("") | Some("wgmma") => Ok(true),
        Some("mma") => Ok(false),
        Some(other) => Err(format!("FERRY_FLASH={other}: expected wgmma or mma")),
    }
}

/// Dynamic shared memory of the warpgroup-MMA attention kernel: three stages
/// of a 64-key K and V tile (128 dimensions, f16) and 1 KiB to align them.
const FLASH_WGMMA_SMEM: usize = 3 * 2 * 64 * 128 * 2 + 1024;

/// Warps per block of the prompt-attention kernel for a head dimension (each
/// takes 16 query rows; see `flash_prefill_d128` in attention_prompt.cu).
fn flash_warps(head_dim: usize) -> usize {
    if head_dim == 128 { 8 } else { 4 }
}

/// Dynamic shared memory of the prompt-attention kernel for a head dimension
/// (`flash_smem_bytes` in attention_prompt.cu): two stages of 64-key K and V tiles, rows
/// padded by 8 halfs.
fn flash_smem_bytes(head_dim: usize) -> usize {
    2 * 2 * 64 * (head_dim + 8) * 2
}

/// Most dynamic shared memory a shared-memory decode GEMV may take (its
/// activations: a 27648-wide row of two tokens needs 76 KiB).
const GEMV_SMEM_MAX: usize = 96 << 10;

/// Most bytes of scores (4 per key) the one-block decode attention kernel
/// keeps in dynamic shared memory; longer contexts take the tiled kernel.
/// Beside the kernel's static arrays (`ATTENTION_STATIC_SMEM`) it must stay
/// within the 48 KiB a block gets without opting in (46 KiB did not: a batch
/// of 14 or more decode tokens at 11745-11776 keys would not have launched).
const ATTENTION_SCORES_MAX: usize = 44 << 10;

/// `attention`'s static shared memory (ferry.cu): `red[32]`, `qrot` and
/// `krot` of ROPE_MAX_HEAD (256) floats.
const ATTENTION_STATIC_SMEM: usize = 4 * (32 + 2 * 256);
const _: () = assert!(ATTENTION_SCORES_MAX + ATTENTION_STATIC_SMEM <= 48 << 10);

/// Shared memory of `gemv_segs_t` for `n` tokens of width `cols`: 8-bit
/// values, per-32 scales, Q4_K's per-16 sums, and 8 warps' partial sums.
fn gemv_smem_bytes(n: usize, cols: usize) -> usize {
    let blocks = n * cols / 32;
    n * cols + 4 * 3 * blocks + 8 * n.next_power_of_two() * 2 * 4
}

/// `flags` bits of the shared-memory GEMVs (as defined in gemv_persistent.cu).
const GEMV_ROW_BARRIER: i32 = 1;
const GEMV_PRELOAD: i32 = 2;

/// One matrix of a shared-memory GEMV launch (`GemvSeg` in gemv_persistent.cu).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GemvSeg {
    w: u64,
    w2: u64,
    out: u64,
    bias: u64,
    residual: u64,
    rows: i32,
    fmt: i32,
    groups_before: i32,
    pad: i32,
}

/// Up to three matrices sharing their activations (`GemvSegs` in gemv_persistent.cu).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GemvSegs {
    seg: [GemvSeg; 3],
    count: i32,
    total_groups: i32,
}

// SAFETY: plain old data laid out as the kernel's struct (repr(C), 8-byte
// pointers as u64), passed by value.
unsafe impl cudarc::driver::DeviceRepr for GemvSegs {}

/// A matrix for `gemv_segments`: `out = x · wᵀ` with an epilogue (`w_up`:
/// SwiGLU with the up matrix; `bias` per row; `residual`: `out += …`).
struct GemvSpec<'a> {
    w: &'a CudaWeight,
    w_up: Option<&'a CudaWeight>,
    out: &'a mut CudaAct,
    bias: Option<&'a CudaSlice<f32>>,
    residual: bool,
}

/// Warps sharing a row in `gemv_segs_t`: the fewest (1, 2, 4, 8) that cover
/// a row's `nb` superblocks in one round of loads, a warp loading `per_round`
/// superblocks per round (8 lane groups × their Q4_K round).
fn gemv_warps_per_row_cover(nb: usize, per_round: usize) -> usize {
    [1, 2, 4, 8]
        .into_iter()
        .find(|w| per_round * w >= nb)
        .unwrap_or(8)
}

/// Warps sharing a row: one, unless the rows leave the GPU's `resident_warps`
/// short of two row-pieces each (few rows: the K/V projections; or rows
/// barely more than the warps, whose last round would leave most idle) and
/// each lane group keeps at least one superblock of its piece.
fn gemv_warps_per_row(rows: usize, nb: usize, resident_warps: usize) -> usize {
    let mut wpr = 1;
    while wpr < 8 && rows * wpr < 2 * resident_warps && nb >= 4 * wpr * 2 {
        wpr *= 2;
    }
    wpr
}

/// Warps sharing a row, chosen for the last round of row groups: the launch's
/// `blocks` persistent blocks take row groups of 8 / wpr rows in turn, so with
/// `units` groups the busy share of the last round is units / (⌈units / blocks⌉
/// · blocks) (a 32B down projection with 2 warps per row left 19 % of the GPU
/// idle). Sharing stops where a warp's piece of the row (nb / wpr superblocks)
/// would no longer fill one round of its lane groups' loads (16 superblocks),
/// and a larger wpr must gain more than 5 %.
fn gemv_warps_per_row_balanced(rows: &[usize], nb: usize, blocks: usize) -> usize {
    let busy = |wpr: usize| {
        let units: usize = rows.iter().map(|r| r.div_ceil(8 / wpr)).sum();
        units as f64 / (units.div_ceil(blocks.max(1)) * blocks.max(1)) as f64
    };
    let mut best = (1, busy(1));
    for wpr in [2, 4, 8] {
        if nb / wpr < 16 {
            break;
        }
        let b = busy(wpr);
        if b > best.1 * 1.05 {
            best = (wpr, b);
        }
    }
    best.0
}

/// Most bytes a stage of the ring GEMVs holds where it takes more than one
/// row: a 32B model's eight 5120-wide Q4_K rows (23 KB), or four of gate and
/// four of up. Larger stages leave fewer of them in a block's shared memory.
const RING_STAGE_MAX: usize = 24 << 10;

/// Shared memory of a ring stage beside its weights: two mbarriers and the
/// computing warps' partial sums (up to 16 warps, 2 tokens, SwiGLU's two).
const RING_STAGE_EXTRA: usize = 2 * 8 + 16 * 2 * 2 * 4;

/// How a ring GEMV (`gemv_ring_t` in gemv_persistent.cu) takes its launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RingPlan {
    /// Computing warps of a block (8: two blocks per SM; 16: one), beside
    /// the one that refills the ring.
    consumers: usize,
    /// Warps per row (a stage is one row group of consumers / wpr rows).
    wpr: usize,
    blocks: usize,
    stages: usize,
    stage_bytes: usize,
    /// Where the ring starts in shared memory, past the activations.
    ring_at: usize,
    /// Dynamic shared memory of a block.
    smem: usize,
}

/// The card's shared memory as the ring GEMVs see it.
#[derive(Debug, Clone, Copy)]
struct SmemLimits {
    sms: usize,
    per_sm: usize,
    /// The most one block may opt into.
    per_block: usize,
    /// Kept by the driver for each resident block.
    reserved: usize,
}

/// What the ring GEMVs may choose from: computing warps per block (8 or 16;
/// None: either), and the weights an SM's rings hold (`ring_bytes`).
#[derive(Debug, Clone, Copy)]
struct RingChoice {
    consumers: Option<usize>,
    ring_bytes: usize,
    /// Launches whose widest row is shorter stay with the register-fed
    /// kernel (`FERRY_GEMV_RING_MIN_ROW`, default 4096 bytes: on an H100 the
    /// ring read 27648-wide down projections 15-20 % faster, 5120-wide Q6_K
    /// rows (a 32B model's v and output projections) a little faster, and
    /// 5120- or 3584-wide Q4_K rows slower, its consumers then waiting on
    /// stages of a few rows each).
    min_row_bytes: usize,
}

/// Row groups, blocks and stages for a ring GEMV over matrices of
/// `seg_rows` rows (the widest row `row_bytes` long; `matrices` 2 for gate
/// and up side by side) whose activations take `act_bytes`. Candidates: one
/// block of 16 computing warps per SM or two of 8, row groups of 1 to 16
/// rows (at most RING_STAGE_MAX a stage unless one row), as many stages as
/// `ring_bytes` per SM asks (at least two, as many as fit). Chosen: those
/// whose last round of row groups leaves the fewest blocks idle (within
/// 3 %), then two blocks of 8 (on an H100 one block of 16 per SM, with
/// twice the weights in flight, decoded a 32B model 8 % slower), then the
/// larger stage. None where two stages do not fit.
fn gemv_ring_plan(
    seg_rows: &[usize],
    row_bytes: usize,
    matrices: usize,
    act_bytes: usize,
    smem: SmemLimits,
    choice: RingChoice,
) -> Option<RingPlan> {
    let ring_at = act_bytes.next_multiple_of(128);
    let mut candidates = Vec::new();
    for (consumers, per_sm) in [(8usize, 2usize), (16, 1)] {
        if choice.consumers.is_some_and(|c| c != consumers) {
            continue;
        }
        let limit = (smem.per_sm / per_sm)
            .saturating_sub(smem.reserved)
            .min(smem.per_block);
        for wpr in [1usize, 2, 4, 8, 16] {
            if wpr > consumers {
                continue;
            }
            let rows_per_group = consumers / wpr;
            // Each matrix's span starts at the 16-byte boundary below its rows.
            let stage_bytes = matrices * (rows_per_group * row_bytes + 15).next_multiple_of(16);
            if stage_bytes > RING_STAGE_MAX && rows_per_group > 1 {
                continue;
            }
            let fit = limit.saturating_sub(ring_at) / (stage_bytes + RING_STAGE_EXTRA);
            let stages = (choice.ring_bytes / per_sm / stage_bytes).clamp(2, fit.max(2));
            if fit < 2 {
                continue;
            }
            let units: usize = seg_rows.iter().map(|r| r.div_ceil(rows_per_group)).sum();
            let blocks = units.min(smem.sms * per_sm).max(1);
            let busy = units as f64 / (units.div_ceil(blocks) * blocks) as f64;
            let plan = RingPlan {
                consumers,
                wpr,
                blocks,
                stages,
                stage_bytes,
                ring_at,
                smem: ring_at + stages * (stage_bytes + RING_STAGE_EXTRA),
            };
            candidates.push((busy, consumers, stage_bytes, plan));
        }
    }
    let best = candidates.iter().map(|c| c.0).fold(0.0, f64::max);
    candidates
        .into_iter()
        .filter(|c| c.0 >= best - 0.03)
        .max_by_key(|c| (c.1 == 8, c.2))
        .map(|c| c.3)
}

/// 64-bit FNV-1a: a stable hash for the kernel cache key.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The cache file for compiled kernels: keyed by source hash, architecture and
/// driver version, so the second start compiles nothing.
pub fn kernel_cache_path(arch: &str, driver: i32) -> std::path::PathBuf {
    let dir = crate::fetch::model_cache_dir()
        .parent()
        .map(|p| p.join("kernels"))
        .unwrap_or_else(|| std::env::temp_dir().join("ferry-kernels"));
    dir.join(format!(
        "{:016x}-{arch}-{driver}.ptx",
        fnv1a(kernel_source().as_bytes())
    ))
}

/// NVRTC's target for a compute capability: 9.0 gets the architecture-specific
/// `sm_90a`, whose warpgroup MMAs the prompt-attention kernel uses.
fn nvrtc_arch(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        "sm_90a".into()
    } else {
        format!("sm_{major}{minor}")
    }
}

fn load_kernels(ctx: &Arc<CudaContext>) -> Result<(Kernels, bool), BackendError> {
    let (major, minor) = ctx.compute_capability().map_err(err)?;
    let arch: &'static str = Box::leak(nvrtc_arch(major, minor).into_boxed_str());
    let mut driver = 0i32;
    // SAFETY: writes one int.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
    let path = kernel_cache_path(arch, driver);
    let (ptx, cached) = match std::fs::read_to_string(&path) {
        Ok(src) => (cudarc::nvrtc::Ptx::from_src(src), true),
        Err(_) => {
            let opts = cudarc::nvrtc::CompileOptions {
                arch: Some(arch),
                include_paths: vec!["/usr/local/cuda/include".into()],
                ..Default::default()
            };
            let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernel_source(), opts).map_err(|e| {
                BackendError::Invalid(format!("compiling the CUDA kernels for {arch}: {e}"))
            })?;
            if let Some(dir) = path.parent()
                && std::fs::create_dir_all(dir).is_ok()
            {
                let tmp = path.with_extension("tmp");
                if std::fs::write(&tmp, ptx.to_src()).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
            }
            (ptx, false)
        }
    };
    let module = ctx.load_module(ptx).map_err(err)?;
    let f = |name: &str| module.load_function(name).map_err(err);
    // The prompt-attention kernels keep two stages of K and V tiles in
    // dynamic shared memory, beyond the default 48 KiB for head dimension 128.
    for (name, head_dim) in [("flash_prefill_d64", 64), ("flash_prefill_d128", 128)] {
        f(name)?
            .set_attribute(
                cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                flash_smem_bytes(head_dim) as i32,
            )
            .map_err(err)?;
    }
    // The warpgroup-MMA attention kernel (sm_90a) keeps its stages beyond
    // the default 48 KiB too.
    let flash_wgmma = if arch == "sm_90a" {
        let f = f("flash_wgmma_k64")?;
        f.set_attribute(
            cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            FLASH_WGMMA_SMEM as i32,
        )
        .map_err(err)?;
        Some(f)
    } else {
        None
    };
    // The shared-memory GEMVs hold a decode step's 8-bit activations.
    for name in [
        "gemv_smem",
        "gemv_swiglu_smem",
        "gemv_smem_b3",
        "gemv_swiglu_smem_b3",
        "gemv_smem_b4",
        "gemv_swiglu_smem_b4",
        "gemv_smem_all",
        "gemv_smem_all_b3",
        "gemv_smem_all_b4",
    ]
    .iter()
    .flat_map(|k| [format!("{k}_1"), format!("{k}_2")])
    {
        f(&name)?
            .set_attribute(
                cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                GEMV_SMEM_MAX as i32,
            )
            .map_err(err)?;
    }
    // The ring GEMVs take what a block may opt into (their activations and
    // stages of weights; `gemv_ring_plan` sizes them).
    let optin = ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(err)?;
    for name in [
        "gemv_ring_1",
        "gemv_ring_2",
        "gemv_ring_all_1",
        "gemv_ring_all_2",
        "gemv_swiglu_ring_1",
        "gemv_swiglu_ring_2",
    ] {
        f(name)?
            .set_attribute(
                cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                optin,
            )
            .map_err(err)?;
    }
    Ok((
        Kernels {
            dequant_f16: f("dequant_f16")?,
            dequant8_f16: f("dequant8_f16")?,
            dequant_q4k_f16: f("dequant_q4k_f16")?,
            dequant_q5k_f16: f("dequant_q5k_f16")?,
            dequant_q6k_f16: f("dequant_q6k_f16")?,
            f32_to_f16_x4: f("f32_to_f16_x4")?,
            swiglu_f16_x4: f("swiglu_f16_x4")?,
            swiglu_h16_x4: f("swiglu_h16_x4")?,
            flash_prefill_d64: f("flash_prefill_d64")?,
            flash_prefill_d128: f("flash_prefill_d128")?,
            flash_wgmma,
            f32_to_f16: f("f32_to_f16")?,
            gemv: f("gemv")?,
            gemv8: f("gemv8")?,
            gemv_q4k: [
                f("gemv_q4k_1")?,
                f("gemv_q4k_2")?,
                f("gemv_q4k_4")?,
                f("gemv_q4k_8")?,
            ],
            gemv_q6k: [
                f("gemv_q6k_1")?,
                f("gemv_q6k_2")?,
                f("gemv_q6k_4")?,
                f("gemv_q6k_8")?,
            ],
            quantize_q8: f("quantize_q8")?,
            gemv_q4k_q8: [
                f("gemv_q4k_q8_1")?,
                f("gemv_q4k_q8_2")?,
                f("gemv_q4k_q8_4")?,
                f("gemv_q4k_q8_8")?,
            ],
            gemv_q6k_q8: [
                f("gemv_q6k_q8_1")?,
                f("gemv_q6k_q8_2")?,
                f("gemv_q6k_q8_4")?,
                f("gemv_q6k_q8_8")?,
            ],
            gemv_typed: TYPED_GEMVS
                .iter()
                .map(|(_, name, _)| {
                    Ok([
                        f(&format!("gemv_q8_{name}_1"))?,
                        f(&format!("gemv_q8_{name}_2"))?,
                        f(&format!("gemv_q8_{name}_4"))?,
                        f(&format!("gemv_q8_{name}_8"))?,
                    ])
                })
                .collect::<Result<_, BackendError>>()?,
            gemv_smem: [
                [f("gemv_smem_1")?, f("gemv_smem_2")?],
                [f("gemv_smem_b3_1")?, f("gemv_smem_b3_2")?],
                [f("gemv_smem_b4_1")?, f("gemv_smem_b4_2")?],
            ],
            gemv_smem_all: [
                [f("gemv_smem_all_1")?, f("gemv_smem_all_2")?],
                [f("gemv_smem_all_b3_1")?, f("gemv_smem_all_b3_2")?],
                [f("gemv_smem_all_b4_1")?, f("gemv_smem_all_b4_2")?],
            ],
            gemv_swiglu_smem: [
                [f("gemv_swiglu_smem_1")?, f("gemv_swiglu_smem_2")?],
                [f("gemv_swiglu_smem_b3_1")?, f("gemv_swiglu_smem_b3_2")?],
                [f("gemv_swiglu_smem_b4_1")?, f("gemv_swiglu_smem_b4_2")?],
            ],
            gemv_ring: [f("gemv_ring_1")?, f("gemv_ring_2")?],
            gemv_ring_all: [f("gemv_ring_all_1")?, f("gemv_ring_all_2")?],
            gemv_swiglu_ring: [f("gemv_swiglu_ring_1")?, f("gemv_swiglu_ring_2")?],

            rms_norm_q8: f("rms_norm_q8")?,
            embed: f("embed")?,
            rms_norm: f("rms_norm")?,
            add_bias: f("add_bias")?,
            add: f("add")?,
            swiglu: f("swiglu")?,
            geglu: f("geglu")?,
            scale: f("scale")?,
            softcap: f("softcap")?,
            rope_qk: f("rope_qk")?,
            kv_store: f("kv_store")?,
            attention: f("attention")?,
            attention_tiled: f("attention_tiled")?,
            attention_split: f("attention_split")?,
            attention_combine: f("attention_combine")?,
            gather_rows: f("gather_rows")?,
            scatter_rows_scaled: f("scatter_rows_scaled")?,
            moe_gate_up: f("moe_gate_up")?,
            moe_down: f("moe_down")?,
            moe_sum: f("moe_sum")?,
            moe_route: f("moe_route")?,
            moe_gate_up_ids: f("moe_gate_up_ids")?,
            moe_down_ids: f("moe_down_ids")?,
            copy_f32: f("copy_f32")?,
        },
        cached,
    ))
}

/// A weight matrix in device memory: a device pointer into a buffer that the
/// weight keeps alive — its own upload, or a streaming slot shared by the
/// layers that pass through it.
pub struct CudaWeight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// What owns the bytes (a device buffer, or page-locked host memory).
    _buf: Arc<dyn std::any::Any + Send + Sync>,
    /// Device address of the first byte (passed to kernels by value).
    ptr: u64,
    /// The bytes are page-locked host memory that kernels read across the
    /// bus (a plan's host-resident experts, the token embeddings).
    on_host: bool,
}

impl CudaWeight {
    /// A weight in page-locked host memory at `ptr` (its host address, valid
    /// on the device with unified addressing), kept alive by `owner`.
    ///
    /// # Safety
    /// `ptr` must address the weight's bytes (`ty` blocks for `rows × cols`
    /// elements) in page-locked host memory, for as long as `owner` lives.
    pub unsafe fn from_raw(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        owner: Arc<dyn std::any::Any + Send + Sync>,
        ptr: u64,
    ) -> Self {
        CudaWeight {
            ty,
            rows,
            cols,
            _buf: owner,
            ptr,
            on_host: true,
        }
    }

    /// A weight `bytes` long at `offset` in `buf`.
    pub fn in_buffer(
        stream: &CudaStream,
        buf: Arc<CudaSlice<u8>>,
        offset: usize,
        t: &TensorRef,
    ) -> Result<Self, BackendError> {
        if offset + t.n_bytes as usize > buf.len() {
            return Err(BackendError::Invalid(format!(
                "{}: does not fit its device buffer",
                t.name
            )));
        }
        let (base, _guard) = buf.device_ptr(stream);
        let ptr = base + offset as u64;
        Ok(CudaWeight {
            ty: t.ty,
            rows: t.rows(),
            cols: t.cols(),
            _buf: buf.clone(),
            ptr,
            on_host: false,
        })
    }
}

/// Device tables of a layer's expert matrix addresses, by its first
/// expert's addresses and expert count, with the addresses they hold.
type ExpertTables =
    std::collections::HashMap<(u64, u64, u64, usize), (Vec<u64>, Arc<CudaSlice<u64>>)>;

/// Page-locked host memory holding weights kernels read across the bus.
struct HostBytes(#[allow(dead_code)] cudarc::driver::PinnedHostSlice<u8>);

// SAFETY: written once while loading, before any sharing; then only read.
unsafe impl Send for HostBytes {}
unsafe impl Sync for HostBytes {}

pub struct CudaAct {
    pub n: usize,
    pub width: usize,
    data: CudaSlice<f32>,
}

pub struct CudaKv {
    pub(crate) n_ctx: usize,
    pub(crate) n_seq: usize,
    width: usize,
    k: CudaSlice<f16>,
    v: CudaSlice<f16>,
}

/// f16 buffers for a dequantized weight matrix and converted activations.
/// f16 workspace of batched products (grown on demand, freed after prefill).
#[derive(Default)]
struct Scratch {
    /// The dequantized weight.
    w: Option<CudaSlice<f16>>,
    /// Activations as f16 ...
    x: Option<CudaSlice<f16>>,
    /// ... and which activation they hold (device pointer, rows, width,
    /// activation epoch): products that share an input (q/k/v, gate/up)
    /// convert it once, and SwiGLU writes the down projection's.
    x_of: Option<(u64, usize, usize, u64)>,
    /// Host-resident experts copied in for a batch that runs them on many
    /// tokens (`moe_experts`) ...
    experts: Option<CudaSlice<u8>>,
    /// ... which ones (by their gate matrix's host address) at which offset,
    /// and the end of the last.
    staged: Vec<(u64, usize)>,
    staged_end: usize,
}

/// Per-batch tables every layer uses (RoPE cos/sin; KV slots, sequence bases and
/// positions), uploaded once per batch instead of once per layer: small
/// host-to-device copies queue behind a streaming copy on the same copy engine,
/// so uploading them between layers would serialise compute behind streaming.
/// Device copies of a batch's KV slots, sequence bases and positions.
type KvTables = (CudaSlice<u32>, CudaSlice<u32>, CudaSlice<u32>);

#[derive(Default)]
struct BatchTables {
    /// (key, table), most recent last; a prompt's micro-batches each have one.
    rope: Vec<(Vec<u32>, Arc<CudaSlice<f32>>)>,
    kv: Vec<(Vec<u32>, Arc<KvTables>)>,
}

/// An activation quantized to 8 bits per 32-element block for the integer
/// GEMVs: values, block scales and half-block sums. `of` names the activation
/// (device address, rows, width) while it is unchanged: q, k and v (and gate
/// and up) read the same input, which is quantized once. Every backend
/// operation other than a matmul forgets it, since it may write activations.
#[derive(Default)]
struct Q8Cache {
    q: Option<CudaSlice<i8>>,
    d: Option<CudaSlice<f32>>,
    s: Option<CudaSlice<f32>>,
    of: Option<(u64, usize, usize, u64)>,
}

impl Q8Cache {
    /// Room for `total` 8-bit values with their scales and half sums.
    fn reserve(&mut self, b: &CudaBackend, total: usize) -> Result<(), BackendError> {
        if self.q.as_ref().is_none_or(|q| q.len() < total) {
            self.q = Some(b.zeros::<i8>(total)?);
            self.d = Some(b.zeros::<f32>(total / 32)?);
            self.s = Some(b.zeros::<f32>(2 * (total / 32))?);
        }
        Ok(())
    }

    /// Device addresses of the 8-bit values, their scales and half sums.
    fn pointers(&self, stream: &Arc<CudaStream>) -> (u64, u64, u64) {
        (
            self.q.as_ref().expect("filled").device_ptr(stream).0,
            self.d.as_ref().expect("filled").device_ptr(stream).0,
            self.s.as_ref().expect("filled").device_ptr(stream).0,
        )
    }
}

/// Micro-batches whose tables stay cached (a 64K-token prompt in 512-token micro-batches is 128).
const TABLE_CACHE: usize = 256;

fn cached<T>(entries: &[(Vec<u32>, Arc<T>)], key: &[u32]) -> Option<Arc<T>> {
    entries
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

fn remember<T>(entries: &mut Vec<(Vec<u32>, Arc<T>)>, key: Vec<u32>, value: Arc<T>) {
    if entries.len() >= TABLE_CACHE {
        entries.remove(0);
    }
    entries.push((key, value));
}

pub struct CudaBackend {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    /// f16 scratch for dequantized weights and converted activations (grown on demand).
    scratch: Mutex<Scratch>,
    /// Each layer's table of its experts' matrix addresses (`moe_block`),
    /// by the addresses of its first expert's matrices and its expert count.
    expert_tables: Mutex<ExpertTables>,
    tables: Mutex<BatchTables>,
    /// Decode activations quantized to 8 bits, and which activation they are.
    q8: Mutex<Q8Cache>,
    /// Bumped by every operation that may write an activation.
    q8_epoch: std::sync::atomic::AtomicU64,
    /// Decode GEMVs on 8-bit activations (`FERRY_GEMV=float`: on f32 ones).
    int_gemv: bool,
    /// The persistent shared-memory GEMVs and fused epilogues for 1-2 tokens
    /// (`FERRY_GEMV=warp`: the warp-per-row kernels and separate ops).
    smem_gemv: bool,
    /// Warps per row of the shared-memory GEMVs (`FERRY_GEMV_WPR`: 1, 2, 4
    /// or 8 forced; `cover`: the fewest whose loads cover a row in one round;
    /// `fill`: enough warps to fill the GPU twice, `gemv_warps_per_row`;
    /// default: the fullest last round, `gemv_warps_per_row_balanced`).
    gemv_wpr: Option<String>,
    /// q, k and v projections of a decode step in one launch
    /// (`FERRY_GEMV=noqkv`: three).
    qkv_fused: bool,
    /// Register bound of the shared-memory GEMVs (`FERRY_GEMV_BOUND`: 3 or 4
    /// resident blocks per SM, 0 none; default 3).
    gemv_bound: usize,
    /// Decode attention writes the 8-bit copy of its output
    /// (`FERRY_ATTN_Q8=0`: a separate quantize_q8 launch).
    attn_q8: bool,
    /// RMSNorm of decode rows spread over one block per 1024 elements
    /// (`FERRY_NORM_SPLIT=0`: one block per row).
    norm_split: bool,
    /// Decode attention stores the step's keys and values itself
    /// (`FERRY_ATTN_KV=0`: a separate kv_store launch).
    attn_kv: bool,
    /// The decode step's kernels launched as programmatic dependent launches
    /// (`launch_chained`; cards of compute capability 9.0 and later,
    /// `FERRY_PDL=0` off).
    chained: bool,
    /// Row groups of weights each shared-memory GEMV block asks L2 for before
    /// waiting on the previous kernel (`FERRY_GEMV_PREFETCH=N`; default
    /// `gemv_prefetch_groups`).
    gemv_prefetch: Option<i32>,
    /// `flags` of the shared-memory GEMVs (gemv_persistent.cu): the warps sharing a row
    /// meet at their own barrier (`FERRY_GEMV_BAR=block`: the block's), and a
    /// block loads its first round of weights before waiting on the previous
    /// kernel (`FERRY_GEMV_PRELOAD=0` off).
    gemv_flags: i32,
    /// Decode attention applies RoPE to its query and new key
    /// (`FERRY_ROPE_FUSED=0`: a rope_qk launch).
    rope_fused: bool,
    /// A batch's feed-forward block keeps its gate and up products in f16
    /// (`feed_forward_f16`; `FERRY_FFN_F16=0`: f32 products, f32 SwiGLU).
    ffn_f16: bool,
    /// Which decode GEMVs the copy engine feeds (`gemv_ring_t`; sm_90 and
    /// later): `FERRY_GEMV_RING=0` none, `all`, default all but gate/up
    /// (whose short rows the register-fed kernel reads faster: 57 against
    /// 65 us for a 32B layer on an H100).
    ring_plain: bool,
    ring_swiglu: bool,
    /// Computing warps of a ring GEMV block forced (`FERRY_GEMV_RING_WARPS`:
    /// 8 or 16), the weights in an SM's rings (`FERRY_GEMV_RING_KIB`,
    /// default 160), the shortest rows it takes.
    ring: RingChoice,
    smem: SmemLimits,
    sm_count: u32,
    /// Resident blocks per SM of (kernel, shared memory), asked once.
    occupancy: Mutex<std::collections::HashMap<(u64, usize), u32>>,
    /// Prompt attention on tensor cores (off: the one-block-per-query kernel
    /// for every batch; `FERRY_ATTENTION=naive`, and gpu-check's comparison).
    flash: std::sync::atomic::AtomicBool,
    /// 128-dimension heads take the warpgroup-MMA prompt kernel (where the
    /// card has it; `FERRY_FLASH`).
    flash_wgmma: std::sync::atomic::AtomicBool,
    /// Force the tiled attention kernel where the shared-memory one would do
    /// (gpu-check compares the two).
    tiled_decode: std::sync::atomic::AtomicBool,
    /// Decode attention splits the keys over blocks from this many keys on
    /// (`FERRY_ATTN_SPLIT`: the number, 0 never; gpu-check forces it).
    split_min: std::sync::atomic::AtomicUsize,
    /// `attention_split`'s partial outputs (grown on demand).
    attn_parts: Mutex<Option<CudaSlice<f32>>>,
    pub kernels_from_cache: bool,
    name: String,
    ledger: MemoryLedger,
}

/// Accounts for the device memory ferry uses: everything in use on the device
/// beyond what was in use when the context was created (ferry's buffers, the
/// libraries' workspaces, the stream-ordered allocator's reserve). Every
/// allocation is checked against the budget right after it is made, and the
/// peak is kept for reports.
struct MemoryLedger {
    baseline: u64,
    budget: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
}

/// One block of 256 threads per row (the norms, row gathers and scatters).
fn block_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A kernel's arguments for `launch_chained`: pointers to their values, in
/// the kernel's order, borrowed until the launch.
struct KernelArgs<'a> {
    ptrs: Vec<*mut std::ffi::c_void>,
    values: std::marker::PhantomData<&'a ()>,
}

impl<'a> KernelArgs<'a> {
    fn new() -> Self {
        KernelArgs {
            ptrs: Vec::with_capacity(16),
            values: std::marker::PhantomData,
        }
    }

    fn arg<T: cudarc::driver::DeviceRepr>(&mut self, value: &'a T) -> &mut Self {
        self.ptrs.push(value as *const T as *mut std::ffi::c_void);
        self
    }

    /// Consecutive arguments of one type (device pointers), in order.
    fn args<T: cudarc::driver::DeviceRepr>(&mut self, values: &'a [T]) -> &mut Self {
        for v in values {
            self.arg(v);
        }
        self
    }
}

/// The kernels `attention_heads` runs for a batch (`attention_path`).
enum AttentionPath {
    /// A prompt's consecutive tokens: the tensor-core kernel.
    Flash,
    /// Long contexts: keys split over blocks.
    Split { max_keys: usize, splits: usize },
    /// One block per (token, head): the scores in `shared` bytes of shared
    /// memory, or in tiles; `fused_store`: the kernel stores the step's keys
    /// and values.
    Single {
        tiled: bool,
        shared: usize,
        fused_store: bool,
    },
}

/// The arguments the decode attention kernels (`attention`,
/// `attention_tiled`, `attention_split`) begin with: q, the key and value
/// caches, the output (or the partial outputs), base, pos; n_heads,
/// n_kv_heads, head_dim, the cache's width; the score scale.
struct AttentionArgs {
    ptrs: [u64; 6],
    ints: [i32; 4],
    scale: f32,
}

impl AttentionArgs {
    fn new(
        ptrs: [u64; 6],
        (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
        width: usize,
        scale: f32,
    ) -> Self {
        AttentionArgs {
            ptrs,
            ints: [
                n_heads as i32,
                n_kv_heads as i32,
                head_dim as i32,
                width as i32,
            ],
            scale,
        }
    }

    /// Push them onto `a`, in the kernels' order.
    fn push<'a>(&'a self, a: &mut KernelArgs<'a>) {
        a.args(&self.ptrs).args(&self.ints).arg(&self.scale);
    }
}

/// Row groups a decode GEMV block asks L2 for before it waits on the
/// kernel before it: its first one where a block has at most three rounds of
/// groups (the q/k/v and o projections, whose first round is a large share
/// of the work), none in the long launches (gate/up, down), where the early
/// requests only compete with the previous GEMV's tail. On an H100 a first
/// group everywhere was +1.5 % (7B) and −1.2 % (32B) against none.
fn gemv_prefetch_groups(groups: usize, blocks: usize) -> i32 {
    (groups <= 3 * blocks.max(1)) as i32
}

/// Slices of the keys decode attention splits each (token, head) into:
/// enough blocks for about four per SM, at least 256 keys per slice (1: no
/// split). The partial outputs then stay small (about 4 · SMs · (head dim +
/// 2) floats) whatever the context.
fn attention_splits(token_heads: usize, max_keys: usize, sms: usize) -> usize {
    let want = (4 * sms).div_ceil(token_heads.max(1));
    want.clamp(1, max_keys.div_ceil(256).max(1))
}

/// Keys from which decode attention splits them over blocks: 1024 (one
/// block per (token, head) is as fast below), `FERRY_ATTN_SPLIT=N`, or never
/// with 0.
fn split_min_from_env() -> usize {
    match crate::settings::parse::<usize>("FERRY_ATTN_SPLIT") {
        Some(0) => usize::MAX,
        Some(n) => n,
        None => 1024,
    }
}

fn grid(n: usize, block: u32) -> LaunchConfig {
    let blocks = n.div_ceil(block as usize).clamp(1, 65535 * 8) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    pub fn new(ordinal: usize) -> Result<Self, BackendError> {
        availability().map_err(BackendError::Invalid)?;
        let ctx = CudaContext::new(ordinal).map_err(err)?;
        let (free, total) = ctx.mem_get_info().map_err(err)?;
        let ledger = MemoryLedger {
            baseline: (total - free) as u64,
            budget: std::sync::atomic::AtomicU64::new(u64::MAX),
            peak: std::sync::atomic::AtomicU64::new(0),
        };
        let stream = ctx.default_stream();
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(err)?
            .max(1) as u32;
        let major = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )
            .map_err(err)?;
        let attr = |a| ctx.attribute(a).map_err(err).map(|v| v.max(0) as usize);
        use cudarc::driver::sys::CUdevice_attribute as A;
        let smem = SmemLimits {
            sms: sm_count as usize,
            per_sm: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?,
            per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            reserved: attr(A::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK)?,
        };
        let blas = CudaBlas::new(stream.clone()).map_err(err)?;
        let (k, cached) = load_kernels(&ctx)?;
        let flash_wgmma = k.flash_wgmma.is_some()
            && flash_wgmma_from(crate::settings::get("FERRY_FLASH"))
                .map_err(BackendError::Invalid)?;
        let name = format!("CUDA ({})", ctx.name().unwrap_or_else(|_| "GPU".into()));
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            k,
            scratch: Mutex::new(Scratch::default()),
            expert_tables: Mutex::new(Default::default()),
            tables: Mutex::new(BatchTables::default()),
            q8: Mutex::new(Q8Cache::default()),
            q8_epoch: std::sync::atomic::AtomicU64::new(0),
            int_gemv: crate::settings::get("FERRY_GEMV") != Some("float"),
            smem_gemv: !matches!(crate::settings::get("FERRY_GEMV"), Some("float" | "warp")),
            gemv_wpr: crate::settings::get("FERRY_GEMV_WPR").map(str::to_string),
            qkv_fused: crate::settings::get("FERRY_GEMV") != Some("noqkv"),
            // Registers held to 3 blocks per SM by default: +3.4 % (7B) and
            // +3.5 % (32B) decode on two H200 machines against none; 4 is slower.
            gemv_bound: match crate::settings::get("FERRY_GEMV_BOUND") {
                Some("0") => 0,
                Some("4") => 2,
                _ => 1,
            },
            attn_q8: crate::settings::get("FERRY_ATTN_Q8") != Some("0"),
            norm_split: crate::settings::get("FERRY_NORM_SPLIT") != Some("0"),
            attn_kv: crate::settings::get("FERRY_ATTN_KV") != Some("0"),
            chained: major >= 9 && crate::settings::get("FERRY_PDL") != Some("0"),
            gemv_prefetch: crate::settings::parse::<i32>("FERRY_GEMV_PREFETCH")
                .map(|n| n.clamp(0, 8)),
            gemv_flags: {
                let row_barrier = crate::settings::get("FERRY_GEMV_BAR") != Some("block");
                let preload = crate::settings::get("FERRY_GEMV_PRELOAD") != Some("0");
                (row_barrier as i32 * GEMV_ROW_BARRIER) | (preload as i32 * GEMV_PRELOAD)
            },
            rope_fused: crate::settings::get("FERRY_ROPE_FUSED") != Some("0"),
            ffn_f16: crate::settings::get("FERRY_FFN_F16") != Some("0"),
            ring_plain: major >= 9 && !matches!(crate::settings::get("FERRY_GEMV_RING"), Some("0")),
            ring_swiglu: major >= 9 && crate::settings::get("FERRY_GEMV_RING") == Some("all"),
            ring: RingChoice {
                consumers: match crate::settings::get("FERRY_GEMV_RING_WARPS") {
                    Some("8") => Some(8),
                    Some("16") => Some(16),
                    _ => None,
                },
                ring_bytes: crate::settings::parse::<usize>("FERRY_GEMV_RING_KIB")
                    .map_or(160, |k| k.clamp(16, 224))
                    << 10,
                min_row_bytes: crate::settings::parse::<usize>("FERRY_GEMV_RING_MIN_ROW")
                    .unwrap_or(4096),
            },
            smem,
            sm_count,
            occupancy: Mutex::new(Default::default()),
            flash: std::sync::atomic::AtomicBool::new(
                crate::settings::get("FERRY_ATTENTION") != Some("naive"),
            ),
            flash_wgmma: std::sync::atomic::AtomicBool::new(flash_wgmma),
            tiled_decode: std::sync::atomic::AtomicBool::new(false),
            split_min: std::sync::atomic::AtomicUsize::new(split_min_from_env()),
            attn_parts: Mutex::new(None),
            kernels_from_cache: cached,
            name,
            ledger,
        })
    }

    /// Enforce a VRAM budget from now on (`None`: only measure).
    pub fn set_budget(&self, budget: Option<u64>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.ledger
            .budget
            .store(budget.unwrap_or(u64::MAX), Relaxed);
    }

    /// The budget being enforced, if any.
    pub fn budget(&self) -> Option<u64> {
        let b = self
            .ledger
            .budget
            .load(std::sync::atomic::Ordering::Relaxed);
        (b != u64::MAX).then_some(b)
    }

    /// Free the f16 conversion workspace (dequantized weights for batched
    /// products): prefill needs it, decode steps of up to 8 tokens do not,
    /// and a later batched product allocates it again.
    pub fn release_workspace(&self) -> Result<(), BackendError> {
        *self.scratch.lock().expect("scratch lock") = Scratch::default();
        // Freed buffers go back to the device at the next synchronisation.
        self.stream.synchronize().map_err(err)
    }

    /// Device memory ferry uses now (see `MemoryLedger`).
    pub fn memory_in_use(&self) -> Result<u64, BackendError> {
        let (free, total) = self.ctx.mem_get_info().map_err(err)?;
        Ok(((total - free) as u64).saturating_sub(self.ledger.baseline))
    }

    /// The most device memory in use at any check since the last reset.
    pub fn peak_memory(&self) -> u64 {
        self.ledger.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn reset_peak(&self) -> Result<(), BackendError> {
        let now = self.memory_in_use()?;
        self.ledger
            .peak
            .store(now, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Record the memory in use after an allocation (`what`) and fail if it
    /// is over the budget.
    pub fn account(&self, what: &str, bytes: usize) -> Result<(), BackendError> {
        use std::sync::atomic::Ordering::Relaxed;
        let used = self.memory_in_use()?;
        self.ledger.peak.fetch_max(used, Relaxed);
        let budget = self.ledger.budget.load(Relaxed);
        if used > budget {
            return Err(BackendError::OverBudget {
                used,
                budget,
                what: format!("{what} of {bytes} bytes"),
            });
        }
        Ok(())
    }

    pub fn free_memory(&self) -> Result<(usize, usize), BackendError> {
        self.ctx.mem_get_info().map_err(err)
    }

    fn upload<T: cudarc::driver::DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>, BackendError> {
        self.forget_q8();
        let out = self.stream.clone_htod(v).map_err(err)?;
        self.account("an upload", std::mem::size_of_val(v))?;
        Ok(out)
    }

    /// Activations from host memory (a layer boundary where the batch moves
    /// from the CPU back to the GPU).
    pub fn act_from_host(
        &self,
        n: usize,
        width: usize,
        data: &[f32],
    ) -> Result<CudaAct, BackendError> {
        assert_eq!(data.len(), n * width, "act_from_host: shape");
        Ok(CudaAct {
            n,
            width,
            data: self.upload(data)?,
        })
    }

    /// Activations read by a kernel straight from page-locked host memory
    /// (unified addressing) rather than copied: a copy would queue behind the
    /// weight copies that keep the copy engine busy while the CPU computes.
    /// `staging` holds at least `n · width` values and must not be written
    /// again before the compute stream has passed this point.
    pub fn act_from_pinned(
        &self,
        staging: &PinnedHostSlice<f32>,
        n: usize,
        width: usize,
    ) -> Result<CudaAct, BackendError> {
        let total = n * width;
        if staging.len() < total {
            return Err(BackendError::Invalid(
                "act_from_pinned: staging too small".into(),
            ));
        }
        let mut out = self.act(n, width)?;
        let src = staging.as_ptr().map_err(err)? as u64;
        let mut b = self.stream.launch_builder(&self.k.copy_f32);
        b.arg(&src).arg(&mut out.data).arg(&total);
        // SAFETY: copy_f32(src, dst, n); src addresses `total` floats of pinned
        // host memory that stays allocated and unchanged until the kernel ran.
        unsafe { b.launch(grid(total, 256)) }.map_err(err)?;
        Ok(out)
    }

    /// Copy the rows `rows` (slots `seq · n_ctx + pos`) of a KV cache to the host.
    pub fn kv_to_host(
        &self,
        kv: &CudaKv,
        rows: std::ops::Range<usize>,
        k: &mut [f16],
        v: &mut [f16],
    ) -> Result<(), BackendError> {
        let r = rows.start * kv.width..rows.end * kv.width;
        self.stream
            .memcpy_dtoh(&kv.k.slice(r.clone()), &mut k[r.clone()])
            .map_err(err)?;
        self.stream
            .memcpy_dtoh(&kv.v.slice(r.clone()), &mut v[r])
            .map_err(err)
    }

    /// Copy the rows `rows` of a host KV cache into a device one.
    pub fn kv_from_host(
        &self,
        kv: &mut CudaKv,
        rows: std::ops::Range<usize>,
        k: &[f16],
        v: &[f16],
    ) -> Result<(), BackendError> {
        let r = rows.start * kv.width..rows.end * kv.width;
        self.stream
            .memcpy_htod(&k[r.clone()], &mut kv.k.slice_mut(r.clone()))
            .map_err(err)?;
        self.stream
            .memcpy_htod(&v[r.clone()], &mut kv.v.slice_mut(r))
            .map_err(err)
    }

    pub(crate) fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, BackendError> {
        self.forget_q8();
        let out = self.stream.alloc_zeros::<T>(n.max(1)).map_err(err)?;
        self.account("a buffer", n * std::mem::size_of::<T>())?;
        Ok(out)
    }

    /// Activations may change: the quantized copy no longer matches.
    fn forget_q8(&self) {
        self.q8_epoch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The whole of `w` as f16 into `out`. Q4_K, Q5_K and Q6_K matrices
    /// (nearly all of a Q4_K_M or Q5_K_M model's bytes) take kernels that
    /// decode a superblock per warp at memory speed; other types the
    /// 8-element one.
    fn dequantize_f16(&self, w: &CudaWeight, out: &mut CudaSlice<f16>) -> Result<(), BackendError> {
        let (rows, cols) = (w.rows, w.cols);
        let elems = rows * cols;
        let superblocks = match w.ty {
            GgmlType::Q4_K if w.ptr.is_multiple_of(16) => Some(&self.k.dequant_q4k_f16),
            GgmlType::Q5_K if w.ptr.is_multiple_of(16) => Some(&self.k.dequant_q5k_f16),
            GgmlType::Q6_K if w.ptr.is_multiple_of(2) => Some(&self.k.dequant_q6k_f16),
            _ => None,
        };
        if let Some(kernel) = superblocks {
            let n_blocks = elems / 256;
            let mut b = self.stream.launch_builder(kernel);
            b.arg(&w.ptr).arg(out).arg(&n_blocks);
            // Four superblocks per warp, 32 lanes each.
            // SAFETY: `w` holds `n_blocks` blocks (rows are whole superblocks)
            // and `out` at least `elems` halfs; alignment checked above.
            unsafe { b.launch(grid(n_blocks.div_ceil(4) * 32, 256)) }.map_err(err)?;
            return Ok(());
        }
        let (be, bb) = (w.ty.block_elems() as i32, w.ty.block_bytes() as i32);
        let (ty, rows_i, cols_i) = (w.ty.id() as i32, rows as i32, cols as i32);
        // Whole 8-element groups take the vectorised kernel (every real
        // model's rows); anything else the element-wise one.
        let (kernel, threads) = if cols % 8 == 0 {
            (&self.k.dequant8_f16, elems / 8)
        } else {
            (&self.k.dequant_f16, elems)
        };
        let mut b = self.stream.launch_builder(kernel);
        b.arg(&w.ptr)
            .arg(out)
            .arg(&ty)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&be)
            .arg(&bb);
        // SAFETY: argument types match the kernel signature; buffers are sized by shape.
        unsafe { b.launch(grid(threads, 256)) }.map_err(err)?;
        Ok(())
    }

    /// The first `len` values of `x` as f16 into `out`.
    fn to_f16(
        &self,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f16>,
        len: usize,
    ) -> Result<(), BackendError> {
        if len.is_multiple_of(4) {
            let n4 = len / 4;
            let mut b = self.stream.launch_builder(&self.k.f32_to_f16_x4);
            b.arg(x).arg(out).arg(&n4);
            // SAFETY: both buffers hold `len` values; device allocations are
            // 256-byte aligned, so the 16- and 8-byte accesses are aligned.
            unsafe { b.launch(grid(n4, 256)) }.map_err(err)?;
        } else {
            let mut b = self.stream.launch_builder(&self.k.f32_to_f16);
            b.arg(x).arg(out).arg(&len);
            // SAFETY: both buffers hold `len` values.
            unsafe { b.launch(grid(len, 256)) }.map_err(err)?;
        }
        Ok(())
    }

    /// What the f16 workspace's activation copy is of (`Scratch::x_of`):
    /// the activation's buffer and shape, and the activation epoch, which
    /// anything that may change activations moves.
    fn f16_copy_key(&self, a: &CudaAct) -> (u64, usize, usize, u64) {
        (
            a.data.device_ptr(&self.stream).0,
            a.n,
            a.width,
            self.q8_epoch.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Grow the f16 workspace to at least `need_w` weight and `need_x`
    /// activation values (a new activation buffer holds nobody's copy).
    fn reserve_f16(
        &self,
        s: &mut Scratch,
        need_w: usize,
        need_x: usize,
    ) -> Result<(), BackendError> {
        if need_w > 0 && s.w.as_ref().is_none_or(|w| w.len() < need_w) {
            s.w = Some(self.zeros::<f16>(need_w)?);
        }
        if need_x > 0 && s.x.as_ref().is_none_or(|x| x.len() < need_x) {
            s.x = Some(self.zeros::<f16>(need_x)?);
            s.x_of = None;
        }
        Ok(())
    }

    /// `gate = silu(gate) · up`, also written as f16 into the workspace and
    /// recorded there as `gate`'s copy, so that the down projection that
    /// follows converts nothing. `gate.data.len()` must be a multiple of 4.
    fn swiglu_to_f16(&self, gate: &mut CudaAct, up: &CudaAct) -> Result<(), BackendError> {
        self.forget_q8();
        let len = gate.data.len();
        let mut scratch = self.scratch.lock().expect("scratch lock");
        self.reserve_f16(&mut scratch, 0, len)?;
        let key = self.f16_copy_key(gate);
        let xf = scratch.x.as_mut().expect("allocated");
        let n4 = len / 4;
        let mut b = self.stream.launch_builder(&self.k.swiglu_f16_x4);
        b.arg(&mut gate.data).arg(&up.data).arg(xf).arg(&n4);
        // SAFETY: gate and up hold `len` values, the workspace at least as
        // many; device allocations are aligned for the vector accesses.
        unsafe { b.launch(grid(n4, 256)) }.map_err(err)?;
        scratch.x_of = Some(key);
        Ok(())
    }

    /// A batch's feed-forward block with its intermediate products in f16:
    /// the gate and up GEMMs write f16 into the first halves of `gate`'s and
    /// `up`'s buffers, SwiGLU reads them and writes the down projection's f16
    /// input into the workspace, and the down GEMM adds into `acc`. Against
    /// f32 products and an f32 SwiGLU result, SwiGLU moves 1.4 instead of 3.2
    /// GB per 32B layer at 8192 tokens (433 against 1030 us on an H100) and
    /// the GEMMs write half as much; the products are rounded to f16, as the
    /// down projection's input already was.
    fn feed_forward_f16(
        &self,
        x: &CudaAct,
        [w_gate, w_up, w_down]: [&CudaWeight; 3],
        gate: &mut CudaAct,
        up: &mut CudaAct,
        acc: &mut CudaAct,
    ) -> Result<(), BackendError> {
        use cudarc::cublas::sys::cudaDataType::CUDA_R_16F;
        let (n, cols, inner) = (x.n, w_gate.cols, w_gate.rows);
        // The key of `x`'s f16 copy (the norm before may have written it) is
        // taken before anything here moves the activation epoch.
        let x_key = self.f16_copy_key(x);
        let mut scratch = self.scratch.lock().expect("scratch lock");
        let need_w = (inner * cols).max(w_down.rows * w_down.cols);
        self.reserve_f16(&mut scratch, need_w, n * cols.max(inner))?;
        let x_fresh = scratch.x_of == Some(x_key);
        // Afterwards the workspace holds the SwiGLU result, no named
        // activation, and the residual stream `acc` has changed.
        scratch.x_of = None;
        self.forget_q8();
        let Scratch { w: wf, x: xf, .. } = &mut *scratch;
        let (wf, xf) = (
            wf.as_mut().expect("allocated"),
            xf.as_mut().expect("allocated"),
        );
        if !x_fresh {
            self.to_f16(&x.data, xf, n * cols)?;
        }
        let (g_ptr, _gg) = gate.data.device_ptr_mut(&self.stream);
        let (u_ptr, _gu) = up.data.device_ptr_mut(&self.stream);
        // SAFETY (both GEMMs): `gate` and `up` hold n · inner f32, room for
        // as many f16.
        self.dequantize_f16(w_gate, wf)?;
        self.gemm_f16_to(wf, xf, (g_ptr, CUDA_R_16F), (inner, n, cols), false)?;
        self.dequantize_f16(w_up, wf)?;
        self.gemm_f16_to(wf, xf, (u_ptr, CUDA_R_16F), (inner, n, cols), false)?;
        let n4 = n * inner / 4;
        {
            let mut b = self.stream.launch_builder(&self.k.swiglu_h16_x4);
            b.arg(&g_ptr).arg(&u_ptr).arg(&mut *xf).arg(&n4);
            // SAFETY: three buffers of at least n · inner f16 (the workspace
            // was sized above), 8-byte aligned as device allocations are.
            unsafe { b.launch(grid(n4, 256)) }.map_err(err)?;
        }
        self.dequantize_f16(w_down, wf)?;
        self.gemm_f16(wf, xf, &mut acc.data, (w_down.rows, n, w_down.cols), true)
    }

    /// `out = x · Wᵀ`, or with `accumulate` (batches above the GEMV size
    /// only) `out += x · Wᵀ` inside the GEMM.
    fn try_matmul(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        out: &mut CudaAct,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        let (n, cols, rows) = (x.n, w.cols, w.rows);
        if accumulate && n <= crate::units::GEMV_MAX_BATCH {
            return Err(BackendError::Invalid(
                "an accumulating product of a decode-sized batch (use matmul and add)".into(),
            ));
        }
        // Writing over the activation whose quantized copy is kept makes it stale.
        let out_ptr = out.data.device_ptr(&self.stream).0;
        if self
            .q8
            .lock()
            .expect("q8 lock")
            .of
            .is_some_and(|(p, ..)| p == out_ptr)
        {
            self.forget_q8();
        }
        let (be, bb) = (w.ty.block_elems() as i32, w.ty.block_bytes() as i32);
        let (ty, rows_i, cols_i, n_i) = (w.ty.id() as i32, rows as i32, cols as i32, n as i32);
        if n <= crate::units::GEMV_MAX_BATCH {
            // Q4_K and Q6_K rows (most of a Q4_K_M model's bytes) have their own
            // kernels, which need their blocks aligned for wide loads; the
            // 8-element kernel needs whole 8-element groups (and float4 loads of
            // the activations); any other width takes the plain one.
            // The kernel compiled for the smallest power of two ≥ n tokens.
            let by_tokens = n.next_power_of_two().trailing_zeros() as usize;
            let special = match w.ty {
                GgmlType::Q4_K if w.ptr.is_multiple_of(16) => Some(&self.k.gemv_q4k[by_tokens]),
                GgmlType::Q6_K if w.ptr.is_multiple_of(2) => Some(&self.k.gemv_q6k[by_tokens]),
                _ => None,
            };
            if self.int_gemv && matches!(w.ty, GgmlType::Q4_K | GgmlType::Q6_K) && special.is_some()
            {
                let kernel = match w.ty {
                    GgmlType::Q4_K => &self.k.gemv_q4k_q8[by_tokens],
                    _ => &self.k.gemv_q6k_q8[by_tokens],
                };
                return self.gemv_q8(x, w, out, kernel);
            }
            if self.int_gemv
                && let Some(i) = TYPED_GEMVS
                    .iter()
                    .position(|&(ty, _, align)| ty == w.ty && w.ptr.is_multiple_of(align as u64))
            {
                return self.gemv_q8(x, w, out, &self.k.gemv_typed[i][by_tokens]);
            }
            if let Some(kernel) = special {
                let mut b = self.stream.launch_builder(kernel);
                b.arg(&w.ptr).arg(&x.data).arg(&mut out.data);
                b.arg(&rows_i).arg(&cols_i).arg(&n_i);
                // SAFETY: argument types match the kernel signature; buffers are sized by shape.
                unsafe { b.launch(grid(rows * 32, 128)) }.map_err(err)?;
                return Ok(());
            }
            let kernel = if cols % 8 == 0 {
                &self.k.gemv8
            } else {
                &self.k.gemv
            };
            let mut b = self.stream.launch_builder(kernel);
            b.arg(&w.ptr).arg(&x.data).arg(&mut out.data);
            b.arg(&ty)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&n_i)
                .arg(&be)
                .arg(&bb);
            // SAFETY: argument types match the kernel's signature; buffers are sized by shape.
            unsafe { b.launch(grid(rows * 32, 256)) }.map_err(err)?;
            return Ok(());
        }
        let mut scratch = self.scratch.lock().expect("scratch lock");
        let need_x = n * cols;
        self.reserve_f16(&mut scratch, rows * cols, need_x)?;
        let x_key = self.f16_copy_key(x);
        // Afterwards the copy holds `x` either way, so a copy of what the
        // product overwrites (`out` is not `x`) is never kept.
        let x_fresh = scratch.x_of == Some(x_key);
        scratch.x_of = Some(x_key);
        let Scratch { w: wf, x: xf, .. } = &mut *scratch;
        let (wf, xf) = (
            wf.as_mut().expect("allocated"),
            xf.as_mut().expect("allocated"),
        );
        self.dequantize_f16(w, wf)?;
        if !x_fresh {
            self.to_f16(&x.data, xf, need_x)?;
        }
        self.gemm_f16(wf, xf, &mut out.data, (rows, n, cols), accumulate)
    }

    /// cuBLAS: `out[n][rows] (+)= x[n][cols] · w[rows][cols]ᵀ`, f16 inputs,
    /// f32 accumulation and output.
    fn gemm_f16(
        &self,
        w: &CudaSlice<f16>,
        x: &CudaSlice<f16>,
        out: &mut CudaSlice<f32>,
        dims: (usize, usize, usize),
        accumulate: bool,
    ) -> Result<(), BackendError> {
        let (c_ptr, _gc) = out.device_ptr_mut(&self.stream);
        let out_type = cudarc::cublas::sys::cudaDataType::CUDA_R_32F;
        self.gemm_f16_to(w, x, (c_ptr, out_type), dims, accumulate)
    }

    /// `gemm_f16` into a raw device buffer of f32 or f16 (`out`: pointer and
    /// type; f32 accumulation either way), which must hold `n · rows` values.
    fn gemm_f16_to(
        &self,
        w: &CudaSlice<f16>,
        x: &CudaSlice<f16>,
        (c_ptr, out_type): (u64, cudarc::cublas::sys::cudaDataType),
        (rows, n, cols): (usize, usize, usize),
        accumulate: bool,
    ) -> Result<(), BackendError> {
        let (rows_i, n_i, cols_i) = (rows as i32, n as i32, cols as i32);
        // Row-major out[n][rows] is column-major (rows × n) = Wᵀᵀ · Xᵀ: A = W
        // stored (cols × rows) column-major, transposed; B = X stored (cols × n).
        use cudarc::cublas::sys;
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        let (a_ptr, _ga) = w.device_ptr(&self.stream);
        let (b_ptr, _gb) = x.device_ptr(&self.stream);
        // SAFETY: pointers are live device allocations of the sizes the call
        // reads/writes (the caller's word for `c_ptr`).
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                rows_i,
                n_i,
                cols_i,
                &alpha as *const f32 as *const _,
                a_ptr as *const _,
                sys::cudaDataType::CUDA_R_16F,
                cols_i,
                b_ptr as *const _,
                sys::cudaDataType::CUDA_R_16F,
                cols_i,
                &beta as *const f32 as *const _,
                c_ptr as *mut _,
                out_type,
                rows_i,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(err)
    }

    /// A k-quant decode GEMV on 8-bit activations: `x` is quantized (once
    /// while it stays unchanged), then the integer kernel for ≤ 2^`by_tokens` tokens.
    /// The 8-bit copy of `x` (quantized now unless the cache holds it).
    fn quantized(&self, x: &CudaAct) -> Result<std::sync::MutexGuard<'_, Q8Cache>, BackendError> {
        use std::sync::atomic::Ordering::Relaxed;
        let (n, cols) = (x.n, x.width);
        let x_ptr = x.data.device_ptr(&self.stream).0;
        let mut c = self.q8.lock().expect("q8 lock");
        let key = (x_ptr, n, cols);
        let fresh = c
            .of
            .is_some_and(|(p, nn, cc, e)| (p, nn, cc) == key && e == self.q8_epoch.load(Relaxed));
        if !fresh {
            let total = n * cols;
            c.reserve(self, total)?;
            let Q8Cache { q, d, s, .. } = &mut *c;
            let (q, d, s) = (
                q.as_mut().expect("allocated"),
                d.as_mut().expect("allocated"),
                s.as_mut().expect("allocated"),
            );
            let (cols_i, n_i) = (cols as i32, n as i32);
            let (q, d, s) = (
                q.device_ptr_mut(&self.stream).0,
                d.device_ptr_mut(&self.stream).0,
                s.device_ptr_mut(&self.stream).0,
            );
            let mut a = KernelArgs::new();
            a.arg(&x_ptr).arg(&q).arg(&d).arg(&s).arg(&cols_i).arg(&n_i);
            // SAFETY: quantize_q8(x, q, d, s16, cols, n); buffers hold n·cols
            // values, n·cols/32 scales and twice as many half sums.
            unsafe { self.launch_chained(&self.k.quantize_q8, grid(total, 128), &mut a) }?;
            c.of = Some((x_ptr, n, cols, self.q8_epoch.load(Relaxed)));
        }
        Ok(c)
    }

    /// Launch `f` on the compute stream as a programmatic dependent launch:
    /// the kernel may start while the previous one finishes, and must call
    /// `chain_wait()` (ferry.cu) before it touches anything an earlier kernel
    /// writes. The decode step's chain (norms, GEMVs, RoPE, KV store,
    /// attention, quantization) runs this way, so that each GEMV's first
    /// weights are on their way while the kernels before it end. Where the
    /// card has no such launches (before compute capability 9.0) or
    /// `FERRY_PDL=0`, an ordinary launch.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters, and the buffers they point
    /// to must hold what the kernel reads and writes at this launch's
    /// configuration.
    unsafe fn launch_chained(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: &mut KernelArgs,
    ) -> Result<(), BackendError> {
        use cudarc::driver::sys;
        self.ctx.bind_to_thread().map_err(err)?;
        if !self.chained {
            // SAFETY: the caller's contract.
            return unsafe {
                cudarc::driver::result::launch_kernel(
                    f.cu_function(),
                    cfg.grid_dim,
                    cfg.block_dim,
                    cfg.shared_mem_bytes,
                    self.stream.cu_stream(),
                    &mut args.ptrs,
                )
            }
            .map_err(err);
        }
        // SAFETY: an all-zero attribute is valid plain data; id and value set below.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: the caller's contract; `config` and `attr` outlive the call.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                args.ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(err)
    }

    /// `out = x · wᵀ` on the 8-bit copy of `x` by `kernel` (a
    /// `gemv_*_q8_N` or `gemv_q8_TYPE_N` entry: the one for this type and
    /// this many tokens), unless the shared-memory kernels take it.
    fn gemv_q8(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        out: &mut CudaAct,
        kernel: &CudaFunction,
    ) -> Result<(), BackendError> {
        if self.gemv_smem(x, w, None, None, false, out)? {
            return Ok(());
        }
        let (n, cols, rows) = (x.n, w.cols, w.rows);
        let c = self.quantized(x)?;
        let (rows_i, cols_i, n_i) = (rows as i32, cols as i32, n as i32);
        let mut b = self.stream.launch_builder(kernel);
        b.arg(&w.ptr)
            .arg(c.q.as_ref().expect("filled"))
            .arg(c.d.as_ref().expect("filled"))
            .arg(c.s.as_ref().expect("filled"))
            .arg(&mut out.data)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&n_i);
        // SAFETY: matches every entry's (w, xq, xd, xs, out, rows, cols, n):
        // one warp per row; rows are whole blocks, whose element counts are
        // multiples of the 32 the 8-bit copy is quantized by; the weights'
        // alignment is checked by the caller.
        unsafe { b.launch(grid(rows * 32, 128)) }.map_err(err)?;
        Ok(())
    }

    /// Whether the shared-memory GEMV takes `x · wᵀ` (and `w_up` beside it).
    fn smem_gemv_fits(&self, x: &CudaAct, w: &CudaWeight, w_up: Option<&CudaWeight>) -> bool {
        let aligned = |w: &CudaWeight| match smem_gemv_format(w.ty) {
            Some((_, align)) => w.ptr.is_multiple_of(align),
            None => false,
        };
        self.int_gemv
            && self.smem_gemv
            && (1..=2).contains(&x.n)
            && x.width == w.cols
            && w.cols.is_multiple_of(256)
            && aligned(w)
            && gemv_smem_bytes(x.n, w.cols) <= GEMV_SMEM_MAX
            && w_up.is_none_or(|u| {
                w.ty == GgmlType::Q4_K
                    && u.ty == GgmlType::Q4_K
                    && (u.rows, u.cols) == (w.rows, w.cols)
                    && aligned(u)
            })
    }

    /// `out = x · wᵀ` by the persistent shared-memory kernels, with an
    /// epilogue: `+ bias`, `+ out` (`residual`: in place), or with `w_up`
    /// `silu(x · wᵀ) · (x · w_upᵀ)`. Returns false (nothing done) where they
    /// do not apply.
    fn gemv_smem(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        w_up: Option<&CudaWeight>,
        bias: Option<&CudaSlice<f32>>,
        residual: bool,
        out: &mut CudaAct,
    ) -> Result<bool, BackendError> {
        self.gemv_segments(
            x,
            &mut [GemvSpec {
                w,
                w_up,
                out,
                bias,
                residual,
            }],
        )
    }

    /// Up to three products of the same activations in one launch of the
    /// shared-memory kernels (x is staged once per block for all of them).
    /// Returns false (nothing done) unless every one of them fits.
    fn gemv_segments(&self, x: &CudaAct, specs: &mut [GemvSpec]) -> Result<bool, BackendError> {
        let swiglu = specs.iter().any(|s| s.w_up.is_some());
        let fits = (1..=3).contains(&specs.len())
            && specs.iter().all(|s| {
                self.smem_gemv_fits(x, s.w, s.w_up)
                    && (s.out.n, s.out.width) == (x.n, s.w.rows)
                    && s.w_up.is_some() == swiglu
            });
        if !fits {
            return Ok(false);
        }
        let (n, cols) = (x.n, x.width);
        let c = self.quantized(x)?;
        let t = n - 1; // kernels for 1 and 2 tokens
        let all_formats = specs
            .iter()
            .any(|s| !matches!(s.w.ty, GgmlType::Q4_K | GgmlType::Q6_K));
        let nb = cols / 256;
        let seg_rows: Vec<usize> = specs.iter().map(|s| s.w.rows).collect();
        let row_bytes = specs
            .iter()
            .map(|s| cols / s.w.ty.block_elems() * s.w.ty.block_bytes())
            .max()
            .unwrap_or(0);
        let ring = if ((swiglu && self.ring_swiglu) || (!swiglu && self.ring_plain))
            && row_bytes >= self.ring.min_row_bytes
        {
            gemv_ring_plan(
                &seg_rows,
                row_bytes,
                if swiglu { 2 } else { 1 },
                gemv_smem_bytes(n, cols),
                self.smem,
                self.ring,
            )
        } else {
            None
        };
        if let Some(plan) = ring {
            let kernel = if swiglu {
                &self.k.gemv_swiglu_ring[t]
            } else if all_formats {
                &self.k.gemv_ring_all[t]
            } else {
                &self.k.gemv_ring[t]
            };
            let segs = self.gemv_segs(&c, specs, plan.consumers / plan.wpr);
            let (xq, xd, xs) = c.pointers(&self.stream);
            let ints = [
                cols as i32,
                n as i32,
                plan.wpr as i32,
                plan.consumers as i32,
                plan.ring_at as i32,
                plan.stages as i32,
                plan.stage_bytes as i32,
            ];
            let mut a = KernelArgs::new();
            a.arg(&segs).arg(&xq).arg(&xd).arg(&xs).args(&ints);
            let cfg = LaunchConfig {
                grid_dim: (
                    plan.blocks.min(segs.total_groups as usize).max(1) as u32,
                    1,
                    1,
                ),
                // The computing warps and the one that refills the ring.
                block_dim: (32 * (plan.consumers as u32 + 1), 1, 1),
                shared_mem_bytes: plan.smem as u32,
            };
            // SAFETY: matches gemv_*ring_N(segs, xq, xd, xs, cols, n, wpr,
            // consumers, ring_at, stages, stage_bytes); the segments as in the
            // shared-memory kernels below; the ring and its barriers lie
            // within `plan.smem` (gemv_ring_plan), each stage holds a row
            // group's 16-byte-aligned span (of gate and up: two halves).
            unsafe { self.launch_chained(kernel, cfg, &mut a) }?;
            return Ok(true);
        }
        let bound = self.gemv_bound;
        // Superblocks a warp loads per round: 8 lane groups × 1 (SwiGLU: gate
        // and up) or × 2 (the kernels' U / 2).
        let (kernel, per_round) = if swiglu {
            (&self.k.gemv_swiglu_smem[bound][t], 8)
        } else if all_formats {
            (&self.k.gemv_smem_all[bound][t], 16)
        } else {
            (&self.k.gemv_smem[bound][t], 16)
        };
        let smem = gemv_smem_bytes(n, cols);
        let per_sm = {
            let mut occ = self.occupancy.lock().expect("occupancy lock");
            let key = (kernel.cu_function() as u64, smem);
            match occ.get(&key) {
                Some(&b) => b,
                None => {
                    let b = kernel
                        .occupancy_max_active_blocks_per_multiprocessor(256, smem, None)
                        .map_err(err)?
                        .max(1);
                    occ.insert(key, b);
                    b
                }
            }
        };
        let resident_warps = (self.sm_count * per_sm) as usize * 8;
        let rows: usize = specs.iter().map(|s| s.w.rows).sum();
        let balanced = || gemv_warps_per_row_balanced(&seg_rows, nb, resident_warps / 8);
        let wpr = match self.gemv_wpr.as_deref() {
            Some("cover") => gemv_warps_per_row_cover(nb, per_round),
            Some("fill") => gemv_warps_per_row(rows, nb, resident_warps),
            Some(w) => match w.parse::<usize>() {
                Ok(w @ (1 | 2 | 4 | 8)) => w,
                _ => balanced(),
            },
            None => balanced(),
        };
        let segs = self.gemv_segs(&c, specs, 8 / wpr);
        let groups = segs.total_groups as usize;
        let blocks = groups.min(resident_warps / 8).max(1) as u32;
        let (cols_i, n_i, wpr_i) = (cols as i32, n as i32, wpr as i32);
        let prefetch = self
            .gemv_prefetch
            .unwrap_or_else(|| gemv_prefetch_groups(groups, blocks as usize));
        let (xq, xd, xs) = c.pointers(&self.stream);
        let mut a = KernelArgs::new();
        a.arg(&segs)
            .arg(&xq)
            .arg(&xd)
            .arg(&xs)
            .arg(&cols_i)
            .arg(&n_i)
            .arg(&wpr_i)
            .arg(&prefetch)
            .arg(&self.gemv_flags);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: matches gemv_*smem_N(segs, xq, xd, xs, cols, n, wpr,
        // prefetch, flags); each segment's weights hold rows × cols elements
        // (w2 likewise), its bias `rows` values, its output (and residual,
        // which is the output) n × rows; null (0) pointers switch epilogues
        // off; the 8-bit copy holds n·cols values.
        unsafe { self.launch_chained(kernel, cfg, &mut a) }?;
        Ok(true)
    }

    /// The kernels' view of `specs` in row groups of `rows_per_group`.
    fn gemv_segs(&self, c: &Q8Cache, specs: &mut [GemvSpec], rows_per_group: usize) -> GemvSegs {
        let mut segs = GemvSegs {
            count: specs.len() as i32,
            ..Default::default()
        };
        let mut groups = 0usize;
        for (k, spec) in specs.iter_mut().enumerate() {
            let out = spec.out.data.device_ptr_mut(&self.stream).0;
            if c.of.is_some_and(|(p, ..)| p == out) {
                // Writing over the activation whose copy is kept makes it stale.
                self.forget_q8();
            }
            segs.seg[k] = GemvSeg {
                w: spec.w.ptr,
                w2: spec.w_up.map_or(0, |u| u.ptr),
                out,
                bias: spec.bias.map_or(0, |b| b.device_ptr(&self.stream).0),
                residual: if spec.residual { out } else { 0 },
                rows: spec.w.rows as i32,
                fmt: smem_gemv_format(spec.w.ty).map_or(0, |(f, _)| f),
                groups_before: groups as i32,
                pad: 0,
            };
            groups += spec.w.rows.div_ceil(rows_per_group);
        }
        segs.total_groups = groups as i32;
        segs
    }

    /// `rope` on `q` (`n_heads` per token) and, with `k`, on its
    /// `n_kv_heads` too, in one launch.
    #[allow(clippy::too_many_arguments)]
    fn rope_launch(
        &self,
        q: &mut CudaAct,
        k: Option<&mut CudaAct>,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        rope: &RopeParams,
        positions: &[u32],
        [bq, bk]: [Option<&CudaSlice<f32>>; 2],
    ) {
        self.forget_q8();
        let half = rope.n_dims / 2;
        let cs = match self.rope_table(rope, positions) {
            Ok(cs) => cs,
            Err(e) => {
                eprintln!("ferry: {e}");
                self.ctx.record_err::<()>(Err(cudarc::driver::DriverError(
                    cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
                )));
                return;
            }
        };
        let cs = &*cs;
        let (hd, nd, neox, n) = (
            head_dim as i32,
            rope.n_dims as i32,
            (rope.kind == RopeKind::Neox) as i32,
            positions.len() as i32,
        );
        let (nq, nk) = (n_heads as i32, n_kv_heads as i32);
        let pairs = positions.len() * half;
        // No keys: a null k and no key heads (the kernel never touches k).
        let (k_ptr, nk) = match k {
            Some(k) => (k.data.device_ptr_mut(&self.stream).0, nk),
            None => (0u64, 0),
        };
        let q_ptr = q.data.device_ptr_mut(&self.stream).0;
        let cs_ptr = cs.device_ptr(&self.stream).0;
        let bias_ptr =
            |b: Option<&CudaSlice<f32>>| b.map_or(0u64, |b| b.device_ptr(&self.stream).0);
        let (bq_ptr, bk_ptr) = (bias_ptr(bq), bias_ptr(bk));
        let mut a = KernelArgs::new();
        a.arg(&q_ptr)
            .arg(&k_ptr)
            .arg(&cs_ptr)
            .arg(&bq_ptr)
            .arg(&bk_ptr)
            .arg(&nq)
            .arg(&nk)
            .arg(&hd)
            .arg(&nd)
            .arg(&neox)
            .arg(&n);
        let cfg = grid(pairs * (n_heads + nk as usize), 256);
        // SAFETY: matches rope_qk(q, k, cs, bq, bk, n_heads_q, n_heads_k,
        // head_dim, n_dims, neox, n): q (and k, unless n_heads_k is 0) hold n
        // rows of their heads, cs n · half (cos, sin) pairs, the biases (null
        // or, by the caller, with n_dims = head_dim) one row of q's and k's.
        if let Err(e) = unsafe { self.launch_chained(&self.k.rope_qk, cfg, &mut a) } {
            self.record(e);
        }
    }

    /// Record a failed launch so that `check` reports it.
    fn record(&self, e: BackendError) {
        eprintln!("ferry: {e}");
        self.ctx.record_err::<()>(Err(cudarc::driver::DriverError(
            cudarc::driver::sys::CUresult::CUDA_ERROR_UNKNOWN,
        )));
    }

    /// `out = rms_norm(x) · w` and its 8-bit copy in the quantized-activation
    /// cache (decode batches; see `rms_norm_q8` in gemv_persistent.cu).
    fn rms_norm_q8(
        &self,
        x: &CudaAct,
        w: &CudaSlice<f32>,
        eps: f32,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut c = self.q8.lock().expect("q8 lock");
        c.reserve(self, x.n * x.width)?;
        let out_ptr = out.data.device_ptr_mut(&self.stream).0;
        let width = x.width as i32;
        let Q8Cache { q, d, s, .. } = &mut *c;
        let (x_ptr, w_ptr) = (
            x.data.device_ptr(&self.stream).0,
            w.device_ptr(&self.stream).0,
        );
        let (q, d, s) = (
            q.as_mut().expect("reserved").device_ptr_mut(&self.stream).0,
            d.as_mut().expect("reserved").device_ptr_mut(&self.stream).0,
            s.as_mut().expect("reserved").device_ptr_mut(&self.stream).0,
        );
        let mut a = KernelArgs::new();
        a.arg(&x_ptr)
            .arg(&w_ptr)
            .arg(&out_ptr)
            .arg(&q)
            .arg(&d)
            .arg(&s)
            .arg(&width)
            .arg(&eps);
        // One block per row, or per row and 1024-element slice.
        let slices = if self.norm_split {
            x.width.div_ceil(1024)
        } else {
            1
        };
        let cfg = LaunchConfig {
            grid_dim: (x.n as u32, slices as u32, 1),
            ..block_per_row(x.n)
        };
        // SAFETY: rms_norm_q8(x, w, out, q, d, s16, width, eps): one block per
        // row (and slice); width ≤ 8192 and a multiple of 32 (checked by the
        // caller), so slices ≤ 8; the cache holds n·width values.
        unsafe { self.launch_chained(&self.k.rms_norm_q8, cfg, &mut a) }?;
        c.of = Some((out_ptr, x.n, x.width, self.q8_epoch.load(Relaxed)));
        Ok(())
    }

    fn elementwise(
        &self,
        f: &CudaFunction,
        x: &mut CudaSlice<f32>,
        y: Option<&CudaSlice<f32>>,
        extra: Option<i32>,
    ) {
        let n = x.len();
        let mut b = self.stream.launch_builder(f);
        b.arg(x);
        if let Some(y) = y {
            b.arg(y);
        }
        if let Some(e) = extra.as_ref() {
            b.arg(e);
        }
        b.arg(&n);
        // SAFETY: the kernels take (x, [y], [width], n) as declared in ferry.cu.
        if let Err(e) = unsafe { b.launch(grid(n, 256)) } {
            self.ctx.record_err::<()>(Err(e));
        }
    }
}

impl CudaBackend {
    /// The RoPE cos/sin table of `positions`, uploaded once per batch.
    fn rope_table(
        &self,
        rope: &RopeParams,
        positions: &[u32],
    ) -> Result<Arc<CudaSlice<f32>>, BackendError> {
        let mut key: Vec<u32> = positions.to_vec();
        key.extend([
            rope.n_dims as u32,
            rope.freq_base.to_bits(),
            (rope.kind == RopeKind::Neox) as u32,
        ]);
        key.extend(rope.fingerprint());
        let mut t = self.tables.lock().expect("tables lock");
        if let Some(cs) = cached(&t.rope, &key) {
            return Ok(cs);
        }
        let half = rope.n_dims / 2;
        let mut cs = vec![0f32; positions.len() * half * 2];
        let (mut c, mut s) = (vec![0f32; half], vec![0f32; half]);
        for (i, &p) in positions.iter().enumerate() {
            rope.cos_sin(p, &mut c, &mut s);
            for j in 0..half {
                cs[(i * half + j) * 2] = c[j];
                cs[(i * half + j) * 2 + 1] = s[j];
            }
        }
        let cs = Arc::new(self.upload(&cs)?);
        remember(&mut t.rope, key, cs.clone());
        Ok(cs)
    }

    /// KV slots, sequence bases and positions of a batch, uploaded once per batch.
    /// The batch's KV slots (`seq · n_ctx + pos`, checked against the cache's
    /// shape), each token's sequence base and positions, on the device.
    /// The step's cache slots, and each token's first key row (`bases`) and
    /// last key's offset from it (`pos`): a sliding window starts the keys at
    /// the window's first position, so every decode kernel attends over the
    /// window alone, and the new key's row `base + pos` stays the same.
    fn kv_tables(
        &self,
        batch: &Batch,
        n_ctx: usize,
        n_seq: usize,
        spec: &AttnSpec,
    ) -> Result<Arc<KvTables>, BackendError> {
        let slots: Vec<u32> = batch
            .cache_slots(n_seq, n_ctx)?
            .into_iter()
            .map(|s| s as u32)
            .collect();
        let mut key: Vec<u32> = batch.positions.to_vec();
        key.extend(batch.seqs);
        key.push(n_ctx as u32);
        key.push(spec.window.map_or(0, |w| w as u32));
        let mut t = self.tables.lock().expect("tables lock");
        if let Some(kv) = cached(&t.kv, &key) {
            return Ok(kv);
        }
        let first = |i: usize| spec.first_key(batch.positions[i] as usize);
        let bases: Vec<u32> = (0..batch.len())
            .map(|i| (batch.seqs[i] as usize * n_ctx + first(i)) as u32)
            .collect();
        let pos: Vec<u32> = (0..batch.len())
            .map(|i| batch.positions[i] - first(i) as u32)
            .collect();
        let kv = Arc::new((
            self.upload(&slots)?,
            self.upload(&bases)?,
            self.upload(&pos)?,
        ));
        remember(&mut t.kv, key, kv.clone());
        Ok(kv)
    }

    /// Whether prompt attention uses the tensor-core kernel.
    pub fn set_flash_attention(&self, on: bool) {
        self.flash.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Store the batch's keys and values in the cache, then attend:
    /// `heads` = (query heads, KV heads, head dimension). A batch of one
    /// sequence at consecutive positions (a prompt, or a chunk of one) runs
    /// on tensor cores with an online softmax (no n × n matrix, any length);
    /// other batches (decode steps of several sequences) take one block per
    /// (token, head) with every score in shared memory.
    #[allow(clippy::too_many_arguments)]
    /// Which attention kernels `attention_heads` runs for this batch.
    fn attention_path(&self, spec: &AttnSpec, batch: &Batch) -> AttentionPath {
        use std::sync::atomic::Ordering::Relaxed;
        let (n_heads, head_dim) = (spec.n_heads, spec.head_dim);
        let n = batch.len();
        // The tensor-core prompt kernel masks causally from the sequence's
        // start: a sliding window that cuts keys off takes the kernels below,
        // which start each token's keys where its window does (`kv_tables`).
        let window_cuts = batch
            .positions
            .iter()
            .any(|&p| spec.first_key(p as usize) > 0);
        let one_prompt = !window_cuts
            && n > 1
            && batch.seqs.iter().all(|&s| s == batch.seqs[0])
            && batch
                .positions
                .windows(2)
                .all(|w| w[1] == w[0].wrapping_add(1));
        if matches!(head_dim, 64 | 128) && one_prompt && self.flash.load(Relaxed) {
            return AttentionPath::Flash;
        }
        let max_keys = batch
            .positions
            .iter()
            .map(|&p| p as usize + 1 - spec.first_key(p as usize))
            .max()
            .unwrap_or(0);
        // Long contexts: keys split over blocks (`attention_split`). Shorter
        // ones: one block per (token, head), every score in shared memory
        // while it fits (44 KiB of the 48 beside the kernel's static arrays,
        // 2.1 KiB: 11264 keys), else keys in tiles with an online softmax.
        let forced_tiled = self.tiled_decode.load(Relaxed);
        let splits = attention_splits(n * n_heads, max_keys, self.sm_count as usize);
        if !forced_tiled
            && head_dim <= 512
            && splits > 1
            && max_keys >= self.split_min.load(Relaxed)
        {
            return AttentionPath::Split { max_keys, splits };
        }
        let shared = max_keys * 4;
        let tiled = shared > ATTENTION_SCORES_MAX || head_dim > 512 || forced_tiled;
        // Where every token is its sequence's only new one (decode steps),
        // `attention` stores the keys and values itself (`FERRY_ATTN_KV=0`:
        // kv_store does).
        let seqs = batch.seqs;
        let distinct_seqs = (1..seqs.len()).all(|i| !seqs[..i].contains(&seqs[i]));
        AttentionPath::Single {
            shared: if tiled { 0 } else { shared },
            tiled,
            fused_store: !tiled && self.attn_kv && distinct_seqs,
        }
    }

    /// Whether the kernel of `path` can apply RoPE itself: the one-block
    /// kernel that also stores the step's keys (it rotates the new key before
    /// storing it), for heads of at most 256 dimensions.
    fn rope_fusable(&self, path: &AttentionPath, head_dim: usize) -> bool {
        matches!(
            path,
            AttentionPath::Single {
                tiled: false,
                fused_store: true,
                ..
            }
        ) && head_dim <= 256
    }

    /// Attention of `q` over the cache after storing `k`, `v`. With `rope`
    /// the one-block kernel also rotates q and k (the caller checked
    /// `rope_fusable`); without it they are rotated already.
    #[allow(clippy::too_many_arguments)]
    fn attention_heads(
        &self,
        spec: &AttnSpec,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        kv: &mut CudaKv,
        batch: &Batch,
        rope: Option<&RopeParams>,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let (n_heads, n_kv_heads, head_dim) = (spec.n_heads, spec.n_kv_heads, spec.head_dim);
        let n = batch.len();
        let tables = self.kv_tables(batch, kv.n_ctx, kv.n_seq, spec)?;
        let (slots, bases, pos) = (&tables.0, &tables.1, &tables.2);
        let width = kv.width as i32;
        let store = |kv: &mut CudaKv| -> Result<(), BackendError> {
            let ptrs = [
                k.data.device_ptr(&self.stream).0,
                v.data.device_ptr(&self.stream).0,
                kv.k.device_ptr_mut(&self.stream).0,
                kv.v.device_ptr_mut(&self.stream).0,
                slots.device_ptr(&self.stream).0,
            ];
            let n_i = n as i32;
            let mut a = KernelArgs::new();
            a.args(&ptrs).arg(&width).arg(&n_i);
            // SAFETY: kv_store(k, v, kc, vc, slot, width, n): k and v hold n
            // rows of `width`, the slots (checked by kv_tables) are cache rows.
            unsafe { self.launch_chained(&self.k.kv_store, grid(n * kv.width, 256), &mut a) }
        };
        let path = self.attention_path(spec, batch);
        if rope.is_some() && !self.rope_fusable(&path, head_dim) {
            return Err(BackendError::Invalid(
                "attention: RoPE asked of a kernel that does not apply it".into(),
            ));
        }
        let (tiled, shared, fused_store) = match path {
            AttentionPath::Flash => {
                store(kv)?;
                let p0 = batch.positions[0] as usize;
                let base = batch.seqs[0] as usize * kv.n_ctx;
                // SAFETY: the positions were checked against the cache by
                // `kv_tables`, so every key row the kernel reads exists.
                unsafe { self.launch_flash(spec, q, kv, p0, base, out) }?;
                return Ok(());
            }
            AttentionPath::Split { max_keys, splits } => {
                store(kv)?;
                return self.attention_split(spec, q, kv, batch, (max_keys, splits), out);
            }
            AttentionPath::Single {
                tiled,
                shared,
                fused_store,
            } => (tiled, shared, fused_store),
        };
        if tiled && head_dim > 512 {
            return Err(BackendError::Invalid(format!(
                "attention: head dimension {head_dim} is above the 512 this kernel holds"
            )));
        }
        let kernel = if tiled {
            &self.k.attention_tiled
        } else {
            &self.k.attention
        };
        let (knew, vnew) = if fused_store {
            (
                k.data.device_ptr(&self.stream).0,
                v.data.device_ptr(&self.stream).0,
            )
        } else {
            store(kv)?;
            (0u64, 0u64)
        };
        let cs = rope
            .map(|r| self.rope_table(r, batch.positions))
            .transpose()?;
        let (cs_ptr, n_dims, neox) = match (&cs, rope) {
            (Some(cs), Some(r)) => (
                cs.device_ptr(&self.stream).0,
                r.n_dims as i32,
                (r.kind == RopeKind::Neox) as i32,
            ),
            _ => (0u64, 0i32, 0i32),
        };
        // Decode steps: the kernel also writes the 8-bit copy of its output
        // for the o projection's GEMV (`FERRY_ATTN_Q8=0`: quantize_q8 does).
        let (mut q8, q8_ptrs) = self.attention_q8(!tiled, n, n_heads * head_dim, head_dim)?;
        let out_ptr = out.data.device_ptr_mut(&self.stream).0;
        let common = AttentionArgs::new(
            [
                q.data.device_ptr(&self.stream).0,
                kv.k.device_ptr_mut(&self.stream).0,
                kv.v.device_ptr_mut(&self.stream).0,
                out_ptr,
                bases.device_ptr(&self.stream).0,
                pos.device_ptr(&self.stream).0,
            ],
            (n_heads, n_kv_heads, head_dim),
            kv.width,
            spec.scale,
        );
        let mut a = KernelArgs::new();
        common.push(&mut a);
        a.arg(&q8_ptrs.0).arg(&q8_ptrs.1).arg(&q8_ptrs.2);
        a.arg(&knew).arg(&vnew).arg(&cs_ptr).arg(&n_dims).arg(&neox);
        let launch = LaunchConfig {
            grid_dim: ((n * n_heads) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: both kernels take the same arguments; `attention`'s shared
        // memory is sized for the longest sequence, `attention_tiled` uses
        // static. The 8-bit copy's buffers (or nulls) hold n · out_width values,
        // their scales and half sums; knew and vnew (or nulls) n rows of the
        // cache's width, whose slots base + pos kv_tables checked; the RoPE
        // table (or null) n · n_dims values, n_dims ≤ head_dim ≤ 256
        // (`rope_fusable`).
        unsafe { self.launch_chained(kernel, launch, &mut a) }?;
        if let Some(c) = q8.as_deref_mut() {
            use std::sync::atomic::Ordering::Relaxed;
            c.of = Some((out_ptr, n, n_heads * head_dim, self.q8_epoch.load(Relaxed)));
        }
        Ok(())
    }

    /// Where decode attention (`kernel_can`: the kernel in use writes it) is
    /// to write the 8-bit copy of its `n × width` output for the o projection:
    /// the locked cache and its buffers' device addresses, or nulls
    /// (`FERRY_ATTN_Q8=0`, more than 2 tokens, head_dim not a multiple of 32).
    /// The caller records the copy in the cache after the launch.
    #[allow(clippy::type_complexity)]
    fn attention_q8(
        &self,
        kernel_can: bool,
        n: usize,
        width: usize,
        head_dim: usize,
    ) -> Result<(Option<std::sync::MutexGuard<'_, Q8Cache>>, (u64, u64, u64)), BackendError> {
        if !(kernel_can && n <= 2 && head_dim.is_multiple_of(32) && self.attn_q8) {
            return Ok((None, (0, 0, 0)));
        }
        let mut c = self.q8.lock().expect("q8 lock");
        c.reserve(self, n * width)?;
        let Q8Cache { q, d, s, .. } = &mut *c;
        let ptrs = (
            q.as_mut().expect("reserved").device_ptr_mut(&self.stream).0,
            d.as_mut().expect("reserved").device_ptr_mut(&self.stream).0,
            s.as_mut().expect("reserved").device_ptr_mut(&self.stream).0,
        );
        Ok((Some(c), ptrs))
    }

    /// Decode attention over long contexts: `attention_split` over `splits`
    /// slices of the keys of each (token, head), then `attention_combine`
    /// (which also writes the o projection's 8-bit input, as `attention`
    /// does). The keys and values are in the cache already.
    fn attention_split(
        &self,
        spec: &AttnSpec,
        q: &CudaAct,
        kv: &CudaKv,
        batch: &Batch,
        (max_keys, splits): (usize, usize),
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let (n_heads, n_kv_heads, head_dim) = (spec.n_heads, spec.n_kv_heads, spec.head_dim);
        let n = batch.len();
        let chunk = max_keys.div_ceil(splits);
        let splits = max_keys.div_ceil(chunk);
        let tables = self.kv_tables(batch, kv.n_ctx, kv.n_seq, spec)?;
        let (bases, pos) = (&tables.1, &tables.2);
        let part_len = n * n_heads * splits * (head_dim + 2);
        let mut parts = self.attn_parts.lock().expect("attention parts lock");
        if parts.as_ref().is_none_or(|p| p.len() < part_len) {
            *parts = None;
            *parts = Some(self.zeros::<f32>(part_len)?);
        }
        let part_ptr = parts
            .as_mut()
            .expect("allocated")
            .device_ptr_mut(&self.stream)
            .0;
        let (hd, splits_i, chunk_i) = (head_dim as i32, splits as i32, chunk as i32);
        let common = AttentionArgs::new(
            [
                q.data.device_ptr(&self.stream).0,
                kv.k.device_ptr(&self.stream).0,
                kv.v.device_ptr(&self.stream).0,
                part_ptr,
                bases.device_ptr(&self.stream).0,
                pos.device_ptr(&self.stream).0,
            ],
            (n_heads, n_kv_heads, head_dim),
            kv.width,
            spec.scale,
        );
        let mut a = KernelArgs::new();
        common.push(&mut a);
        a.arg(&splits_i).arg(&chunk_i);
        let cfg = LaunchConfig {
            grid_dim: ((n * n_heads) as u32, splits as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: attention_split(q, kc, vc, part, base, pos, n_heads,
        // n_kv_heads, head_dim, width, scale, splits, chunk), head_dim ≤ 512
        // (checked by the caller): the parts hold
        // n · n_heads · splits · (head_dim + 2) floats; the cache rows
        // base + pos were checked by kv_tables.
        unsafe { self.launch_chained(&self.k.attention_split, cfg, &mut a) }?;
        // The o projection's 8-bit input, as `attention` writes it.
        let (mut q8, q8_ptrs) = self.attention_q8(true, n, n_heads * head_dim, head_dim)?;
        let out_ptr = out.data.device_ptr_mut(&self.stream).0;
        let mut a = KernelArgs::new();
        a.arg(&part_ptr)
            .arg(&out_ptr)
            .arg(&hd)
            .arg(&splits_i)
            .arg(&q8_ptrs.0)
            .arg(&q8_ptrs.1)
            .arg(&q8_ptrs.2);
        let threads = head_dim.next_multiple_of(32).min(512) as u32;
        let cfg = LaunchConfig {
            grid_dim: ((n * n_heads) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: attention_combine(part, out, head_dim, splits, q8, d8, s8):
        // out holds n · n_heads · head_dim values; the 8-bit copy's buffers (or
        // nulls) as many, their scales and half sums.
        unsafe { self.launch_chained(&self.k.attention_combine, cfg, &mut a) }?;
        if let Some(c) = q8.as_deref_mut() {
            use std::sync::atomic::Ordering::Relaxed;
            c.of = Some((out_ptr, n, n_heads * head_dim, self.q8_epoch.load(Relaxed)));
        }
        Ok(())
    }

    /// Whether 128-dimension heads take the warpgroup-MMA prompt kernel now
    /// (sm_90a cards), not the mma.sync one.
    pub fn flash_wgmma(&self) -> bool {
        self.flash_wgmma.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Choose the prompt-attention kernel for 128-dimension heads (gpu-check
    /// checks both); the warpgroup-MMA one on a card without it is an error.
    pub fn set_flash_wgmma(&self, on: bool) -> Result<(), BackendError> {
        if on && self.k.flash_wgmma.is_none() {
            return Err(BackendError::Invalid(
                "the warpgroup-MMA attention kernel needs compute capability 9.0 (H100/H200); set FERRY_FLASH=mma".into(),
            ));
        }
        self.flash_wgmma
            .store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Prompt attention on tensor cores for `q.n` queries at positions
    /// `p0 ..`, keys from cache row `base` on.
    ///
    /// # Safety
    /// Rows `base .. base + p0 + q.n` of the cache must exist.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_flash(
        &self,
        spec: &AttnSpec,
        q: &CudaAct,
        kv: &CudaKv,
        p0: usize,
        base: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let (n_heads, n_kv_heads, head_dim) = (spec.n_heads, spec.n_kv_heads, spec.head_dim);
        let n = q.n;
        let (n_i, p0, base) = (n as i32, p0 as i32, base as i32);
        let (nh, nkv, width) = (n_heads as i32, n_kv_heads as i32, kv.width as i32);
        let scale_log2 = std::f32::consts::LOG2_E * spec.scale;
        let wgmma = match (head_dim, &self.k.flash_wgmma) {
            (128, Some(kernel)) if self.flash_wgmma() => Some(kernel),
            _ => None,
        };
        let kernel = match (head_dim, wgmma) {
            (_, Some(kernel)) => kernel,
            (64, None) => &self.k.flash_prefill_d64,
            (128, None) => &self.k.flash_prefill_d128,
            _ => {
                return Err(BackendError::Invalid(format!(
                    "prompt attention on tensor cores takes head dimension 64 or 128, not {head_dim}"
                )));
            }
        };
        let mut b = self.stream.launch_builder(kernel);
        b.arg(&q.data).arg(&kv.k).arg(&kv.v).arg(&mut out.data);
        b.arg(&n_i)
            .arg(&p0)
            .arg(&base)
            .arg(&nh)
            .arg(&nkv)
            .arg(&width)
            .arg(&scale_log2);
        let launch = match wgmma {
            Some(_) => LaunchConfig {
                grid_dim: (n.div_ceil(128) as u32, n_heads as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: FLASH_WGMMA_SMEM as u32,
            },
            None => {
                let warps = flash_warps(head_dim);
                LaunchConfig {
                    grid_dim: (n.div_ceil(16 * warps) as u32, n_heads as u32, 1),
                    block_dim: (32 * warps as u32, 1, 1),
                    shared_mem_bytes: flash_smem_bytes(head_dim) as u32,
                }
            }
        };
        // SAFETY: matches the kernel signature; the caller vouches for the cache rows.
        unsafe { b.launch(launch) }.map_err(err)?;
        Ok(())
    }

    /// An attention kernel against the shared-memory reference kernel on random
    /// queries, keys and values: `done` tokens already in the cache, then a
    /// chunk of `n` (1: a decode step). Returns max |Δ| / max |reference| over
    /// the chunk's output.
    pub fn attention_check(
        &self,
        candidate: AttentionKernel,
        (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
        done: usize,
        n: usize,
    ) -> Result<f32, BackendError> {
        let n_ctx = done + n;
        let kv_width = n_kv_heads * head_dim;
        let mut kv = CudaKv {
            n_ctx,
            n_seq: 1,
            width: kv_width,
            k: self.zeros::<f16>(n_ctx * kv_width)?,
            v: self.zeros::<f16>(n_ctx * kv_width)?,
        };
        let mut random = xorshift_values(0x9e37_79b9_7f4a_7c15, 2.0);
        let heads = AttnSpec::full(n_heads, n_kv_heads, head_dim);
        let q_width = n_heads * head_dim;
        // `Some(kernel)`: that kernel; `None`: the shared-memory reference.
        let mut run =
            |first: usize, len: usize, kernel: Option<AttentionKernel>, data: &[Vec<f32>; 3]| {
                let positions: Vec<u32> = (first as u32..(first + len) as u32).collect();
                let seqs = vec![0u32; len];
                let tokens = vec![0u32; len];
                let batch = Batch {
                    tokens: &tokens,
                    positions: &positions,
                    seqs: &seqs,
                };
                let q = self.act_from_host(len, q_width, &data[0])?;
                let k = self.act_from_host(len, kv_width, &data[1])?;
                let v = self.act_from_host(len, kv_width, &data[2])?;
                let mut out = self.act(len, q_width)?;
                use std::sync::atomic::Ordering::Relaxed;
                let wgmma_was = self.flash_wgmma();
                if kernel == Some(AttentionKernel::FlashMma) {
                    self.set_flash_wgmma(false)?;
                }
                self.set_flash_attention(matches!(
                    kernel,
                    Some(AttentionKernel::Flash | AttentionKernel::FlashMma)
                ));
                self.tiled_decode
                    .store(kernel == Some(AttentionKernel::Tiled), Relaxed);
                let split_min = match kernel {
                    Some(AttentionKernel::Split) => 1,
                    _ => usize::MAX,
                };
                let split_was = self.split_min.swap(split_min, Relaxed);
                let r = self.attention_heads(&heads, &q, &k, &v, &mut kv, &batch, None, &mut out);
                self.set_flash_attention(true);
                self.set_flash_wgmma(wgmma_was)?;
                self.tiled_decode.store(false, Relaxed);
                self.split_min.store(split_was, Relaxed);
                r?;
                self.to_host(&out)
            };
        if done > 0 {
            let past = [
                random(done * q_width),
                random(done * kv_width),
                random(done * kv_width),
            ];
            // The cached past as a prompt would fill it.
            run(0, done, Some(AttentionKernel::Flash), &past)?;
        }
        let chunk = [
            random(n * q_width),
            random(n * kv_width),
            random(n * kv_width),
        ];
        let reference = run(done, n, None, &chunk)?;
        let flash = run(done, n, Some(candidate), &chunk)?;
        let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = flash
            .iter()
            .zip(&reference)
            .map(|(a, b)| {
                if a.is_finite() {
                    (a - b).abs()
                } else {
                    f32::INFINITY
                }
            })
            .fold(0f32, f32::max);
        Ok(diff / scale)
    }

    /// Upload the per-batch tables now (before streaming copies are queued).
    pub fn prepare_batch(
        &self,
        cfg: &Config,
        batch: &Batch,
        n_ctx: usize,
        n_seq: usize,
    ) -> Result<(), BackendError> {
        for layer in &cfg.layers {
            self.rope_table(&layer.attn.rope, batch.positions)?;
            self.kv_tables(batch, n_ctx, n_seq, &layer.attn)?;
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    type Weight = CudaWeight;
    type Vector = CudaSlice<f32>;
    type Act = CudaAct;
    type Kv = CudaKv;

    fn name(&self) -> String {
        self.name.clone()
    }

    /// Surface an error recorded by an operation that could not return one,
    /// and wait for the stream.
    fn check(&self) -> Result<(), BackendError> {
        self.ctx.check_err().map_err(err)?;
        self.stream.synchronize().map_err(err)
    }

    fn device_memory_used(&self) -> Option<u64> {
        let (free, total) = self.free_memory().ok()?;
        Some(total.saturating_sub(free) as u64)
    }

    fn load_weight(&self, g: &Gguf, t: &TensorRef) -> Result<CudaWeight, BackendError> {
        let bytes = &g.files[t.file_index].bytes()
            [t.file_offset as usize..(t.file_offset + t.n_bytes) as usize];
        let buf = Arc::new(self.upload(bytes)?);
        CudaWeight::in_buffer(&self.stream, buf, 0, t)
    }

    /// One page-locked copy of the span of the file the tensors lie in (a
    /// layer's expert stacks), which kernels read across the bus.
    fn load_weights_in_host(
        &self,
        g: &Gguf,
        ts: &[&TensorRef],
    ) -> Result<Vec<CudaWeight>, BackendError> {
        let Some(first) = ts.first() else {
            return Ok(Vec::new());
        };
        if ts.iter().any(|t| t.file_index != first.file_index) {
            return ts
                .iter()
                .map(|t| Ok(self.load_weights_in_host(g, &[t])?.remove(0)))
                .collect();
        }
        let lo = ts.iter().map(|t| t.file_offset).min().unwrap_or(0) as usize;
        let hi = ts
            .iter()
            .map(|t| t.file_offset + t.n_bytes)
            .max()
            .unwrap_or(0) as usize;
        let src = &g.files[first.file_index].bytes()[lo..hi];
        // SAFETY: a plain page-locked allocation, filled here before any sharing.
        let mut pinned = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(src.len().max(1), 0) }
            .map_err(|e| {
                BackendError::Invalid(format!(
                    "pinning {} of host memory for {} failed ({e:?}): free host memory or raise `ulimit -l`, or give the model more VRAM (--vram-budget)",
                    crate::units::HumanBytes(src.len() as u64),
                    first.name
                ))
            })?;
        pinned.as_mut_slice().map_err(err)?[..src.len()].copy_from_slice(src);
        let base = pinned.as_ptr().map_err(err)? as u64;
        let owner: Arc<dyn std::any::Any + Send + Sync> = Arc::new(HostBytes(pinned));
        Ok(ts
            .iter()
            .map(|t| {
                // SAFETY: page-locked memory holding t's bytes at this offset;
                // `owner` keeps it allocated.
                unsafe {
                    CudaWeight::from_raw(
                        t.ty,
                        t.rows(),
                        t.cols(),
                        owner.clone(),
                        base + (t.file_offset as usize - lo) as u64,
                    )
                }
            })
            .collect())
    }

    fn load_vector(&self, g: &Gguf, t: &TensorRef) -> Result<CudaSlice<f32>, BackendError> {
        let bytes = &g.files[t.file_index].bytes()
            [t.file_offset as usize..(t.file_offset + t.n_bytes) as usize];
        let v = crate::quant::dequantize_to_vec(t.ty, bytes)
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        self.upload(&v)
    }

    fn act(&self, n: usize, width: usize) -> Result<CudaAct, BackendError> {
        Ok(CudaAct {
            n,
            width,
            data: self.zeros(n * width)?,
        })
    }

    fn kv_cache(&self, cfg: &Config, n_ctx: usize, n_seq: usize) -> Result<CudaKv, BackendError> {
        let width = cfg.kv_width();
        Ok(CudaKv {
            n_ctx,
            n_seq,
            width,
            k: self.zeros(n_seq * n_ctx * width)?,
            v: self.zeros(n_seq * n_ctx * width)?,
        })
    }

    fn copy_kv(
        &self,
        kv: &mut CudaKv,
        from: usize,
        to: usize,
        len: usize,
    ) -> Result<(), BackendError> {
        super::check_copy_kv((kv.n_seq, kv.n_ctx), from, to, len)?;
        // Rows of f16 keys (values) per position, sequence after sequence.
        let row = kv.width * 2;
        for buf in [&mut kv.k, &mut kv.v] {
            let (base, _g) = buf.device_ptr_mut(&self.stream);
            let (src, dst) = (
                base + (from * kv.n_ctx * row) as u64,
                base + (to * kv.n_ctx * row) as u64,
            );
            // SAFETY: both ranges lie inside the buffer (checked above) and do
            // not overlap (distinct sequences); the copy is ordered on the
            // compute stream with the kernels that use the cache.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    dst,
                    src,
                    len * row,
                    self.stream.cu_stream(),
                )
            }
            .map_err(err)?;
        }
        Ok(())
    }

    fn embed(
        &self,
        table: &CudaWeight,
        tokens: &[u32],
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        self.forget_q8();
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= table.rows) {
            return Err(BackendError::Invalid(format!(
                "token id {t} is outside the vocabulary of {} tokens",
                table.rows
            )));
        }
        let toks = self.upload(tokens)?;
        let (ty, cols, be, bb) = (
            table.ty.id() as i32,
            table.cols as i32,
            table.ty.block_elems() as i32,
            table.ty.block_bytes() as i32,
        );
        let mut b = self.stream.launch_builder(&self.k.embed);
        b.arg(&table.ptr)
            .arg(&toks)
            .arg(&mut out.data)
            .arg(&ty)
            .arg(&cols)
            .arg(&be)
            .arg(&bb);
        let cfg = LaunchConfig {
            grid_dim: (tokens.len() as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches the kernel signature.
        unsafe { b.launch(cfg) }.map_err(err)?;
        Ok(())
    }

    fn rms_norm(&self, x: &CudaAct, w: &CudaSlice<f32>, eps: f32, out: &mut CudaAct) {
        self.forget_q8();
        if self.int_gemv
            && self.smem_gemv
            && x.n <= crate::units::GEMV_MAX_BATCH
            && x.width.is_multiple_of(32)
            && x.width <= 8192
        {
            // Decode: the norm writes the 8-bit copy the next products read.
            if let Err(e) = self.rms_norm_q8(x, w, eps, out) {
                self.record(e);
            }
            return;
        }
        let width = x.width as i32;
        // A batch: the norm also writes the f16 copy its products' GEMMs read
        // (recorded as `out`'s, so they convert nothing).
        let mut scratch = self.scratch.lock().expect("scratch lock");
        let len = x.n * x.width;
        let copy = x.n > crate::units::GEMV_MAX_BATCH;
        if let Err(e) = self.reserve_f16(&mut scratch, 0, if copy { len } else { 0 }) {
            return self.record(e);
        }
        let out16 = match (&mut scratch.x, copy) {
            (Some(s), true) => s.device_ptr_mut(&self.stream).0,
            _ => 0u64,
        };
        let mut b = self.stream.launch_builder(&self.k.rms_norm);
        b.arg(&x.data)
            .arg(w)
            .arg(&mut out.data)
            .arg(&out16)
            .arg(&width)
            .arg(&eps);
        // SAFETY: matches the kernel signature; `out16` is null or holds n · width f16.
        if let Err(e) = unsafe { b.launch(block_per_row(x.n)) } {
            self.ctx.record_err::<()>(Err(e));
            return;
        }
        scratch.x_of = copy.then(|| self.f16_copy_key(out));
    }

    fn matmul(&self, x: &CudaAct, w: &CudaWeight, out: &mut CudaAct) {
        assert_eq!(
            (x.width, out.n, out.width),
            (w.cols, x.n, w.rows),
            "matmul shapes"
        );
        if let Err(e) = self.try_matmul(x, w, out, false) {
            // Recorded so that `check` (called by gpu-check and the engine) reports it.
            self.record(e);
        }
    }

    fn matmul_bias(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        bias: Option<&CudaSlice<f32>>,
        out: &mut CudaAct,
    ) {
        assert_eq!((out.n, out.width), (x.n, w.rows), "matmul_bias shapes");
        match self.gemv_smem(x, w, None, bias, false, out) {
            Ok(true) => {}
            Ok(false) => {
                self.matmul(x, w, out);
                if let Some(b) = bias {
                    self.add_bias(out, b);
                }
            }
            Err(e) => self.record(e),
        }
    }

    fn matmul_qkv(
        &self,
        x: &CudaAct,
        w: [&CudaWeight; 3],
        b: [Option<&CudaSlice<f32>>; 3],
        q: &mut CudaAct,
        k: &mut CudaAct,
        v: &mut CudaAct,
    ) {
        let spec = |w, out, bias| GemvSpec {
            w,
            w_up: None,
            out,
            bias,
            residual: false,
        };
        let fused = self.qkv_fused
            && match self.gemv_segments(
                x,
                &mut [
                    spec(w[0], q, b[0]),
                    spec(w[1], k, b[1]),
                    spec(w[2], v, b[2]),
                ],
            ) {
                Ok(done) => done,
                Err(e) => {
                    self.record(e);
                    return;
                }
            };
        if !fused && x.n > crate::units::GEMV_MAX_BATCH {
            // The three products first, so that they share one f16 copy of
            // `x` (a bias add counts as a write to the activations).
            self.matmul(x, w[0], q);
            self.matmul(x, w[1], k);
            self.matmul(x, w[2], v);
            for (out, bias) in [(q, b[0]), (k, b[1]), (v, b[2])] {
                if let Some(bias) = bias {
                    self.add_bias(out, bias);
                }
            }
        } else if !fused {
            self.matmul_bias(x, w[0], b[0], q);
            self.matmul_bias(x, w[1], b[1], k);
            self.matmul_bias(x, w[2], b[2], v);
        }
    }

    fn matmul_add(&self, x: &CudaAct, w: &CudaWeight, tmp: &mut CudaAct, acc: &mut CudaAct) {
        assert_eq!((acc.n, acc.width), (x.n, w.rows), "matmul_add shapes");
        match self.gemv_smem(x, w, None, None, true, acc) {
            Ok(true) => {}
            // A batch: the GEMM adds into the residual stream itself.
            Ok(false) if x.n > crate::units::GEMV_MAX_BATCH => {
                if let Err(e) = self.try_matmul(x, w, acc, true) {
                    self.record(e);
                }
            }
            Ok(false) => {
                self.matmul(x, w, tmp);
                self.add(acc, tmp);
            }
            Err(e) => self.record(e),
        }
    }

    fn feed_forward(
        &self,
        x: &CudaAct,
        [w_gate, w_up, w_down]: [&CudaWeight; 3],
        act: Activation,
        gate: &mut CudaAct,
        up: &mut CudaAct,
        tmp: &mut CudaAct,
        acc: &mut CudaAct,
    ) {
        if act != Activation::Silu {
            // The fused SwiGLU paths do not apply: the unfused sequence.
            self.matmul_glu(x, w_gate, w_up, act, gate, up);
            self.matmul_add(gate, w_down, tmp, acc);
            return;
        }
        if self.ffn_f16 && x.n > crate::units::GEMV_MAX_BATCH && gate.data.len().is_multiple_of(4) {
            if let Err(e) = self.feed_forward_f16(x, [w_gate, w_up, w_down], gate, up, acc) {
                self.record(e);
            }
            return;
        }
        self.matmul_glu(x, w_gate, w_up, act, gate, up);
        self.matmul_add(gate, w_down, tmp, acc);
    }

    fn matmul_glu(
        &self,
        x: &CudaAct,
        w_gate: &CudaWeight,
        w_up: &CudaWeight,
        act: Activation,
        gate: &mut CudaAct,
        up: &mut CudaAct,
    ) {
        assert_eq!(
            (gate.n, gate.width),
            (x.n, w_gate.rows),
            "matmul_glu shapes"
        );
        if act != Activation::Silu {
            self.matmul(x, w_gate, gate);
            self.matmul(x, w_up, up);
            self.glu(gate, up, act);
            return;
        }
        match self.gemv_smem(x, w_gate, Some(w_up), None, false, gate) {
            Ok(true) => {}
            Ok(false) => {
                // Formats the fused SwiGLU kernel does not read (Q5_K, Q6_K):
                // gate and up as two segments of one launch, when they fit.
                let spec = |w, out| GemvSpec {
                    w,
                    w_up: None,
                    out,
                    bias: None,
                    residual: false,
                };
                match self.gemv_segments(x, &mut [spec(w_gate, gate), spec(w_up, up)]) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.matmul(x, w_gate, gate);
                        self.matmul(x, w_up, up);
                    }
                    Err(e) => return self.record(e),
                }
                if gate.n > crate::units::GEMV_MAX_BATCH && gate.data.len().is_multiple_of(4) {
                    if let Err(e) = self.swiglu_to_f16(gate, up) {
                        self.record(e);
                    }
                } else {
                    self.swiglu(gate, up);
                }
            }
            Err(e) => self.record(e),
        }
    }

    fn add_bias(&self, x: &mut CudaAct, bias: &CudaSlice<f32>) {
        self.forget_q8();
        let width = x.width as i32;
        self.elementwise(&self.k.add_bias, &mut x.data, Some(bias), Some(width));
    }

    fn rope(
        &self,
        x: &mut CudaAct,
        n_heads: usize,
        head_dim: usize,
        rope: &RopeParams,
        positions: &[u32],
    ) {
        self.rope_launch(x, None, n_heads, 0, head_dim, rope, positions, [None, None]);
    }

    fn rope_qk(
        &self,
        q: &mut CudaAct,
        k: &mut CudaAct,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        rope: &RopeParams,
        positions: &[u32],
    ) {
        self.rope_launch(
            q,
            Some(k),
            n_heads,
            n_kv_heads,
            head_dim,
            rope,
            positions,
            [None, None],
        );
    }

    fn attention(
        &self,
        cfg: &AttnSpec,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        kv: &mut CudaKv,
        batch: &Batch,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        self.forget_q8();
        self.attention_heads(cfg, q, k, v, kv, batch, None, out)
    }

    fn qkv_attention(
        &self,
        cfg: &AttnSpec,
        x: &CudaAct,
        w: [&CudaWeight; 3],
        b: [Option<&CudaSlice<f32>>; 3],
        [q, k, v]: [&mut CudaAct; 3],
        kv: &mut CudaKv,
        batch: &Batch,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        // A batch: the q and k biases ride along with the rotation (which
        // reads and writes every element anyway, when it covers the whole
        // head) instead of an add_bias launch each: 184 us of a 32B layer at
        // 8192 tokens.
        if x.n > crate::units::GEMV_MAX_BATCH
            && cfg.rope.n_dims == cfg.head_dim
            && (b[0].is_some() || b[1].is_some())
        {
            self.matmul_qkv(x, w, [None, None, b[2]], q, k, v);
            self.rope_launch(
                q,
                Some(k),
                cfg.n_heads,
                cfg.n_kv_heads,
                cfg.head_dim,
                &cfg.rope,
                batch.positions,
                [b[0], b[1]],
            );
            return self.attention(cfg, q, k, v, kv, batch, out);
        }
        self.matmul_qkv(x, w, b, q, k, v);
        self.rope_attention(cfg, q, k, v, kv, batch, out)
    }

    fn rope_attention(
        &self,
        cfg: &AttnSpec,
        q: &mut CudaAct,
        k: &mut CudaAct,
        v: &CudaAct,
        kv: &mut CudaKv,
        batch: &Batch,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let path = self.attention_path(cfg, batch);
        if self.rope_fused && self.rope_fusable(&path, cfg.head_dim) {
            self.forget_q8();
            return self.attention_heads(cfg, q, k, v, kv, batch, Some(&cfg.rope), out);
        }
        crate::backend::rope_then_attention(self, cfg, q, k, v, kv, batch, out)
    }

    fn swiglu(&self, gate: &mut CudaAct, up: &CudaAct) {
        self.forget_q8();
        self.elementwise(&self.k.swiglu, &mut gate.data, Some(&up.data), None);
    }

    fn geglu(&self, gate: &mut CudaAct, up: &CudaAct) {
        self.forget_q8();
        self.elementwise(&self.k.geglu, &mut gate.data, Some(&up.data), None);
    }

    fn add(&self, x: &mut CudaAct, y: &CudaAct) {
        self.forget_q8();
        self.elementwise(&self.k.add, &mut x.data, Some(&y.data), None);
    }

    fn scale(&self, x: &mut CudaAct, s: f32) {
        self.forget_q8();
        let n = x.data.len();
        let mut b = self.stream.launch_builder(&self.k.scale);
        b.arg(&mut x.data).arg(&s).arg(&n);
        // SAFETY: scale(x, s, n): x holds n floats.
        if let Err(e) = unsafe { b.launch(grid(n, 256)) } {
            self.ctx.record_err::<()>(Err(e));
        }
    }

    fn softcap(&self, x: &mut CudaAct, c: f32) {
        self.forget_q8();
        let (n, inv) = (x.data.len(), 1.0 / c);
        let mut b = self.stream.launch_builder(&self.k.softcap);
        b.arg(&mut x.data).arg(&c).arg(&inv).arg(&n);
        // SAFETY: softcap(x, c, inv, n): x holds n floats.
        if let Err(e) = unsafe { b.launch(grid(n, 256)) } {
            self.ctx.record_err::<()>(Err(e));
        }
    }

    fn rms_norm_heads(&self, x: &mut CudaAct, w: &CudaSlice<f32>, head_dim: usize, eps: f32) {
        self.forget_q8();
        assert_eq!(x.width % head_dim, 0, "rms_norm_heads: rows of whole heads");
        let rows = x.n * (x.width / head_dim);
        let (width, null16) = (head_dim as i32, 0u64);
        let ptr = x.data.device_ptr_mut(&self.stream).0;
        let mut b = self.stream.launch_builder(&self.k.rms_norm);
        b.arg(&ptr)
            .arg(w)
            .arg(&ptr)
            .arg(&null16)
            .arg(&width)
            .arg(&eps);
        // SAFETY: rms_norm(x, w, out, out16, width, eps), one block per row of
        // `width`: each thread reads its elements before it writes them, so
        // in place is safe; x holds rows · head_dim floats, w head_dim.
        if let Err(e) = unsafe { b.launch(block_per_row(rows)) } {
            self.ctx.record_err::<()>(Err(e));
        }
    }

    fn gather_rows(&self, x: &CudaAct, rows: &[usize]) -> Result<CudaAct, BackendError> {
        self.forget_q8();
        let mut out = self.act(rows.len(), x.width)?;
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = self.upload(&idx)?;
        let width = x.width as i32;
        let mut b = self.stream.launch_builder(&self.k.gather_rows);
        b.arg(&x.data).arg(&idx).arg(&mut out.data).arg(&width);
        let cfg = block_per_row(rows.len().max(1));
        // SAFETY: matches the kernel signature.
        if let Err(e) = unsafe { b.launch(cfg) } {
            self.ctx.record_err::<()>(Err(e));
        }
        Ok(out)
    }

    fn read_rows(
        &self,
        x: &CudaAct,
        rows: std::ops::Range<usize>,
    ) -> Result<CudaAct, BackendError> {
        self.forget_q8();
        let mut out = self.act(rows.len(), x.width)?;
        let n = rows.len() * x.width;
        let src = x.data.slice(rows.start * x.width..rows.end * x.width);
        let mut b = self.stream.launch_builder(&self.k.copy_f32);
        b.arg(&src).arg(&mut out.data).arg(&n);
        // SAFETY: matches the kernel signature; both ranges hold `n` floats.
        if let Err(e) = unsafe { b.launch(grid(n, 256)) } {
            self.ctx.record_err::<()>(Err(e));
        }
        Ok(out)
    }

    /// A kernel, not a memcpy: copies may queue behind streaming copies on the
    /// copy engines.
    fn write_rows(&self, dst: &mut CudaAct, first: usize, src: &CudaAct) {
        self.forget_q8();
        assert_eq!(dst.width, src.width);
        let n = src.n * src.width;
        let mut view = dst.data.slice_mut(first * dst.width..first * dst.width + n);
        let mut b = self.stream.launch_builder(&self.k.copy_f32);
        b.arg(&src.data).arg(&mut view).arg(&n);
        // SAFETY: matches the kernel signature; both ranges hold `n` floats.
        if let Err(e) = unsafe { b.launch(grid(n, 256)) } {
            self.ctx.record_err::<()>(Err(e));
        }
    }

    fn moe_block(
        &self,
        x: &CudaAct,
        router: &CudaWeight,
        w: ExpertWeights<'_, CudaWeight>,
        spec: &crate::arch::MoeSpec,
        act: Activation,
        out: &mut CudaAct,
    ) -> Result<bool, BackendError> {
        self.moe_block_cuda(x, router, w, spec, act, out)
    }

    fn moe_experts(
        &self,
        x: &CudaAct,
        w: ExpertWeights<'_, CudaWeight>,
        act: Activation,
        routing: &Routing<'_>,
        out: &mut CudaAct,
    ) -> Result<bool, BackendError> {
        self.moe_experts_cuda(x, w, act, routing, out)
    }

    fn scatter_rows_scaled(
        &self,
        dst: &mut CudaAct,
        rows: &[usize],
        scales: &[f32],
        src: &CudaAct,
    ) -> Result<(), BackendError> {
        if src.width != dst.width || rows.len() != src.n || scales.len() != src.n {
            return Err(BackendError::Invalid(format!(
                "scatter_rows_scaled: {} rows of width {} with {} targets and {} scales into width {}",
                src.n,
                src.width,
                rows.len(),
                scales.len(),
                dst.width
            )));
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= dst.n) {
            return Err(BackendError::Invalid(format!(
                "scatter_rows_scaled: row {r} of {}",
                dst.n
            )));
        }
        self.forget_q8();
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = self.upload(&idx)?;
        let scales = self.upload(scales)?;
        let width = dst.width as i32;
        let mut b = self.stream.launch_builder(&self.k.scatter_rows_scaled);
        b.arg(&src.data)
            .arg(&idx)
            .arg(&scales)
            .arg(&mut dst.data)
            .arg(&width);
        let cfg = block_per_row(rows.len().max(1));
        // SAFETY: matches the kernel signature; every target row is inside dst (checked).
        if let Err(e) = unsafe { b.launch(cfg) } {
            self.ctx.record_err::<()>(Err(e));
        }
        Ok(())
    }

    fn add_rows(&self, x: &mut CudaAct, y: &CudaAct, first: usize) {
        self.forget_q8();
        assert_eq!(x.width, y.width, "add_rows: widths");
        let n = x.n * x.width;
        let part = y.data.slice(first * y.width..first * y.width + n);
        let mut b = self.stream.launch_builder(&self.k.add);
        b.arg(&mut x.data).arg(&part).arg(&n);
        // SAFETY: add(x, y, n): both hold n floats.
        if let Err(e) = unsafe { b.launch(grid(n, 256)) } {
            self.ctx.record_err::<()>(Err(e));
        }
    }

    fn copy_rows(&self, dst: &mut CudaAct, src: &CudaAct, first: usize) {
        self.forget_q8();
        assert_eq!(dst.width, src.width, "copy_rows: widths");
        let n = dst.n * dst.width;
        let part = src.data.slice(first * src.width..first * src.width + n);
        let mut b = self.stream.launch_builder(&self.k.copy_f32);
        b.arg(&part).arg(&mut dst.data).arg(&n);
        // SAFETY: copy_f32(src, dst, n): both hold n floats.
        if let Err(e) = unsafe { b.launch(grid(n, 256)) } {
            self.ctx.record_err::<()>(Err(e));
        }
    }

    fn to_host(&self, x: &CudaAct) -> Result<Vec<f32>, BackendError> {
        let mut v = self.stream.clone_dtoh(&x.data).map_err(err)?;
        v.truncate(x.n * x.width);
        Ok(v)
    }
}

#[cfg(test)]
mod tests;

mod moe;

/// Compile the kernels with NVRTC for `arch` without needing a GPU (NVRTC is
/// a library of its own); used to check the kernel source wherever NVRTC is
/// installed.
pub fn compile_kernels_for(arch: &'static str) -> Result<String, String> {
    // SAFETY: only tries to load the shared library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("NVRTC not found".into());
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        include_paths: vec!["/usr/local/cuda/include".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(kernel_source(), opts)
        .map(|ptx| ptx.to_src())
        .map_err(|e| format!("{e}"))
}

#[cfg(test)]
mod compile_tests;

#[cfg(test)]
mod gemv_launch_tests;
