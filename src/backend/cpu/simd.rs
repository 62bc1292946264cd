//! SIMD kernels, chosen at run time from what the CPU supports, with the
//! scalar reference (`crate::quant`) as the fallback.

use half::f16;

use crate::quant::{BlockFormat, BlockQ4K, BlockQ6K, BlockQ8K};

#[cfg(target_arch = "x86_64")]
mod x86;

/// The instruction sets the kernels use on this CPU.
pub fn describe() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_avx512_vnni() {
            return "AVX2 + AVX512-VNNI";
        }
        if x86::has_avx2() {
            return "AVX2";
        }
    }
    "scalar"
}

/// A Q4_K row against Q8_K activations in the float order of llama.cpp's
/// repacked kernels (`true`: its 4-token GEMM, `false`: its single-token
/// GEMV), where this CPU runs them (x86 with AVX2).
pub type Q4kRepackedKernel = fn(&[BlockQ4K], &[BlockQ8K], bool) -> f32;

pub fn q4_k_repacked_kernel() -> Option<Q4kRepackedKernel> {
    #[cfg(target_arch = "x86_64")]
    return x86::q4_k_repacked_kernel();
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// A Q6_K row against Q8_K activations in the float order llama.cpp's x86
/// backend uses from 8 tokens on, where this CPU runs it (AVX2).
pub type Q6kSuperblockKernel = fn(&[BlockQ6K], &[BlockQ8K]) -> f32;

pub fn q6_k_superblock_kernel() -> Option<Q6kSuperblockKernel> {
    #[cfg(target_arch = "x86_64")]
    return x86::q6_k_superblock_kernel();
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// What eight tokens' Q8_K activations contribute to each super-block of a
/// product besides their quants, side by side (one token per lane): their
/// scales and their 32-element sums. Computed once per block of eight tokens,
/// shared by every weight row.
pub struct Tokens8 {
    pub d: [f32; 8],
    /// `bsum32[s][t]`: Σ of token t's quants in sub-block s.
    pub bsum32: [[i32; 8]; 8],
}

impl Tokens8 {
    /// One entry per super-block of the eight rows.
    pub fn of(a: [&[BlockQ8K]; 8]) -> Vec<Tokens8> {
        (0..a[0].len())
            .map(|b| Tokens8 {
                d: std::array::from_fn(|t| a[t][b].d),
                bsum32: std::array::from_fn(|s| {
                    std::array::from_fn(|t| {
                        a[t][b].bsums[2 * s] as i32 + a[t][b].bsums[2 * s + 1] as i32
                    })
                }),
            })
            .collect()
    }
}

/// Eight tokens at once, each with the result its single-token kernel gives
/// (`Q4kRepackedKernel` with `true`, `Q6kSuperblockKernel`); `pre` is
/// `Tokens8::of` the same eight activation rows.
pub type Q4kRepackedX8Kernel = fn(&[BlockQ4K], [&[BlockQ8K]; 8], &[Tokens8]) -> [f32; 8];
pub type Q6kSuperblockX8Kernel = fn(&[BlockQ6K], [&[BlockQ8K]; 8], &[Tokens8]) -> [f32; 8];

pub fn q4_k_repacked_x8_kernel() -> Option<Q4kRepackedX8Kernel> {
    #[cfg(target_arch = "x86_64")]
    return x86::q4_k_repacked_x8_kernel();
    #[cfg(not(target_arch = "x86_64"))]
    None
}

pub fn q6_k_superblock_x8_kernel() -> Option<Q6kSuperblockX8Kernel> {
    #[cfg(target_arch = "x86_64")]
    return x86::q6_k_superblock_x8_kernel();
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// A dot product of weight blocks with activation blocks.
pub type DotKernel<W> = fn(&[W], &[<W as BlockFormat>::Act]) -> f32;

/// The fastest dot-product kernel for weight blocks `W` on this CPU.
pub fn dot_kernel<W: BlockFormat>() -> DotKernel<W> {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86::dot_kernel::<W>() {
        return k;
    }
    W::vec_dot
}

/// An i-quant row against four tokens' Q8_K rows, each in the per-token
/// order of `quant::vec_dot_lowbit` (the row decoded once for the four).
pub type LowbitX4Kernel<W> = fn(&[W], [&[crate::quant::BlockQ8K]; 4]) -> [f32; 4];

pub fn lowbit_x4_kernel<W: crate::quant::LowBit>() -> LowbitX4Kernel<W> {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86::lowbit_x4_kernel::<W>() {
        return k;
    }
    |w, a| a.map(|a| crate::quant::vec_dot_lowbit(w, a))
}

/// A row of decoded i-quant super-blocks against four tokens' Q8_K rows, in
/// llama.cpp's tiled order (`quant::vec_dot_lowbit_tiled` for each token).
pub type TiledRow4Kernel =
    fn(&[crate::quant::TiledBlock], [&[crate::quant::BlockQ8K]; 4]) -> [f32; 4];

pub fn tiled_row4_kernel() -> TiledRow4Kernel {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86::tiled_row4_kernel() {
        return k;
    }
    |blocks, a| {
        a.map(|a| {
            blocks.iter().zip(a).fold(0f32, |acc, (t, a)| {
                (t.sum(a) as f32 * t.d).mul_add(a.d, acc)
            })
        })
    }
}

/// `Σ a[i]·b[i]` in f32.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { x86::dot_f32(a, b) };
    }
    // Eight partial sums, as the vector version, so that the compiler can vectorise.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `Σ k[i]·q[i]` with f16 keys.
pub fn dot_f16_f32(k: &[f16], q: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present.
        return unsafe { x86::dot_f16_f32(k, q) };
    }
    k.iter().zip(q).map(|(k, q)| k.to_f32() * q).sum()
}

/// `acc[i] += p·v[i]` with f16 values.
pub fn axpy_f16(acc: &mut [f32], v: &[f16], p: f32) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present.
        return unsafe { x86::axpy_f16(acc, v, p) };
    }
    for (a, v) in acc.iter_mut().zip(v) {
        *a += p * v.to_f32();
    }
}

