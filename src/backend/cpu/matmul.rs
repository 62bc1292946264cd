//! Matrix multiplication with quantized weights: activations are quantized
//! once to the weight type's activation format, then every output is an integer
//! dot product of a weight row with an activation row.
//!
//! Work is split into tasks of a few rows × a tile of tokens: a task's weight
//! rows stay in L1 while it walks the tokens, and rayon hands tasks to whichever
//! thread is free.

use std::ops::Range;

use half::{bf16, f16};
use rayon::prelude::*;

use super::CpuAct;
use super::gemm::{GemmFormat, PreparedAct, PreparedRow};
use super::simd;
use crate::arch::TensorRef;
use crate::backend::BackendError;
use crate::gguf::SharedBytes;
use crate::quant::{
    BlockFormat, BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS,
    BlockIQ4NL, BlockIQ4XS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K,
    BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8K, GgmlType, QK_K,
};

/// The alignment the kernels' block structs need (at most that of a u64).
const ALIGN: usize = 8;

/// Bytes in an allocation aligned for any block struct.
struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    fn copy_of(data: &[u8]) -> Self {
        let mut words = vec![0u64; data.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..data.len()].copy_from_slice(data);
        AlignedBytes {
            words,
            len: data.len(),
        }
    }
}

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }
}

/// A weight matrix in host memory (a view into the model file's map, or an
/// owned copy), `[rows, cols]` in its file type.
#[derive(Debug, Clone)]
pub struct CpuWeight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    bytes: SharedBytes,
    offset: usize,
    len: usize,
}

impl CpuWeight {
    pub fn new(bytes: SharedBytes, t: &TensorRef) -> Result<Self, BackendError> {
        let (rows, cols) = (t.rows(), t.cols());
        let len = t.n_bytes as usize;
        if t.ty.bytes_for((rows * cols) as u64) != Some(len as u64) {
            return Err(BackendError::Invalid(format!(
                "{}: size does not match its shape",
                t.name
            )));
        }
        let offset = t.file_offset as usize;
        let Some(data) = bytes.as_slice().get(offset..offset + len) else {
            return Err(BackendError::Invalid(format!(
                "{}: its bytes lie outside the file",
                t.name
            )));
        };
        // The kernels read the blocks as typed structs: a file whose
        // alignment (`general.alignment`, any power of two) leaves the
        // tensor at an address not a multiple of 8 is read from an aligned
        // copy instead of in place.
        let (bytes, offset) = if (data.as_ptr() as usize).is_multiple_of(ALIGN) {
            (bytes, offset)
        } else {
            (
                SharedBytes::external(Box::new(AlignedBytes::copy_of(data))),
                0,
            )
        };
        let w = CpuWeight {
            ty: t.ty,
            rows,
            cols,
            bytes,
            offset,
            len,
        };
        w.prefault();
        Ok(w)
    }

    /// Touch every page so the weights are read from disk now (during loading,
    /// with progress shown) rather than during the first forward pass.
    fn prefault(&self) {
        let data = self.data();
        let mut sum = 0u8;
        for i in (0..data.len()).step_by(4096) {
            // SAFETY: `i` is in bounds; a volatile read keeps the access.
            sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(data.as_ptr().add(i)) });
        }
        std::hint::black_box(sum);
    }

    pub fn data(&self) -> &[u8] {
        &self.bytes.as_slice()[self.offset..self.offset + self.len]
    }

    pub fn row_stride(&self) -> usize {
        self.len / self.rows
    }

    pub fn row_bytes(&self, r: usize) -> &[u8] {
        let s = self.row_stride();
        &self.data()[r * s..(r + 1) * s]
    }
}

/// Raw pointer that may be sent to the pool; every task writes a disjoint set
/// of output elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out = x · wᵀ`. Must run inside the backend's pool.
pub fn matmul(x: &CpuAct, w: &CpuWeight, out: &mut CpuAct) {
    matmul_with(x, w, out, DEFAULT_DOT_MAX_TOKENS)
}

