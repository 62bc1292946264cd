//! AVX2 (+FMA, F16C) kernels.
//!
//! The quantized dot products widen 4/5/6-bit weights to bytes, multiply them
//! with the 8-bit activations by `maddubs` (unsigned × signed bytes, pairwise
//! summed to i16), sum pairs to i32 with `madd`, and scale in f32 per block.

use std::arch::x86_64::*;

use half::f16;

use super::DotKernel;
use crate::quant::{
    BlockFormat, BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS,
    BlockIQ4NL, BlockIQ4XS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K,
    BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, GgmlType, IQ4_GRID,
    MXFP4_GRID, e8m0_to_f32_half,
};

mod kquants;
mod lowbit;

pub fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// llama.cpp's repacked-Q4_K order (`kquants::q4_k_q8_k_repacked`), with AVX2.
pub fn q4_k_repacked_kernel() -> Option<super::Q4kRepackedKernel> {
    has_avx2().then_some(kquants::q4_k_q8_k_repacked as super::Q4kRepackedKernel)
}

/// llama.cpp's Q6_K order from 8 tokens on (`kquants::q6_k_q8_k_superblocks`), with AVX2.
pub fn q6_k_superblock_kernel() -> Option<super::Q6kSuperblockKernel> {
    has_avx2().then_some(kquants::q6_k_q8_k_superblocks as super::Q6kSuperblockKernel)
}

/// The eight-token forms of the two kernels above (Q4_K: the GEMM order).
pub fn q4_k_repacked_x8_kernel() -> Option<super::Q4kRepackedX8Kernel> {
    has_avx2().then_some(kquants::q4_k_q8_k_repacked_x8 as super::Q4kRepackedX8Kernel)
}

pub fn q6_k_superblock_x8_kernel() -> Option<super::Q6kSuperblockX8Kernel> {
    has_avx2().then_some(kquants::q6_k_q8_k_superblocks_x8 as super::Q6kSuperblockX8Kernel)
}

/// An i-quant row against four tokens in the per-token order, with AVX2.
pub fn lowbit_x4_kernel<W: crate::quant::LowBit>() -> Option<super::LowbitX4Kernel<W>> {
    has_avx2().then_some(lowbit::lowbit_q8_k_x4::<W> as super::LowbitX4Kernel<W>)
}

/// A decoded i-quant row against four tokens, with AVX2.
pub fn tiled_row4_kernel() -> Option<super::TiledRow4Kernel> {
    has_avx2().then_some(lowbit::tiled_row4 as super::TiledRow4Kernel)
}

