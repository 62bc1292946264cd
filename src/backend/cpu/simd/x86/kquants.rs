//! AVX2 dot products of the k-quants with Q8_K activations.
//!
//! Weights are widened to unsigned bytes (`q + offset` where the format is
//! signed), multiplied with the activations by `maddubs`, weighted by the
//! sub-block scales with `madd`, and the offsets and minimums are applied once
//! per super-block through the activation block sums (`bsums`).

use std::arch::x86_64::*;

use crate::quant::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

use super::super::Tokens8;
use super::hsum_ps;

#[inline]
#[target_feature(enable = "avx2")]
fn load32(p: &[u8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: 32 readable bytes (checked).
    unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load32_i8(p: &[i8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: 32 readable bytes (checked).
    unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
}

/// i16 scale vector: `s0` for the first 16 bytes of a 32-byte group, `s1` for the rest.
#[inline]
#[target_feature(enable = "avx2")]
fn scale_pair(s0: i16, s1: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0))
}

/// Σ q·a over 32 bytes, weighted per 16-byte half by `scales`, as eight i32.
#[inline]
#[target_feature(enable = "avx2")]
fn scaled_dot(q: __m256i, a: __m256i, scales: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scales)
}

#[inline]
#[target_feature(enable = "avx2")]
fn shift_right_bytes(v: __m256i, bits: i32) -> __m256i {
    _mm256_srl_epi16(v, _mm_cvtsi32_si128(bits))
}

fn bsum32(a: &BlockQ8K, sub32: usize) -> i32 {
    a.bsums[2 * sub32] as i32 + a.bsums[2 * sub32 + 1] as i32
}

pub fn q4_k_q8_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q4_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_avx2(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let low = _mm256_set1_epi8(0x0f);
    for (w, a) in w.iter().zip(a) {
        let (sc, m) = k4_scales(&w.scales);
        let min_sum: i32 = (0..8).map(|j| m[j] as i32 * bsum32(a, j)).sum();
        mins += a.d * w.dmin.to_f32() * min_sum as f32;
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let q = load32(&w.qs[32 * j..]);
            let lo = _mm256_and_si256(q, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
            let a_lo = load32_i8(&a.qs[64 * j..]);
            let a_hi = load32_i8(&a.qs[64 * j + 32..]);
            let s_lo = _mm256_set1_epi16(sc[2 * j] as i16);
            let s_hi = _mm256_set1_epi16(sc[2 * j + 1] as i16);
            sumi = _mm256_add_epi32(sumi, scaled_dot(lo, a_lo, s_lo));
            sumi = _mm256_add_epi32(sumi, scaled_dot(hi, a_hi, s_hi));
        }
        let d = _mm256_set1_ps(a.d * w.d.to_f32());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - mins
}

/// The eight 6-bit (scale, min) codes of a Q4_K/Q5_K block, unpacked a word
/// (four codes) at a time without branches.
fn k4_scales(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    let sc_lo = a & 0x3f3f_3f3f;
    let m_lo = b & 0x3f3f_3f3f;
    let sc_hi = (c & 0x0f0f_0f0f) | ((a >> 2) & 0x3030_3030);
    let m_hi = ((c >> 4) & 0x0f0f_0f0f) | ((b >> 2) & 0x3030_3030);
    let join = |lo: u32, hi: u32| -> [u8; 8] {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&lo.to_le_bytes());
        v[4..].copy_from_slice(&hi.to_le_bytes());
        v
    };
    (join(sc_lo, sc_hi), join(m_lo, m_hi))
}