/// `matmul` where batches of up to `dot_max_tokens` tokens use the per-token
/// dot product (bit-identical results for a token whatever the batch size).
/// Only the k-quants need it: for the other formats the GEMM path computes
/// exactly what the dot path computes (`tests/cpu_kernels.rs`), so they keep
/// the faster GEMM path for every batch.
pub fn matmul_with(x: &CpuAct, w: &CpuWeight, out: &mut CpuAct, dot_max_tokens: usize) {
    let dot_max_tokens = if w.ty.gemm_differs_from_dot() {
        dot_max_tokens
    } else {
        DEFAULT_DOT_MAX_TOKENS
    };
    assert_eq!(
        x.width, w.cols,
        "matmul: activation width vs weight columns"
    );
    assert_eq!((out.n, out.width), (x.n, w.rows), "matmul: output shape");
    match w.ty {
        GgmlType::F32 => f32_matmul(x, w, out, dot_max_tokens),
        GgmlType::F16 => float_matmul::<f16>(x, w, out),
        GgmlType::BF16 => float_matmul::<bf16>(x, w, out),
        GgmlType::Q4_0 => quant_matmul::<BlockQ4_0>(x, w, out, dot_max_tokens),
        GgmlType::Q4_1 => quant_matmul::<BlockQ4_1>(x, w, out, dot_max_tokens),
        GgmlType::Q5_0 => quant_matmul::<BlockQ5_0>(x, w, out, dot_max_tokens),
        GgmlType::Q5_1 => quant_matmul::<BlockQ5_1>(x, w, out, dot_max_tokens),
        GgmlType::Q8_0 => quant_matmul::<BlockQ8_0>(x, w, out, dot_max_tokens),
        GgmlType::Q2_K => quant_matmul::<BlockQ2K>(x, w, out, dot_max_tokens),
        GgmlType::Q3_K => quant_matmul::<BlockQ3K>(x, w, out, dot_max_tokens),
        GgmlType::Q4_K => match simd::q4_k_repacked_kernel() {
            Some(k) => q4_k_llama_order(x, w, out, dot_max_tokens, k),
            None => quant_matmul::<BlockQ4K>(x, w, out, dot_max_tokens),
        },
        GgmlType::Q5_K => quant_matmul::<BlockQ5K>(x, w, out, dot_max_tokens),
        GgmlType::IQ4_NL => quant_matmul::<BlockIQ4NL>(x, w, out, dot_max_tokens),
        GgmlType::IQ4_XS => quant_matmul::<BlockIQ4XS>(x, w, out, dot_max_tokens),
        GgmlType::MXFP4 => quant_matmul::<BlockMXFP4>(x, w, out, dot_max_tokens),
        GgmlType::IQ2_XXS => lowbit_matmul::<BlockIQ2XXS>(x, w, out, dot_max_tokens),
        GgmlType::IQ2_XS => lowbit_matmul::<BlockIQ2XS>(x, w, out, dot_max_tokens),
        GgmlType::IQ2_S => lowbit_matmul::<BlockIQ2S>(x, w, out, dot_max_tokens),
        GgmlType::IQ3_XXS => lowbit_matmul::<BlockIQ3XXS>(x, w, out, dot_max_tokens),
        GgmlType::IQ3_S => lowbit_matmul::<BlockIQ3S>(x, w, out, dot_max_tokens),
        GgmlType::IQ1_S => lowbit_matmul::<BlockIQ1S>(x, w, out, dot_max_tokens),
        GgmlType::IQ1_M => lowbit_matmul::<BlockIQ1M>(x, w, out, dot_max_tokens),
        GgmlType::Q6_K => match simd::q6_k_superblock_kernel() {
            Some(k) => q6_k_llama_order(x, w, out, dot_max_tokens, k),
            None => quant_matmul::<BlockQ6K>(x, w, out, dot_max_tokens),
        },
        other => panic!("matmul: weight type {other} is not a matrix type (rejected at load)"),
    }
}