/// The AVX2 kernel for `W`, if there is one and the CPU has AVX2.
pub fn dot_kernel<W: BlockFormat>() -> Option<DotKernel<W>> {
    if !has_avx2() {
        return None;
    }
    /// `k` as a kernel for `W`, if `B` is `W` and `A` is `W::Act`.
    fn wrap<W: BlockFormat, B: BlockFormat, A: BlockFormat>(
        k: fn(&[B], &[A]) -> f32,
    ) -> Option<DotKernel<W>> {
        use std::any::TypeId;
        if TypeId::of::<W>() != TypeId::of::<B>() || TypeId::of::<W::Act>() != TypeId::of::<A>() {
            return None;
        }
        // SAFETY: the type ids are equal, so both function pointer types are the same type.
        Some(unsafe { std::mem::transmute::<fn(&[B], &[A]) -> f32, fn(&[W], &[W::Act]) -> f32>(k) })
    }
    match W::TYPE {
        GgmlType::Q4_0 => wrap::<W, BlockQ4_0, BlockQ8_0>(q4_0_q8_0),
        GgmlType::Q4_1 => wrap::<W, BlockQ4_1, BlockQ8_1>(q4_1_q8_1),
        GgmlType::Q5_0 => wrap::<W, BlockQ5_0, BlockQ8_0>(q5_0_q8_0),
        GgmlType::Q5_1 => wrap::<W, BlockQ5_1, BlockQ8_1>(q5_1_q8_1),
        GgmlType::Q8_0 => wrap::<W, BlockQ8_0, BlockQ8_0>(q8_0_q8_0),
        GgmlType::Q2_K => wrap::<W, BlockQ2K, BlockQ8K>(kquants::q2_k_q8_k),
        GgmlType::Q3_K => wrap::<W, BlockQ3K, BlockQ8K>(kquants::q3_k_q8_k),
        GgmlType::Q4_K => wrap::<W, BlockQ4K, BlockQ8K>(kquants::q4_k_q8_k),
        GgmlType::Q5_K => wrap::<W, BlockQ5K, BlockQ8K>(kquants::q5_k_q8_k),
        GgmlType::Q6_K => wrap::<W, BlockQ6K, BlockQ8K>(kquants::q6_k_q8_k),
        GgmlType::IQ4_NL => wrap::<W, BlockIQ4NL, BlockQ8_0>(iq4_nl_q8_0),
        GgmlType::IQ4_XS => wrap::<W, BlockIQ4XS, BlockQ8K>(iq4_xs_q8_k),
        GgmlType::MXFP4 => wrap::<W, BlockMXFP4, BlockQ8_0>(mxfp4_q8_0),
        GgmlType::IQ2_XXS => wrap::<W, BlockIQ2XXS, BlockQ8K>(lowbit::lowbit_q8_k),
        GgmlType::IQ2_XS => wrap::<W, BlockIQ2XS, BlockQ8K>(lowbit::lowbit_q8_k),
        GgmlType::IQ2_S => wrap::<W, BlockIQ2S, BlockQ8K>(lowbit::lowbit_q8_k),
        GgmlType::IQ3_XXS => wrap::<W, BlockIQ3XXS, BlockQ8K>(lowbit::lowbit_q8_k),
        GgmlType::IQ3_S => wrap::<W, BlockIQ3S, BlockQ8K>(lowbit::lowbit_q8_k),
        GgmlType::IQ1_S => wrap::<W, BlockIQ1S, BlockQ8K>(lowbit::lowbit_q8_k),
        GgmlType::IQ1_M => wrap::<W, BlockIQ1M, BlockQ8K>(lowbit::lowbit_q8_k),
        _ => None,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum_ps(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 32 bytes: the low nibbles of `qs` (elements 0..16), then the high nibbles.
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles_32(qs: &[u8; 16]) -> __m256i {
    // SAFETY: 16 readable bytes.
    let t = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(t), t);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// 32 bytes, 0xFF where bit i of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn bytes_from_bits_32(bits: u32) -> __m256i {
    // Byte i gets byte i/8 of the word; OR-ing every bit but bit (i % 8) makes
    // it all-ones exactly when that bit is set.
    let shuffle = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuffle);
    let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1))
}

/// Σ over pairs of u8 × i8, as eight i32 sums converted to f32.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn madd_u8_i8(u: __m256i, s: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Σ over pairs of i8 × i8 (via |x| and sign(y, x)).
#[inline]
#[target_feature(enable = "avx2")]
fn madd_i8_i8(x: __m256i, y: __m256i) -> __m256 {
    madd_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn load_i8x32(q: &[i8; 32]) -> __m256i {
    // SAFETY: 32 readable bytes.
    unsafe { _mm256_loadu_si256(q.as_ptr() as *const __m256i) }
}

/// 32 signed bytes: the grid values of the 16 bytes' low nibbles (elements
/// 0..16), then of their high nibbles (a 16-entry table lookup by `pshufb`).
#[inline]
#[target_feature(enable = "avx2")]
fn grid_32(qs: &[u8], grid: &[i8; 16]) -> __m256i {
    // SAFETY: 16 readable bytes each.
    let (t, table) = unsafe {
        (
            _mm_loadu_si128(qs.as_ptr() as *const __m128i),
            _mm_loadu_si128(grid.as_ptr() as *const __m128i),
        )
    };
    let m = _mm_set1_epi8(0x0f);
    let lo = _mm_shuffle_epi8(table, _mm_and_si128(t, m));
    let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16::<4>(t), m));
    _mm256_set_m128i(hi, lo)
}