pub fn q5_k_q8_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q5_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_avx2(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let low = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    for (w, a) in w.iter().zip(a) {
        let (sc, m) = k4_scales(&w.scales);
        let min_sum: i32 = (0..8).map(|j| m[j] as i32 * bsum32(a, j)).sum();
        mins += a.d * w.dmin.to_f32() * min_sum as f32;
        let hbits = load32(&w.qh);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let q = load32(&w.qs[32 * j..]);
            let h_lo = _mm256_and_si256(shift_right_bytes(hbits, 2 * j as i32), one);
            let h_hi = _mm256_and_si256(shift_right_bytes(hbits, 2 * j as i32 + 1), one);
            let lo = _mm256_or_si256(_mm256_and_si256(q, low), _mm256_slli_epi16::<4>(h_lo));
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), low),
                _mm256_slli_epi16::<4>(h_hi),
            );
            let a_lo = load32_i8(&a.qs[64 * j..]);
            let a_hi = load32_i8(&a.qs[64 * j + 32..]);
            sumi = _mm256_add_epi32(
                sumi,
                scaled_dot(lo, a_lo, _mm256_set1_epi16(sc[2 * j] as i16)),
            );
            sumi = _mm256_add_epi32(
                sumi,
                scaled_dot(hi, a_hi, _mm256_set1_epi16(sc[2 * j + 1] as i16)),
            );
        }
        let d = _mm256_set1_ps(a.d * w.d.to_f32());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - mins
}

/// The 6-bit values of half `n` (0 or 1) of a Q6_K block, stored as q + 32
/// (0..64), as four groups of 32: elements 128n + 32k .. 128n + 32k + 32.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q6_k_values(b: &BlockQ6K, n: usize) -> [__m256i; 4] {
    let (low, three) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
    let ql0 = load32(&b.ql[64 * n..]);
    let ql1 = load32(&b.ql[64 * n + 32..]);
    let qh = load32(&b.qh[32 * n..]);
    let high = |h: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(h, three));
    [
        _mm256_or_si256(_mm256_and_si256(ql0, low), high(qh)),
        _mm256_or_si256(_mm256_and_si256(ql1, low), high(_mm256_srli_epi16::<2>(qh))),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low),
            high(_mm256_srli_epi16::<4>(qh)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low),
            high(_mm256_srli_epi16::<6>(qh)),
        ),
    ]
}

/// Σ (q + 32)·a·scale of a Q6_K super-block in eight i32 lanes: lane t < 4
/// sums the low 16-element halves of each 32-element group (4 bytes each),
/// lane 4 + t the high halves, as llama.cpp's x86 kernel forms them.
#[inline]
#[target_feature(enable = "avx2")]
fn q6_k_scaled_sums(w: &BlockQ6K, a: &BlockQ8K) -> __m256i {
    let mut sumi = _mm256_setzero_si256();
    for n in 0..2 {
        for (k, q) in q6_k_values(w, n).into_iter().enumerate() {
            let s = 8 * n + 2 * k;
            let scales = scale_pair(w.scales[s] as i16, w.scales[s + 1] as i16);
            let av = load32_i8(&a.qs[128 * n + 32 * k..]);
            sumi = _mm256_add_epi32(sumi, scaled_dot(q, av, scales));
        }
    }
    sumi
}