/// Rows per task: enough work per task (~256K multiply-adds) to amortise the
/// scheduling, small enough that every thread gets many tasks.
fn rows_per_task(rows: usize, n: usize, cols: usize) -> usize {
    let target = (1usize << 18) / (n.min(TOKEN_TILE) * cols).max(1);
    target.clamp(4, 256).min(rows.max(1))
}

/// Tokens per task in prefill: a tile of activations stays in L2 while the
/// task's weight rows are reused across it.
const TOKEN_TILE: usize = 128;
// Blocks of eight tokens start at multiples of 8 in every tile (`tokens8`
// indexes its blocks by first token / 8).
const _: () = assert!(TOKEN_TILE.is_multiple_of(8));

/// The part of the output one task may write: rows `rows` of tokens `tokens`.
pub struct Tile {
    ptr: OutPtr,
    stride: usize,
    pub rows: Range<usize>,
    pub tokens: Range<usize>,
}

impl Tile {
    /// `out[t, r] = v`.
    #[inline]
    pub fn set(&mut self, t: usize, r: usize, v: f32) {
        assert!(self.rows.contains(&r) && self.tokens.contains(&t));
        // SAFETY: (t, r) lies in this tile (checked), tiles are disjoint, and
        // every tile lies inside the output (built by `for_each_tile`).
        unsafe { *self.ptr.get().add(t * self.stride + r) = v };
    }
}

/// Run `f` over disjoint tiles of the output in parallel.
fn for_each_tile<F>(rows: usize, n: usize, cols: usize, out: &mut CpuAct, f: F)
where
    F: Fn(&mut Tile) + Sync,
{
    assert_eq!(out.data.len(), n * rows);
    let rpt = rows_per_task(rows, n, cols);
    let row_tasks = rows.div_ceil(rpt);
    let tok_tasks = n.div_ceil(TOKEN_TILE);
    let ptr = OutPtr(out.data.as_mut_ptr());
    (0..row_tasks * tok_tasks).into_par_iter().for_each(|task| {
        let (rt, tt) = (task % row_tasks, task / row_tasks);
        let mut tile = Tile {
            ptr,
            stride: rows,
            rows: rt * rpt..((rt + 1) * rpt).min(rows),
            tokens: tt * TOKEN_TILE..((tt + 1) * TOKEN_TILE).min(n),
        };
        f(&mut tile);
    });
}

/// Quantize one row of activations to the activation format `A` (SIMD where
/// there is a kernel; bit-identical to `quantize_activation` either way).
fn quantize_row<A: BlockFormat>(row: &[f32]) -> Vec<A> {
    use std::any::Any;
    let mut out: Vec<A> = Vec::new();
    if let Some(v) = (&mut out as &mut dyn Any).downcast_mut::<Vec<crate::quant::BlockQ8_0>>() {
        *v = simd::quantize_q8_0(row);
    } else if let Some(v) =
        (&mut out as &mut dyn Any).downcast_mut::<Vec<crate::quant::BlockQ8_1>>()
    {
        *v = simd::quantize_q8_1(row);
    } else {
        out = row
            .chunks_exact(A::ELEMS)
            .map(A::quantize_activation)
            .collect();
    }
    out
}

/// Up to this many tokens every weight row is decoded inside each dot product;
/// from one more on, weight rows are unpacked once per tile (`gemm`).
pub const DEFAULT_DOT_MAX_TOKENS: usize = 3;

fn quant_matmul<W: GemmFormat>(x: &CpuAct, w: &CpuWeight, out: &mut CpuAct, dot_max: usize) {
    if x.n > dot_max {
        return gemm_matmul::<W>(x, w, out);
    }
    dot_matmul::<W>(x, w, out, simd::dot_kernel::<W>())
}