/// `Σ_g (Σ_{i in g} w[i]·a[i]) · scale[g][lane] · d[g]` over groups of 32, where
/// the first 16 elements of a group use `scale[g][0]` and the last 16
/// `scale[g][4]` (see `gemm::PreparedRow`).
pub fn grouped_dot(w: &[i8], scale: &[[f32; 8]], a: &[i8], d: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 and FMA are present; lengths are checked inside.
        return unsafe { x86::grouped_dot(w, scale, a, d) };
    }
    let mut sum = 0f32;
    for (g, s) in scale.iter().enumerate() {
        for half in 0..2 {
            let r = 32 * g + 16 * half..32 * g + 16 * half + 16;
            let isum: i32 = w[r.clone()]
                .iter()
                .zip(&a[r])
                .map(|(&x, &y)| x as i32 * y as i32)
                .sum();
            sum += isum as f32 * (s[4 * half] * d[g]);
        }
    }
    sum
}

/// `grouped_dot` of one weight row with eight activation rows (VNNI only;
/// `None` elsewhere).
pub fn grouped_dot8(
    w: &[i8],
    scale: &[[f32; 8]],
    a: [&[i8]; 8],
    d: [&[f32]; 8],
) -> Option<[f32; 8]> {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx512_vnni() {
        // SAFETY: the features are present; lengths are checked inside.
        return Some(unsafe { x86::grouped_dot4_vnni(w, scale, a, d) });
    }
    let _ = (w, scale, a, d);
    None
}

/// `grouped_dot` of two weight rows with eight activation rows (VNNI only;
/// `None` elsewhere).
pub fn grouped_dot_2x8(
    w: [&[i8]; 2],
    scale: [&[[f32; 8]]; 2],
    a: [&[i8]; 8],
    d: [&[f32]; 8],
) -> Option<[[f32; 8]; 2]> {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx512_vnni() {
        // SAFETY: the features are present; lengths are checked inside.
        return Some(unsafe { x86::grouped_dot_2x8_vnni(w, scale, a, d) });
    }
    let _ = (w, scale, a, d);
    None
}

/// `grouped_dot` of one weight row with four activation rows.
pub fn grouped_dot4(w: &[i8], scale: &[[f32; 8]], a: [&[i8]; 4], d: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_avx512_vnni() {
            // SAFETY: the features are present; lengths are checked inside.
            return unsafe { x86::grouped_dot4_vnni(w, scale, a, d) };
        }
        if x86::has_avx2() {
            // SAFETY: AVX2 and FMA are present; lengths are checked inside.
            return unsafe { x86::grouped_dot4(w, scale, a, d) };
        }
    }
    [0, 1, 2, 3].map(|k| grouped_dot(w, scale, a[k], d[k]))
}

/// A legacy block with 4-bit values and, for the 5-bit formats, high bits.
pub trait NibbleBlock {
    fn qs(&self) -> &[u8; 16];
    fn qh(&self) -> Option<[u8; 4]>;
}