pub fn q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q6_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_avx2(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        // q is stored as q + 32. Lane t < 4 sums the low 16-element halves
        // of each 32-element group (4 bytes each), lane 4 + t the high halves
        // — the eight partial sums llama.cpp's x86 kernel forms — and the
        // 32·a·sc offset comes off each lane as that kernel takes it, from
        // the block sums of scale pairs (2t, 2t+1) and (8+2t, 9+2t), so the
        // float accumulation below sees its exact integers.
        let pair = |s: usize| {
            32 * (a.bsums[s] as i32 * w.scales[s] as i32
                + a.bsums[s + 1] as i32 * w.scales[s + 1] as i32)
        };
        let offsets = _mm256_setr_epi32(
            pair(0),
            pair(2),
            pair(4),
            pair(6),
            pair(8),
            pair(10),
            pair(12),
            pair(14),
        );
        let sumi = _mm256_sub_epi32(q6_k_scaled_sums(w, a), offsets);
        let d = a.d * w.d.to_f32();
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

pub fn q2_k_q8_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q2_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q2_k_avx2(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let three = _mm256_set1_epi8(3);
    for (w, a) in w.iter().zip(a) {
        let min_sum: i32 = (0..16)
            .map(|s| (w.scales[s] >> 4) as i32 * a.bsums[s] as i32)
            .sum();
        mins += a.d * w.dmin.to_f32() * min_sum as f32;
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let q32 = load32(&w.qs[32 * n..]);
            for j in 0..4 {
                let q = _mm256_and_si256(shift_right_bytes(q32, 2 * j as i32), three);
                let s = 8 * n + 2 * j;
                let scales =
                    scale_pair((w.scales[s] & 0x0f) as i16, (w.scales[s + 1] & 0x0f) as i16);
                let av = load32_i8(&a.qs[128 * n + 32 * j..]);
                sumi = _mm256_add_epi32(sumi, scaled_dot(q, av, scales));
            }
        }
        let d = _mm256_set1_ps(a.d * w.d.to_f32());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - mins
}

pub fn q3_k_q8_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q3_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q3_k_avx2(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let three = _mm256_set1_epi8(3);
    let one = _mm256_set1_epi8(1);
    for (w, a) in w.iter().zip(a) {
        let mut scales = [0i16; 16];
        for (i, s) in scales.iter_mut().enumerate() {
            let low = if i < 8 {
                w.scales[i] & 0x0f
            } else {
                w.scales[i - 8] >> 4
            };
            let high = (w.scales[8 + i % 4] >> (2 * (i / 4))) & 3;
            *s = (low | (high << 4)) as i16 - 32;
        }
        // q is used as q + 4 (0..8): Σ (q+4)·a·sc − 4·Σ sc·bsum.
        let offset: i32 = (0..16)
            .map(|s| scales[s] as i32 * a.bsums[s] as i32)
            .sum::<i32>()
            * 4;
        let hm = load32(&w.hmask);
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let q32 = load32(&w.qs[32 * n..]);
            for j in 0..4 {
                let low2 = _mm256_and_si256(shift_right_bytes(q32, 2 * j as i32), three);
                let hbit = _mm256_and_si256(shift_right_bytes(hm, (4 * n + j) as i32), one);
                let q = _mm256_or_si256(low2, _mm256_slli_epi16::<2>(hbit));
                let s = 8 * n + 2 * j;
                let av = load32_i8(&a.qs[128 * n + 32 * j..]);
                sumi = _mm256_add_epi32(
                    sumi,
                    scaled_dot(q, av, scale_pair(scales[s], scales[s + 1])),
                );
            }
        }
        let d = a.d * w.d.to_f32();
        let sumi = _mm256_sub_epi32(sumi, _mm256_setr_epi32(offset, 0, 0, 0, 0, 0, 0, 0));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

// ------------------------------------------------ llama.cpp's batched orders
//
// llama.cpp's CPU backend (x86, AVX2) multiplies Q4_K matrices through
// repacked kernels and, from 8 tokens on, Q6_K matrices through a path of
// their own; their integer sums are the ones below (exact in any order), their
// float steps differ from the `vec_dot` kernels above. Found against its own
// captured tensors (`scripts/q4k_formula.py`, `scripts/q6k_formula.py`).

/// Σ over a Q4_K super-block's sub-block pair (2j, 2j+1) of scale · q · a,
/// exact, for j = 0..4.
#[inline]
#[target_feature(enable = "avx2")]
fn q4_k_pair_sums(w: &BlockQ4K, a: &BlockQ8K, sc: &[u8; 8]) -> [i32; 4] {
    let low = _mm256_set1_epi8(0x0f);
    let mut out = [0i32; 4];
    for (j, o) in out.iter_mut().enumerate() {
        let q = load32(&w.qs[32 * j..]);
        let lo = _mm256_and_si256(q, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
        let a_lo = load32_i8(&a.qs[64 * j..]);
        let a_hi = load32_i8(&a.qs[64 * j + 32..]);
        let s = _mm256_add_epi32(
            scaled_dot(lo, a_lo, _mm256_set1_epi16(sc[2 * j] as i16)),
            scaled_dot(hi, a_hi, _mm256_set1_epi16(sc[2 * j + 1] as i16)),
        );
        *o = hsum_epi32(s);
    }
    out
}

#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// A Q4_K row against Q8_K activations in llama.cpp's repacked order. `pair`
/// (its 4-token GEMM): one float step per pair of 32-element sub-blocks;
/// otherwise (its single-token GEMV) one per super-block. Each step is
/// `acc = fma(Σ scale·q·a, d·d_a, acc)` and `acc_min = fma(Σ min·bsum,
/// dmin·d_a, acc_min)`; the result is `acc − acc_min`.
pub fn q4_k_q8_k_repacked(w: &[BlockQ4K], a: &[BlockQ8K], pair: bool) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q4_k_repacked_avx2(w, a, pair) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_repacked_avx2(w: &[BlockQ4K], a: &[BlockQ8K], pair: bool) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (w, a) in w.iter().zip(a) {
        let (sc, m) = k4_scales(&w.scales);
        let sums = q4_k_pair_sums(w, a, &sc);
        let mins: [i32; 4] = std::array::from_fn(|j| {
            m[2 * j] as i32 * bsum32(a, 2 * j) + m[2 * j + 1] as i32 * bsum32(a, 2 * j + 1)
        });
        let ds = w.d.to_f32() * a.d;
        let dm = w.dmin.to_f32() * a.d;
        if pair {
            for j in 0..4 {
                acc = (sums[j] as f32).mul_add(ds, acc);
                acc_min = (mins[j] as f32).mul_add(dm, acc_min);
            }
        } else {
            let s: i32 = sums.iter().sum();
            let mn: i32 = mins.iter().sum();
            acc = (s as f32).mul_add(ds, acc);
            acc_min = (mn as f32).mul_add(dm, acc_min);
        }
    }
    acc - acc_min
}

/// A Q6_K row against Q8_K activations in the order llama.cpp takes from 8
/// tokens on: per super-block the exact Σ scale·q·a, then
/// `acc = fma(Σ·d, d_a, acc)` (the product with the weight scale rounded).
pub fn q6_k_q8_k_superblocks(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q6_k_superblocks_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_superblocks_avx2(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        // As `q6_k_avx2`: q + 32 against the activations, the 32·a·scale
        // offset off through the block sums; the total is exact.
        let sumi = q6_k_scaled_sums(w, a);
        let offset: i32 = (0..16)
            .map(|s| 32 * a.bsums[s] as i32 * w.scales[s] as i32)
            .sum();
        let total = hsum_epi32(sumi) - offset;
        acc = (total as f32 * w.d.to_f32()).mul_add(a.d, acc);
    }
    acc
}

/// Lane t of the result: the sum of the eight lanes of `v[t]` (exact).
#[inline]
#[target_feature(enable = "avx2")]
fn reduce8(v: &[__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    // Per 128-bit half: the four-lane sums of v0..v3 (and v4..v7).
    let h0123 = _mm256_hadd_epi32(h01, h23);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    let lo = _mm256_permute2x128_si256::<0x20>(h0123, h4567);
    let hi = _mm256_permute2x128_si256::<0x31>(h0123, h4567);
    _mm256_add_epi32(lo, hi)
}

// `q4_k_q8_k_repacked(w, a[t], true)` for eight tokens at once: each weight
// super-block is unpacked once for all eight, the float steps run with one
// token per lane (the same steps, in the same order, per token).

/// `pub fn $name(w, a)`: `$body` compiled twice, for AVX2 and for AVX-512VL
/// (the same code with 32 vector registers), the latter where the CPU has it.
macro_rules! x8_entry {
    ($name:ident, $block:ty, $body:ident) => {
        pub fn $name(w: &[$block], a: [&[BlockQ8K]; 8], pre: &[Tokens8]) -> [f32; 8] {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw")]
            fn wide(w: &[$block], a: [&[BlockQ8K]; 8], pre: &[Tokens8]) -> [f32; 8] {
                $body(w, a, pre)
            }
            #[target_feature(enable = "avx2,fma,f16c")]
            fn narrow(w: &[$block], a: [&[BlockQ8K]; 8], pre: &[Tokens8]) -> [f32; 8] {
                $body(w, a, pre)
            }
            // SAFETY: only selected when AVX2/FMA/F16C are present, the wide
            // build only where the CPU has AVX-512VL.
            unsafe {
                if super::has_avx512_vnni() {
                    wide(w, a, pre)
                } else {
                    narrow(w, a, pre)
                }
            }
        }
    };
}

x8_entry!(q4_k_q8_k_repacked_x8, BlockQ4K, q4_k_repacked_x8_body);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_repacked_x8_body(w: &[BlockQ4K], a: [&[BlockQ8K]; 8], pre: &[Tokens8]) -> [f32; 8] {
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut acc_min = _mm256_setzero_ps();
    for (b, wb) in w.iter().enumerate() {
        let (sc, m) = k4_scales(&wb.scales);
        let pre = &pre[b];
        // SAFETY: eight readable floats.
        let da = unsafe { _mm256_loadu_ps(pre.d.as_ptr()) };
        let ds = _mm256_mul_ps(_mm256_set1_ps(wb.d.to_f32()), da);
        let dm = _mm256_mul_ps(_mm256_set1_ps(wb.dmin.to_f32()), da);
        for j in 0..4 {
            let q = load32(&wb.qs[32 * j..]);
            let lo = _mm256_and_si256(q, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
            let (s_lo, s_hi) = (
                _mm256_set1_epi16(sc[2 * j] as i16),
                _mm256_set1_epi16(sc[2 * j + 1] as i16),
            );
            let v: [__m256i; 8] = std::array::from_fn(|t| {
                let ab = &a[t][b];
                _mm256_add_epi32(
                    scaled_dot(lo, load32_i8(&ab.qs[64 * j..]), s_lo),
                    scaled_dot(hi, load32_i8(&ab.qs[64 * j + 32..]), s_hi),
                )
            });
            let sums = reduce8(&v);
            // Σ min·bsum of the pair, the eight tokens' sub-block sums side by side.
            // SAFETY: eight readable i32 each.
            let (b0, b1) = unsafe {
                (
                    _mm256_loadu_si256(pre.bsum32[2 * j].as_ptr() as *const __m256i),
                    _mm256_loadu_si256(pre.bsum32[2 * j + 1].as_ptr() as *const __m256i),
                )
            };
            let mins = _mm256_add_epi32(
                _mm256_mullo_epi32(b0, _mm256_set1_epi32(m[2 * j] as i32)),
                _mm256_mullo_epi32(b1, _mm256_set1_epi32(m[2 * j + 1] as i32)),
            );
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), ds, acc);
            acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), dm, acc_min);
        }
    }
    let mut out = [0f32; 8];
    // SAFETY: eight writable floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(acc, acc_min)) };
    out
}