/// The 1-3 bit i-quants in llama.cpp's two orders: up to 7 tokens (and up
/// to `dot_max`, for batch invariance) its per-token dot product, from 8 on
/// its tiled GEMM's (`ggml-cpu/tiled`: per super-block one rounding).
fn lowbit_matmul<W: crate::quant::LowBit>(
    x: &CpuAct,
    w: &CpuWeight,
    out: &mut CpuAct,
    dot_max: usize,
) {
    if x.n < 8 || x.n <= dot_max {
        return lowbit_dot_matmul::<W>(x, w, out);
    }
    // Each task decodes its rows' super-blocks once and reuses them for every
    // token of its tile: decoding per token and row (the dot product) ran a
    // 1B-shape IQ2_XXS prompt at 22.6 t/s on 2 cores, llama.cpp at 381.
    let (n, cols, rows) = (x.n, x.width, w.rows);
    let nb = cols / QK_K;
    let xq: Vec<BlockQ8K> = quantize_act_rows(x);
    let weights: &[W] = bytemuck::cast_slice(w.data());
    let row4 = simd::tiled_row4_kernel();
    for_each_tile(rows, n, cols, out, |tile| {
        let mut blocks = vec![crate::quant::TiledBlock::default(); nb];
        let tokens: Vec<usize> = tile.tokens.clone().collect();
        for r in tile.rows.clone() {
            for (b, t) in weights[r * nb..(r + 1) * nb].iter().zip(&mut blocks) {
                *t = crate::quant::TiledBlock::of(b);
            }
            // Four tokens per pass (the last pass repeats its last token).
            for four in tokens.chunks(4) {
                let a: [&[BlockQ8K]; 4] = std::array::from_fn(|k| {
                    let t = four[k.min(four.len() - 1)];
                    &xq[t * nb..(t + 1) * nb]
                });
                let acc = row4(&blocks, a);
                for (k, &t) in four.iter().enumerate() {
                    tile.set(t, r, acc[k]);
                }
            }
        }
    });
}

/// The i-quants' per-token order for a few tokens (a decode batch, an
/// expert's share of a prompt): one token alone through the dot kernel,
/// more four at a time, each row decoded once per four (a 7-token prompt,
/// 1B-shape IQ2_XXS, 2 cores: 23.9 t/s one token at a time, 49.1 by four).
fn lowbit_dot_matmul<W: crate::quant::LowBit>(x: &CpuAct, w: &CpuWeight, out: &mut CpuAct) {
    if x.n == 1 {
        return dot_matmul(x, w, out, simd::dot_kernel::<W>());
    }
    let (n, cols, rows) = (x.n, x.width, w.rows);
    let nb = cols / QK_K;
    let xq: Vec<BlockQ8K> = quantize_act_rows(x);
    let weights: &[W] = bytemuck::cast_slice(w.data());
    let x4 = simd::lowbit_x4_kernel::<W>();
    for_each_tile(rows, n, cols, out, |tile| {
        let tokens: Vec<usize> = tile.tokens.clone().collect();
        for r in tile.rows.clone() {
            let wrow = &weights[r * nb..(r + 1) * nb];
            for four in tokens.chunks(4) {
                let a: [&[BlockQ8K]; 4] = std::array::from_fn(|k| {
                    let t = four[k.min(four.len() - 1)];
                    &xq[t * nb..(t + 1) * nb]
                });
                let v = x4(wrow, a);
                for (k, &t) in four.iter().enumerate() {
                    tile.set(t, r, v[k]);
                }
            }
        }
    });
}

/// Every output a dot product of a weight row with a token's activations.
fn dot_matmul<W: BlockFormat>(
    x: &CpuAct,
    w: &CpuWeight,
    out: &mut CpuAct,
    dot: simd::DotKernel<W>,
) {
    let (n, cols, rows) = (x.n, x.width, w.rows);
    let nb = cols / W::ELEMS;
    let act_elems = <W::Act as BlockFormat>::ELEMS;
    let nb_act = cols / act_elems;
    // Quantize every activation row once.
    let xq: Vec<W::Act> = quantize_act_rows(x);
    let weights: &[W] = bytemuck::cast_slice(w.data());
    for_each_tile(rows, n, cols, out, |tile| {
        for r in tile.rows.clone() {
            let wrow = &weights[r * nb..(r + 1) * nb];
            for t in tile.tokens.clone() {
                tile.set(t, r, dot(wrow, &xq[t * nb_act..(t + 1) * nb_act]));
            }
        }
    });
}