// The 4-bit grid formats: one lookup per block, then the i8 × i8 products
// of the other formats (every grid value fits `maddubs` after the sign
// trick: |−127| · 127 · 2 < 2^15). The scalar dot products summed the grid
// values one by one and ran at half of Q4_K's rate on a smaller file (tg
// 3.45 t/s IQ4_NL vs 7.60 Q4_K, qwen2.5-0.5b shape, 2 cores).
fn iq4_nl_q8_0(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { iq4_nl_q8_0_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn iq4_nl_q8_0_avx2(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        let d = _mm256_set1_ps(a.d.to_f32() * w.d.to_f32());
        acc = _mm256_fmadd_ps(
            d,
            madd_i8_i8(grid_32(&w.qs, &IQ4_GRID), load_i8x32(&a.qs)),
            acc,
        );
    }
    hsum_ps(acc)
}

fn mxfp4_q8_0(w: &[BlockMXFP4], a: &[BlockQ8_0]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { mxfp4_q8_0_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn mxfp4_q8_0_avx2(w: &[BlockMXFP4], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        let d = _mm256_set1_ps(a.d.to_f32() * e8m0_to_f32_half(w.e));
        acc = _mm256_fmadd_ps(
            d,
            madd_i8_i8(grid_32(&w.qs, &MXFP4_GRID), load_i8x32(&a.qs)),
            acc,
        );
    }
    hsum_ps(acc)
}

fn iq4_xs_q8_k(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { iq4_xs_q8_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn iq4_xs_q8_k_avx2(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        let d4d8 = w.d.to_f32() * a.d;
        for g in 0..8 {
            let x = grid_32(&w.qs[16 * g..16 * g + 16], &IQ4_GRID);
            // SAFETY: 32 readable bytes.
            let y = unsafe { _mm256_loadu_si256(a.qs[32 * g..].as_ptr() as *const __m256i) };
            let d = _mm256_set1_ps(d4d8 * w.group_scale(g) as f32);
            acc = _mm256_fmadd_ps(d, madd_i8_i8(x, y), acc);
        }
    }
    hsum_ps(acc)
}

fn q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q4_0_q8_0_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_q8_0_avx2(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        let d = _mm256_set1_ps(w.d.to_f32() * a.d.to_f32());
        let x = _mm256_sub_epi8(nibbles_32(&w.qs), _mm256_set1_epi8(8));
        acc = _mm256_fmadd_ps(d, madd_i8_i8(x, load_i8x32(&a.qs)), acc);
    }
    hsum_ps(acc)
}

fn q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q4_1_q8_1_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_q8_1_avx2(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (w, a) in w.iter().zip(a) {
        mins += w.m.to_f32() * a.s.to_f32();
        let d = _mm256_set1_ps(w.d.to_f32() * a.d.to_f32());
        acc = _mm256_fmadd_ps(d, madd_u8_i8(nibbles_32(&w.qs), load_i8x32(&a.qs)), acc);
    }
    hsum_ps(acc) + mins
}

fn q5_0_q8_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q5_0_q8_0_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_q8_0_avx2(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        let d = _mm256_set1_ps(w.d.to_f32() * a.d.to_f32());
        // Where the fifth bit is clear, OR in 0xF0: nibble | 0xF0 == nibble - 16.
        let high = _mm256_andnot_si256(
            bytes_from_bits_32(u32::from_le_bytes(w.qh)),
            _mm256_set1_epi8(0xf0u8 as i8),
        );
        let x = _mm256_or_si256(nibbles_32(&w.qs), high);
        acc = _mm256_fmadd_ps(d, madd_i8_i8(x, load_i8x32(&a.qs)), acc);
    }
    hsum_ps(acc)
}

fn q5_1_q8_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q5_1_q8_1_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_1_q8_1_avx2(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (w, a) in w.iter().zip(a) {
        mins += w.m.to_f32() * a.s.to_f32();
        let d = _mm256_set1_ps(w.d.to_f32() * a.d.to_f32());
        let high = _mm256_and_si256(
            bytes_from_bits_32(u32::from_le_bytes(w.qh)),
            _mm256_set1_epi8(0x10),
        );
        let x = _mm256_or_si256(nibbles_32(&w.qs), high);
        acc = _mm256_fmadd_ps(d, madd_u8_i8(x, load_i8x32(&a.qs)), acc);
    }
    hsum_ps(acc) + mins
}

fn q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q8_0_q8_0_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_q8_0_avx2(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        let d = _mm256_set1_ps(w.d.to_f32() * a.d.to_f32());
        acc = _mm256_fmadd_ps(d, madd_i8_i8(load_i8x32(&w.qs), load_i8x32(&a.qs)), acc);
    }
    hsum_ps(acc)
}