// `q6_k_q8_k_superblocks(w, a[t])` for eight tokens at once (one token per
// lane in the float steps, the same steps in the same order).
x8_entry!(q6_k_q8_k_superblocks_x8, BlockQ6K, q6_k_superblocks_x8_body);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_superblocks_x8_body(w: &[BlockQ6K], a: [&[BlockQ8K]; 8], pre: &[Tokens8]) -> [f32; 8] {
    let mut acc = _mm256_setzero_ps();
    for (b, wb) in w.iter().enumerate() {
        let mut v = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            for (k, q) in q6_k_values(wb, n).into_iter().enumerate() {
                let s = 8 * n + 2 * k;
                let scales = scale_pair(wb.scales[s] as i16, wb.scales[s + 1] as i16);
                for (t, vt) in v.iter_mut().enumerate() {
                    let av = load32_i8(&a[t][b].qs[128 * n + 32 * k..]);
                    *vt = _mm256_add_epi32(*vt, scaled_dot(q, av, scales));
                }
            }
        }
        // 32 · Σ scale · bsum per token (the q + 32 offset), from the 16
        // block sums against the 16 scales widened to i16.
        // SAFETY: sixteen readable bytes.
        let sc16 =
            _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(wb.scales.as_ptr() as *const __m128i) });
        // SAFETY: sixteen readable i16 per token.
        let offsets = reduce8(&std::array::from_fn(|t| {
            let bs = unsafe { _mm256_loadu_si256(a[t][b].bsums.as_ptr() as *const __m256i) };
            _mm256_madd_epi16(bs, sc16)
        }));
        let total = _mm256_sub_epi32(reduce8(&v), _mm256_slli_epi32::<5>(offsets));
        // SAFETY: eight readable floats.
        let da = unsafe { _mm256_loadu_ps(pre[b].d.as_ptr()) };
        let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(wb.d.to_f32()));
        acc = _mm256_fmadd_ps(scaled, da, acc);
    }
    let mut out = [0f32; 8];
    // SAFETY: eight writable floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc) };
    out
}