/// Every activation row quantized to the activation format `A`, row after row.
fn quantize_act_rows<A: BlockFormat>(x: &CpuAct) -> Vec<A> {
    x.data
        .par_chunks(x.width)
        .flat_map_iter(|row| row.chunks_exact(A::ELEMS).map(A::quantize_activation))
        .collect()
}

/// `Tokens8::of` each whole block of eight tokens among the first `end` of
/// the quantized activations (`nb` blocks per token), in token order.
fn tokens8(xq: &[BlockQ8K], nb: usize, end: usize) -> Vec<Vec<simd::Tokens8>> {
    (0..end / 8)
        .into_par_iter()
        .map(|b| {
            let t0 = 8 * b;
            simd::Tokens8::of(std::array::from_fn(|i| {
                &xq[(t0 + i) * nb..(t0 + i + 1) * nb]
            }))
        })
        .collect()
}

/// Every output of the tile: for each row, tokens eight at a time through
/// `x8(row, first token)` while all eight lie below `eight_end`, the others
/// one at a time through `one(row, token)`.
fn by_eight_tokens(
    tile: &mut Tile,
    eight_end: usize,
    x8: Option<impl Fn(usize, usize) -> [f32; 8]>,
    one: impl Fn(usize, usize) -> f32,
) {
    for r in tile.rows.clone() {
        let mut t = tile.tokens.start;
        if let Some(x8) = &x8 {
            while t + 8 <= tile.tokens.end.min(eight_end) {
                for (k, v) in x8(r, t).into_iter().enumerate() {
                    tile.set(t + k, r, v);
                }
                t += 8;
            }
        }
        for t in t..tile.tokens.end {
            tile.set(t, r, one(r, t));
        }
    }
}

/// Q4_K as llama.cpp's x86 backend multiplies it (it repacks Q4_K matrices):
/// tokens in whole groups of four from the start of the batch take its GEMM's
/// float order, the rest its single-token GEMV's, so each token's result
/// matches llama.cpp's for the same batch bit for bit. A batch of at most
/// `dot_max` tokens (decode steps, batch-invariant server batches) gives
/// every token the single-token order, so a token's result never depends on
/// its company.
fn q4_k_llama_order(
    x: &CpuAct,
    w: &CpuWeight,
    out: &mut CpuAct,
    dot_max: usize,
    kernel: simd::Q4kRepackedKernel,
) {
    let (n, cols, rows) = (x.n, x.width, w.rows);
    let nb = cols / QK_K;
    let xq: Vec<BlockQ8K> = quantize_act_rows(x);
    let weights: &[BlockQ4K] = bytemuck::cast_slice(w.data());
    let grouped = if n <= dot_max { 0 } else { n - n % 4 };
    let act = |t: usize| &xq[t * nb..(t + 1) * nb];
    let wrow = |r: usize| &weights[r * nb..(r + 1) * nb];
    let pre = tokens8(&xq, nb, grouped);
    let x8 = simd::q4_k_repacked_x8_kernel().map(|k| {
        let pre = &pre;
        move |r: usize, t: usize| k(wrow(r), std::array::from_fn(|i| act(t + i)), &pre[t / 8])
    });
    // Eight grouped tokens at a time share the weight row's unpacking.
    for_each_tile(rows, n, cols, out, |tile| {
        by_eight_tokens(tile, grouped, x8, |r, t| {
            kernel(wrow(r), act(t), t < grouped)
        })
    });
}