macro_rules! nibble_block {
    ($ty:ty, $qh:expr) => {
        impl NibbleBlock for $ty {
            fn qs(&self) -> &[u8; 16] {
                &self.qs
            }
            fn qh(&self) -> Option<[u8; 4]> {
                #[allow(clippy::redundant_closure_call)]
                ($qh)(self)
            }
        }
    };
}
nibble_block!(crate::quant::BlockQ4_0, |_b: &crate::quant::BlockQ4_0| None);
nibble_block!(crate::quant::BlockQ4_1, |_b: &crate::quant::BlockQ4_1| None);
nibble_block!(crate::quant::BlockQ5_0, |b: &crate::quant::BlockQ5_0| Some(
    b.qh
));
nibble_block!(crate::quant::BlockQ5_1, |b: &crate::quant::BlockQ5_1| Some(
    b.qh
));

/// Unpack 4/5-bit legacy blocks to `q - bias` bytes. Returns false when there
/// is no fast path (the caller unpacks).
pub fn unpack_nibbles<B: NibbleBlock>(blocks: &[B], bias: i8, out: &mut [i8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 is present; the output length is checked inside.
        unsafe { x86::unpack_nibbles(blocks, bias, out) };
        return true;
    }
    let _ = (blocks, bias, out);
    false
}

/// Unpack Q6_K values to `q - 32`; false when there is no fast path.
pub fn unpack_q6_k(blocks: &[crate::quant::BlockQ6K], out: &mut [i8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 is present; the output length is checked inside.
        unsafe { x86::unpack_q6_k(blocks, out) };
        return true;
    }
    let _ = (blocks, out);
    false
}

/// Unpack Q4_K values; false when there is no fast path.
pub fn unpack_q4_k(blocks: &[crate::quant::BlockQ4K], out: &mut [i8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 is present; the output length is checked inside.
        unsafe { x86::unpack_q4_k(blocks, out) };
        return true;
    }
    let _ = (blocks, out);
    false
}

/// `out[i] = src[i]` widened to f32.
pub fn f16_to_f32(src: &[f16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 and F16C are present.
        return unsafe { x86::f16_to_f32(src, out) };
    }
    for (o, s) in out.iter_mut().zip(src) {
        *o = s.to_f32();
    }
}

/// `acc[i] += p·v[i]`.
pub fn axpy_f32(acc: &mut [f32], v: &[f32], p: f32) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { x86::axpy_f32(acc, v, p) };
    }
    for (a, v) in acc.iter_mut().zip(v) {
        *a += p * v;
    }
}

/// Quantize activations to Q8_0/Q8_1 blocks as ggml does at run time, with
/// `make(d, qs)` building each block.
fn quantize_q8_with<B: BlockFormat>(x: &[f32], make: impl Fn(f32, [i8; 32]) -> B) -> Vec<B> {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        return x
            .chunks_exact(32)
            .map(|c| {
                let mut qs = [0i8; 32];
                // SAFETY: AVX2 is present; the chunk is 32 values.
                let (d, _) = unsafe { x86::quantize_q8_block(c, &mut qs) };
                make(d, qs)
            })
            .collect();
    }
    let _ = make;
    x.chunks_exact(32).map(B::quantize_activation).collect()
}

/// Quantize activations to Q8_0 blocks as ggml does at run time.
pub fn quantize_q8_0(x: &[f32]) -> Vec<crate::quant::BlockQ8_0> {
    quantize_q8_with(x, |d, qs| crate::quant::BlockQ8_0 {
        d: f16::from_f32(d),
        qs,
    })
}

/// Quantize activations to Q8_1 blocks as ggml does at run time.
pub fn quantize_q8_1(x: &[f32]) -> Vec<crate::quant::BlockQ8_1> {
    quantize_q8_with(x, crate::quant::BlockQ8_1::from_parts)
}

/// Dot products of eight consecutive `hd`-long rows of `k` with `q`.
pub fn dot8_rows(k: &[f32], q: &[f32], hd: usize) -> [f32; 8] {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() && hd.is_multiple_of(8) {
        // SAFETY: AVX2 and FMA are present; bounds are checked inside.
        return unsafe { x86::dot8_rows(k, q, hd) };
    }
    std::array::from_fn(|r| dot_f32(&k[r * hd..(r + 1) * hd], q))
}

/// `out = Σ_j p[j] · v[j·hd .. (j+1)·hd]`.
pub fn weighted_rows(v: &[f32], p: &[f32], hd: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() && hd.is_multiple_of(8) && hd <= 256 {
        // SAFETY: AVX2 and FMA are present; bounds are checked inside.
        return unsafe { x86::weighted_rows(v, p, hd, out) };
    }
    out[..hd].fill(0.0);
    for (j, &pj) in p.iter().enumerate() {
        axpy_f32(&mut out[..hd], &v[j * hd..(j + 1) * hd], pj);
    }
}