/// Σ a[i]·b[i].
///
/// # Safety
/// Requires AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load reads 8 floats below `n`.
    unsafe {
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                s0,
            );
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                s1,
            );
            i += 16;
        }
        while i + 8 <= n {
            s0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                s0,
            );
            i += 8;
        }
    }
    let mut s = hsum_ps(_mm256_add_ps(s0, s1));
    for j in i..n {
        s += a[j] * b[j];
    }
    s
}

/// Σ k[i]·q[i] with f16 `k`.
///
/// # Safety
/// Requires AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_f32(k: &[f16], q: &[f32]) -> f32 {
    let n = k.len().min(q.len());
    let mut s = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: every load reads 8 elements below `n`.
    unsafe {
        while i + 8 <= n {
            let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i) as *const __m128i));
            s = _mm256_fmadd_ps(kv, _mm256_loadu_ps(q.as_ptr().add(i)), s);
            i += 8;
        }
    }
    let mut s = hsum_ps(s);
    for j in i..n {
        s += k[j].to_f32() * q[j];
    }
    s
}

/// acc[i] += p·v[i] with f16 `v`.
///
/// # Safety
/// Requires AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_f16(acc: &mut [f32], v: &[f16], p: f32) {
    let n = acc.len().min(v.len());
    let pv = _mm256_set1_ps(p);
    let mut i = 0;
    // SAFETY: every access covers 8 elements below `n`.
    unsafe {
        while i + 8 <= n {
            let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i) as *const __m128i));
            let a = _mm256_loadu_ps(acc.as_ptr().add(i));
            _mm256_storeu_ps(acc.as_mut_ptr().add(i), _mm256_fmadd_ps(pv, vv, a));
            i += 8;
        }
    }
    for j in i..n {
        acc[j] += p * v[j].to_f32();
    }
}

/// Σ over groups of 32: (Σ w·a as f32) · lane_scale · d, accumulated in eight
/// lanes (the order ggml's AVX2 kernels use), then summed horizontally.
///
/// # Safety
/// Requires AVX2 and FMA; `w.len() == a.len() == 32 · scale.len() == 32 · d.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn grouped_dot(w: &[i8], scale: &[[f32; 8]], a: &[i8], d: &[f32]) -> f32 {
    let groups = scale.len();
    assert!(w.len() >= groups * 32 && a.len() >= groups * 32 && d.len() >= groups);
    let mut acc = _mm256_setzero_ps();
    for g in 0..groups {
        // SAFETY: group g's 32 bytes and 8 floats are in bounds (asserted).
        let (wv, av, sv) = unsafe {
            (
                _mm256_loadu_si256(w.as_ptr().add(32 * g) as *const __m256i),
                _mm256_loadu_si256(a.as_ptr().add(32 * g) as *const __m256i),
                _mm256_loadu_ps(scale[g].as_ptr()),
            )
        };
        let prod = madd_i8_i8(wv, av);
        acc = _mm256_fmadd_ps(_mm256_mul_ps(sv, _mm256_set1_ps(d[g])), prod, acc);
    }
    hsum_ps(acc)
}

pub fn has_avx512_vnni() -> bool {
    has_avx2() && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
}

/// `grouped_dot` of one weight row with four activation rows at once: the
/// weight bytes, their absolute values and the lane scales are loaded once per
/// group for all four.
///
/// # Safety
/// Requires AVX2 and FMA; every `a[k]` is as long as `w`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)]
pub unsafe fn grouped_dot4(
    w: &[i8],
    scale: &[[f32; 8]],
    a: [&[i8]; 4],
    d: [&[f32]; 4],
) -> [f32; 4] {
    let groups = scale.len();
    assert!(w.len() >= groups * 32);
    for k in 0..4 {
        assert!(a[k].len() >= groups * 32 && d[k].len() >= groups);
    }
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    for g in 0..groups {
        // SAFETY: group g is in bounds of every slice (asserted).
        unsafe {
            let wv = _mm256_loadu_si256(w.as_ptr().add(32 * g) as *const __m256i);
            let wabs = _mm256_sign_epi8(wv, wv);
            let sv = _mm256_loadu_ps(scale[g].as_ptr());
            for k in 0..4 {
                let av = _mm256_loadu_si256(a[k].as_ptr().add(32 * g) as *const __m256i);
                let pairs = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, wv));
                let prod = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                let s = _mm256_mul_ps(sv, _mm256_set1_ps(*d[k].get_unchecked(g)));
                acc[k] = _mm256_fmadd_ps(s, prod, acc[k]);
            }
        }
    }
    [
        hsum_ps(acc[0]),
        hsum_ps(acc[1]),
        hsum_ps(acc[2]),
        hsum_ps(acc[3]),
    ]
}