/// Q6_K as llama.cpp's x86 backend multiplies it: batches of 8 tokens or more
/// (beyond `dot_max`) in its per-super-block float order, smaller ones with
/// the `vec_dot` kernel (the quantized dot path).
fn q6_k_llama_order(
    x: &CpuAct,
    w: &CpuWeight,
    out: &mut CpuAct,
    dot_max: usize,
    kernel: simd::Q6kSuperblockKernel,
) {
    let (n, cols, rows) = (x.n, x.width, w.rows);
    if n < 8 || n <= dot_max {
        return quant_matmul::<BlockQ6K>(x, w, out, usize::MAX);
    }
    let nb = cols / QK_K;
    let xq: Vec<BlockQ8K> = quantize_act_rows(x);
    let weights: &[BlockQ6K] = bytemuck::cast_slice(w.data());
    let act = |t: usize| &xq[t * nb..(t + 1) * nb];
    let wrow = |r: usize| &weights[r * nb..(r + 1) * nb];
    let pre = tokens8(&xq, nb, n);
    let x8 = simd::q6_k_superblock_x8_kernel().map(|k| {
        let pre = &pre;
        move |r: usize, t: usize| k(wrow(r), std::array::from_fn(|i| act(t + i)), &pre[t / 8])
    });
    for_each_tile(rows, n, cols, out, |tile| {
        by_eight_tokens(tile, n, x8, |r, t| kernel(wrow(r), act(t)))
    });
}

fn gemm_matmul<W: GemmFormat>(x: &CpuAct, w: &CpuWeight, out: &mut CpuAct) {
    let (n, cols, rows) = (x.n, x.width, w.rows);
    let nb = cols / W::ELEMS;
    let acts: Vec<PreparedAct> = x
        .data
        .par_chunks(cols)
        .map(|row| W::prepare_act(&quantize_row::<W::Act>(row)))
        .collect();
    let weights: &[W] = bytemuck::cast_slice(w.data());
    let sub = if W::SUB == 0 { 32 } else { W::SUB };
    // Offsets (Q4_1/Q5_1 minimums, k-quant mins) through the activations'
    // sub-block sums, summed in order as ggml does.
    let with_offsets = |row: &PreparedRow, t: usize, v: f32| {
        if W::SUB == 0 {
            return v;
        }
        let mut offsets = 0f32;
        for (o, s) in row.offset.iter().zip(&acts[t].sums) {
            offsets += o * s;
        }
        v + offsets
    };
    // One row against tokens `from..end` of the tile.
    let single_row = |tile: &mut Tile, row: &PreparedRow, r: usize, from: usize| {
        let end = tile.tokens.end;
        let mut t = from;
        while t + 8 <= end {
            let a = std::array::from_fn(|k| acts[t + k].q.as_slice());
            let d = std::array::from_fn(|k| acts[t + k].d.as_slice());
            let Some(v) = simd::grouped_dot8(&row.q, &row.lane_scale, a, d) else {
                break;
            };
            for (k, v) in v.into_iter().enumerate() {
                tile.set(t + k, r, with_offsets(row, t + k, v));
            }
            t += 8;
        }
        while t + 4 <= end {
            let a = [0, 1, 2, 3].map(|k| acts[t + k].q.as_slice());
            let d = [0, 1, 2, 3].map(|k| acts[t + k].d.as_slice());
            let v = simd::grouped_dot4(&row.q, &row.lane_scale, a, d);
            for (k, v) in v.into_iter().enumerate() {
                tile.set(t + k, r, with_offsets(row, t + k, v));
            }
            t += 4;
        }
        for (t, a) in acts.iter().enumerate().take(end).skip(t) {
            let v = simd::grouped_dot(&row.q, &row.lane_scale, &a.q, &a.d);
            tile.set(t, r, with_offsets(row, t, v));
        }
    };
    for_each_tile(rows, n, cols, out, |tile| {
        let mut prepared = [PreparedRow::new(cols, sub), PreparedRow::new(cols, sub)];
        let ts = tile.tokens.clone();
        let mut r = tile.rows.start;
        // Rows in pairs, eight tokens at a time, where the CPU has the registers.
        while r + 2 <= tile.rows.end {
            W::prepare(&weights[r * nb..(r + 1) * nb], &mut prepared[0]);
            W::prepare(&weights[(r + 1) * nb..(r + 2) * nb], &mut prepared[1]);
            let [p0, p1] = &prepared;
            let mut t = ts.start;
            while t + 8 <= ts.end {
                let a = std::array::from_fn(|k| acts[t + k].q.as_slice());
                let d = std::array::from_fn(|k| acts[t + k].d.as_slice());
                let Some(v) =
                    simd::grouped_dot_2x8([&p0.q, &p1.q], [&p0.lane_scale, &p1.lane_scale], a, d)
                else {
                    break;
                };
                for (k, (&v0, &v1)) in v[0].iter().zip(&v[1]).enumerate() {
                    tile.set(t + k, r, with_offsets(p0, t + k, v0));
                    tile.set(t + k, r + 1, with_offsets(p1, t + k, v1));
                }
                t += 8;
            }
            single_row(tile, p0, r, t);
            single_row(tile, p1, r + 1, t);
            r += 2;
        }
        if r < tile.rows.end {
            W::prepare(&weights[r * nb..(r + 1) * nb], &mut prepared[0]);
            single_row(tile, &prepared[0], r, ts.start);
        }
    });
}

/// f32 weights (a mixture's router) in llama.cpp's order: a batch of more
/// than `dot_max` tokens as its f32 GEMM (tinyBLAS: 16 lanes of fused
/// multiply-adds over the row, then the 16-lane reduction), fewer token by
/// token as its f32 dot product (four accumulators of 16 lanes over each 64
/// elements, combined pairwise, reduced, the rest added in f64).
fn f32_matmul(x: &CpuAct, w: &CpuWeight, out: &mut CpuAct, dot_max: usize) {
    use super::reference_math::{reduce_groups, reduce16};
    let (n, cols, rows) = (x.n, x.width, w.rows);
    let weights: &[f32] = bytemuck::cast_slice(w.data());
    let gemm = n > dot_max && cols.is_multiple_of(16);
    for_each_tile(rows, n, cols, out, |tile| {
        for r in tile.rows.clone() {
            let wrow = &weights[r * cols..(r + 1) * cols];
            for t in tile.tokens.clone() {
                let xrow = x.row(t);
                let v = if gemm {
                    let mut lanes = [0f32; 16];
                    for (a, b) in wrow.chunks_exact(16).zip(xrow.chunks_exact(16)) {
                        for l in 0..16 {
                            lanes[l] = a[l].mul_add(b[l], lanes[l]);
                        }
                    }
                    reduce16(&lanes)
                } else {
                    let whole = cols / 64 * 64;
                    let mut acc = [[0f32; 16]; 4];
                    for (i, (&a, &b)) in wrow[..whole].iter().zip(&xrow[..whole]).enumerate() {
                        let lane = &mut acc[(i / 16) % 4][i % 16];
                        *lane = a.mul_add(b, *lane);
                    }
                    let mut sum = reduce_groups(&acc) as f64;
                    for (&a, &b) in wrow[whole..].iter().zip(&xrow[whole..]) {
                        sum += (a * b) as f64;
                    }
                    sum as f32
                };
                tile.set(t, r, v);
            }
        }
    });
}

fn float_matmul<W: BlockFormat<Act = f32>>(x: &CpuAct, w: &CpuWeight, out: &mut CpuAct) {
    let (n, cols, rows) = (x.n, x.width, w.rows);
    let weights: &[W] = bytemuck::cast_slice(w.data());
    for_each_tile(rows, n, cols, out, |tile| {
        let mut wrow = vec![0f32; cols];
        for r in tile.rows.clone() {
            for (o, b) in wrow.iter_mut().zip(&weights[r * cols..(r + 1) * cols]) {
                b.dequantize(std::slice::from_mut(o));
            }
            for t in tile.tokens.clone() {
                tile.set(t, r, simd::dot_f32(&wrow, x.row(t)));
            }
        }
    });
}