/// `grouped_dot4` with AVX-512 VNNI: one `vpdpbusd` replaces the
/// multiply-and-pairwise-add pair (the integer sums are the same).
///
/// # Safety
/// Requires AVX2, FMA, AVX512-VNNI and AVX512-VL; every `a[k]` is as long as `w`.
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
#[allow(clippy::needless_range_loop)]
pub unsafe fn grouped_dot4_vnni<const T: usize>(
    w: &[i8],
    scale: &[[f32; 8]],
    a: [&[i8]; T],
    d: [&[f32]; T],
) -> [f32; T] {
    let groups = scale.len();
    assert!(w.len() >= groups * 32);
    for k in 0..T {
        assert!(a[k].len() >= groups * 32 && d[k].len() >= groups);
    }
    let mut acc = [_mm256_setzero_ps(); T];
    for g in 0..groups {
        // SAFETY: group g is in bounds of every slice (asserted).
        unsafe {
            let wv = _mm256_loadu_si256(w.as_ptr().add(32 * g) as *const __m256i);
            let wabs = _mm256_sign_epi8(wv, wv);
            let sv = _mm256_loadu_ps(scale[g].as_ptr());
            for k in 0..T {
                let av = _mm256_loadu_si256(a[k].as_ptr().add(32 * g) as *const __m256i);
                let isum =
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), wabs, _mm256_sign_epi8(av, wv));
                let s = _mm256_mul_ps(sv, _mm256_set1_ps(*d[k].get_unchecked(g)));
                acc[k] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(isum), acc[k]);
            }
        }
    }
    acc.map(|v| hsum_ps(v))
}

/// Unpack legacy 4/5-bit blocks to signed bytes (`q - bias`), 32 per block.
///
/// # Safety
/// Requires AVX2; `out.len() >= 32 · blocks`.
#[target_feature(enable = "avx2")]
pub unsafe fn unpack_nibbles<B: super::NibbleBlock>(blocks: &[B], bias: i8, out: &mut [i8]) {
    assert!(out.len() >= blocks.len() * 32);
    for (i, b) in blocks.iter().enumerate() {
        let mut v = nibbles_32(b.qs());
        if let Some(qh) = b.qh() {
            let high = _mm256_and_si256(
                bytes_from_bits_32(u32::from_le_bytes(qh)),
                _mm256_set1_epi8(0x10),
            );
            v = _mm256_or_si256(v, high);
        }
        v = _mm256_sub_epi8(v, _mm256_set1_epi8(bias));
        // SAFETY: 32 bytes at 32·i are in bounds (asserted).
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(32 * i) as *mut __m256i, v) };
    }
}

/// Unpack the 6-bit values of Q6_K blocks to `q - 32`, 256 per block.
///
/// # Safety
/// Requires AVX2; `out.len() >= 256 · blocks`.
#[target_feature(enable = "avx2")]
pub unsafe fn unpack_q6_k(blocks: &[BlockQ6K], out: &mut [i8]) {
    assert!(out.len() >= blocks.len() * 256);
    let bias = _mm256_set1_epi8(32);
    for (i, b) in blocks.iter().enumerate() {
        for n in 0..2 {
            for (k, q) in kquants::q6_k_values(b, n).into_iter().enumerate() {
                // SAFETY: 32 bytes at this offset are inside `out` (asserted).
                unsafe {
                    let dst = out.as_mut_ptr().add(256 * i + 128 * n + 32 * k);
                    _mm256_storeu_si256(dst as *mut __m256i, _mm256_sub_epi8(q, bias));
                }
            }
        }
    }
}

/// Unpack the 4-bit values of Q4_K blocks, 256 per block.
///
/// # Safety
/// Requires AVX2; `out.len() >= 256 · blocks`.
#[target_feature(enable = "avx2")]
pub unsafe fn unpack_q4_k(blocks: &[BlockQ4K], out: &mut [i8]) {
    assert!(out.len() >= blocks.len() * 256);
    let low = _mm256_set1_epi8(0x0f);
    for (i, b) in blocks.iter().enumerate() {
        for j in 0..4 {
            // SAFETY: in-bounds loads and stores.
            unsafe {
                let q = _mm256_loadu_si256(b.qs.as_ptr().add(32 * j) as *const __m256i);
                let dst = out.as_mut_ptr().add(256 * i + 64 * j);
                _mm256_storeu_si256(dst as *mut __m256i, _mm256_and_si256(q, low));
                _mm256_storeu_si256(
                    dst.add(32) as *mut __m256i,
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), low),
                );
            }
        }
    }
}

/// out[i] = f32(src[i]).
///
/// # Safety
/// Requires AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn f16_to_f32(src: &[f16], out: &mut [f32]) {
    let n = src.len().min(out.len());
    let mut i = 0;
    // SAFETY: every access covers 8 elements below `n`.
    unsafe {
        while i + 8 <= n {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
            i += 8;
        }
    }
    for j in i..n {
        out[j] = src[j].to_f32();
    }
}

/// acc[i] += p·v[i].
///
/// # Safety
/// Requires AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_f32(acc: &mut [f32], v: &[f32], p: f32) {
    let n = acc.len().min(v.len());
    let pv = _mm256_set1_ps(p);
    let mut i = 0;
    // SAFETY: every access covers 8 elements below `n`.
    unsafe {
        while i + 8 <= n {
            let a = _mm256_loadu_ps(acc.as_ptr().add(i));
            _mm256_storeu_ps(
                acc.as_mut_ptr().add(i),
                _mm256_fmadd_ps(pv, _mm256_loadu_ps(v.as_ptr().add(i)), a),
            );
            i += 8;
        }
    }
    for j in i..n {
        acc[j] += p * v[j];
    }
}

/// Two weight rows × eight activation rows at once (sixteen accumulators, which
/// AVX-512VL's 32 vector registers hold): every activation load serves two rows,
/// halving the traffic from L2 that bounds the one-row kernel.
///
/// # Safety
/// Requires AVX2, FMA, AVX512-VNNI and AVX512-VL; all slices long enough for `scale0.len()` groups.
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
#[allow(clippy::needless_range_loop)]
pub unsafe fn grouped_dot_2x8_vnni(
    w: [&[i8]; 2],
    scale: [&[[f32; 8]]; 2],
    a: [&[i8]; 8],
    d: [&[f32]; 8],
) -> [[f32; 8]; 2] {
    let groups = scale[0].len();
    assert!(scale[1].len() == groups && w[0].len() >= groups * 32 && w[1].len() >= groups * 32);
    for k in 0..8 {
        assert!(a[k].len() >= groups * 32 && d[k].len() >= groups);
    }
    let mut acc0 = [_mm256_setzero_ps(); 8];
    let mut acc1 = [_mm256_setzero_ps(); 8];
    for g in 0..groups {
        // SAFETY: group g is in bounds of every slice (asserted).
        unsafe {
            let w0 = _mm256_loadu_si256(w[0].as_ptr().add(32 * g) as *const __m256i);
            let w1 = _mm256_loadu_si256(w[1].as_ptr().add(32 * g) as *const __m256i);
            let abs0 = _mm256_sign_epi8(w0, w0);
            let abs1 = _mm256_sign_epi8(w1, w1);
            let s0 = _mm256_loadu_ps(scale[0][g].as_ptr());
            let s1 = _mm256_loadu_ps(scale[1][g].as_ptr());
            for k in 0..8 {
                let av = _mm256_loadu_si256(a[k].as_ptr().add(32 * g) as *const __m256i);
                let dk = _mm256_set1_ps(*d[k].get_unchecked(g));
                let i0 =
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), abs0, _mm256_sign_epi8(av, w0));
                let i1 =
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), abs1, _mm256_sign_epi8(av, w1));
                acc0[k] = _mm256_fmadd_ps(_mm256_mul_ps(s0, dk), _mm256_cvtepi32_ps(i0), acc0[k]);
                acc1[k] = _mm256_fmadd_ps(_mm256_mul_ps(s1, dk), _mm256_cvtepi32_ps(i1), acc1[k]);
            }
        }
    }
    [acc0.map(|v| hsum_ps(v)), acc1.map(|v| hsum_ps(v))]
}

/// ggml's run-time Q8_0/Q8_1 activation quantizer for one block of 32:
/// returns (d, Σq) and writes `q = round_even(x · 127/amax)`. Bit-identical to
/// `BlockFormat::quantize_activation`.
///
/// # Safety
/// Requires AVX2; `x.len() == q.len() == 32`.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_q8_block(x: &[f32], q: &mut [i8; 32]) -> (f32, i32) {
    assert_eq!(x.len(), 32);
    let sign = _mm256_set1_ps(-0.0);
    // SAFETY: 32 floats are readable (asserted).
    let v = unsafe { [0, 1, 2, 3].map(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i))) };
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mul = _mm256_set1_ps(id);
    let ints = v.map(|vi| {
        _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(_mm256_mul_ps(vi, mul)))
    });
    let sum = _mm256_add_epi32(
        _mm256_add_epi32(ints[0], ints[1]),
        _mm256_add_epi32(ints[2], ints[3]),
    );
    let s4 = _mm_add_epi32(
        _mm256_extracti128_si256::<1>(sum),
        _mm256_castsi256_si128(sum),
    );
    let s4 = _mm_hadd_epi32(s4, s4);
    let s4 = _mm_hadd_epi32(s4, s4);
    // Pack to bytes and undo the lane interleaving of the pack instructions.
    let p16a = _mm256_packs_epi32(ints[0], ints[1]);
    let p16b = _mm256_packs_epi32(ints[2], ints[3]);
    let p8 = _mm256_packs_epi16(p16a, p16b);
    let p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: 32 writable bytes.
    unsafe { _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, p8) };
    (d, _mm_cvtsi128_si32(s4))
}

/// Dot products of eight rows of `k` (`8 · hd` floats, row-major) with `q`
/// (`hd` floats, a multiple of 8).
///
/// # Safety
/// Requires AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)]
pub unsafe fn dot8_rows(k: &[f32], q: &[f32], hd: usize) -> [f32; 8] {
    assert!(hd.is_multiple_of(8) && k.len() >= 8 * hd && q.len() >= hd);
    let mut acc = [_mm256_setzero_ps(); 8];
    for c in (0..hd).step_by(8) {
        // SAFETY: in bounds (asserted).
        unsafe {
            let qv = _mm256_loadu_ps(q.as_ptr().add(c));
            for r in 0..8 {
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(k.as_ptr().add(r * hd + c)), qv, acc[r]);
            }
        }
    }
    // Reduce eight vectors to one vector of eight sums.
    let h01 = _mm256_hadd_ps(acc[0], acc[1]);
    let h23 = _mm256_hadd_ps(acc[2], acc[3]);
    let h45 = _mm256_hadd_ps(acc[4], acc[5]);
    let h67 = _mm256_hadd_ps(acc[6], acc[7]);
    let h0123 = _mm256_hadd_ps(h01, h23);
    let h4567 = _mm256_hadd_ps(h45, h67);
    let lo = _mm256_permute2f128_ps::<0x20>(h0123, h4567);
    let hi = _mm256_permute2f128_ps::<0x31>(h0123, h4567);
    let sums = _mm256_add_ps(lo, hi);
    let mut out = [0f32; 8];
    // SAFETY: 8 writable floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums) };
    // Order: lanes of h0123 hold rows 0,1,2,3 (per 128-bit half), h4567 rows 4..7.
    [
        out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7],
    ]
}

/// out = Σ_j p[j] · v[j] over rows of `v` (`p.len() · hd` floats); `hd` a
/// multiple of 8 and at most 256, kept in registers across the rows.
///
/// # Safety
/// Requires AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)]
pub unsafe fn weighted_rows(v: &[f32], p: &[f32], hd: usize, out: &mut [f32]) {
    assert!(hd.is_multiple_of(8) && hd <= 256 && v.len() >= p.len() * hd && out.len() >= hd);
    let chunks = hd / 8;
    let mut acc = [_mm256_setzero_ps(); 32];
    for (j, &pj) in p.iter().enumerate() {
        let pv = _mm256_set1_ps(pj);
        for c in 0..chunks {
            // SAFETY: in bounds (asserted).
            acc[c] = _mm256_fmadd_ps(
                pv,
                unsafe { _mm256_loadu_ps(v.as_ptr().add(j * hd + 8 * c)) },
                acc[c],
            );
        }
    }
    for c in 0..chunks {
        // SAFETY: in bounds (asserted).
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), acc[c]) };
    }
}
