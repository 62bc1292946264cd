//! The 1-3 bit i-quants (IQ2_XXS … IQ1_M) against Q8_K, with AVX2: one
//! kernel for all seven, over the integer form every 32 weights decode to
//! (`quant::Group32`). Per 32 weights: the activations negated where the
//! weights' sign bits say (`sign`), multiplied with the grid magnitudes by
//! `maddubs`, the pairs scaled by the integer scale of each 16 by `madd`;
//! then one FMA per super-block, exactly the lanes of ggml's own kernels,
//! so the result is the scalar reference's (`quant::vec_dot_lowbit`) bit
//! for bit (`tests/quant_reference.rs`).

use std::arch::x86_64::*;

use super::kquants::hsum_epi32;
use super::{bytes_from_bits_32, load_i8x32};
use crate::quant::{BlockQ8K, LowBit, QK_K, TiledBlock, finish, finish_shift_sum};

pub fn lowbit_q8_k<W: LowBit>(w: &[W], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA are present.
    unsafe { lowbit_q8_k_avx2(w, a) }
}

/// 16 i16 lanes: the first half's scale in the low 128 bits, the second's in
/// the high (one broadcast and one shuffle).
#[inline]
#[target_feature(enable = "avx2")]
fn half_scales(s: [i16; 2]) -> __m256i {
    let v = _mm256_set1_epi32((s[0] as u16 as u32 | (s[1] as u16 as u32) << 16) as i32);
    let pick = _mm256_set_epi64x(
        0x0302_0302_0302_0302,
        0x0302_0302_0302_0302,
        0x0100_0100_0100_0100,
        0x0100_0100_0100_0100,
    );
    _mm256_shuffle_epi8(v, pick)
}

/// 32 bytes: each of the four shift signs of 32 weights repeated 8 times.
#[inline]
#[target_feature(enable = "avx2")]
fn shift_signs(delta: &[i8]) -> __m256i {
    let rep = |v: i8| ((v as u8 as u64) * 0x0101_0101_0101_0101) as i64;
    _mm256_set_epi64x(rep(delta[3]), rep(delta[2]), rep(delta[1]), rep(delta[0]))
}

/// One super-block's i32 lanes: the grid products (`sumi`) and IQ1's shift
/// products (`sumi2`), each scaled by the integer scale of its 16 weights.
/// Each 32 weights come from `LowBit::group` straight into registers.
#[inline]
#[target_feature(enable = "avx2")]
fn superblock_lanes<W: LowBit>(w: &W, a: &BlockQ8K) -> (__m256i, __m256i) {
    let ones = _mm256_set1_epi8(1);
    let mut sumi = _mm256_setzero_si256();
    let mut sumi2 = _mm256_setzero_si256();
    for b in 0..QK_K / 32 {
        let g = w.group(b);
        let q8: &[i8; 32] = a.qs[32 * b..32 * b + 32].try_into().expect("32");
        let q8 = load_i8x32(q8);
        let wq = _mm256_set_epi64x(g.q[3] as i64, g.q[2] as i64, g.q[1] as i64, g.q[0] as i64);
        let sc = half_scales(g.scale);
        let dot = if W::SHIFTED {
            // Grid values -1, 0, 1: |w| times a with w's sign.
            _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(q8, wq))
        } else {
            let neg = _mm256_or_si256(bytes_from_bits_32(g.neg), ones);
            _mm256_maddubs_epi16(wq, _mm256_sign_epi8(q8, neg))
        };
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(dot, sc));
        if W::SHIFTED {
            let s = shift_signs(&g.delta);
            let dd = _mm256_maddubs_epi16(ones, _mm256_sign_epi8(q8, s));
            sumi2 = _mm256_add_epi32(sumi2, _mm256_madd_epi16(dd, sc));
        }
    }
    (sumi, sumi2)
}

#[target_feature(enable = "avx2,fma")]
fn lowbit_q8_k_avx2<W: LowBit>(w: &[W], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc1 = 0f32;
    for (w, a) in w.iter().zip(a) {
        let d = w.d() * a.d;
        let (sumi, sumi2) = superblock_lanes(w, a);
        let dv = _mm256_set1_ps(d);
        acc = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(sumi), acc);
        if W::SHIFTED {
            acc2 = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(sumi2), acc2);
            acc1 = finish_shift_sum(acc1, d, hsum_epi32(sumi2));
        }
    }
    let (mut l, mut l2) = ([0f32; 8], [0f32; 8]);
    // SAFETY: 8 writable floats each.
    unsafe {
        _mm256_storeu_ps(l.as_mut_ptr(), acc);
        _mm256_storeu_ps(l2.as_mut_ptr(), acc2);
    }
    finish::<W>(&l, &l2, acc1)
}

/// Four tokens against one row in the per-token order (each token's result
/// is `lowbit_q8_k`'s bit for bit): every 32 weights decoded once for the
/// four, as a batched decode step or an expert's few tokens need.
pub fn lowbit_q8_k_x4<W: LowBit>(w: &[W], a: [&[BlockQ8K]; 4]) -> [f32; 4] {
    // SAFETY: only selected when AVX2/FMA are present.
    unsafe { lowbit_q8_k_x4_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma")]
fn lowbit_q8_k_x4_avx2<W: LowBit>(w: &[W], a: [&[BlockQ8K]; 4]) -> [f32; 4] {
    let ones = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut acc2 = [_mm256_setzero_ps(); 4];
    let mut acc1 = [0f32; 4];
    for (i, w) in w.iter().enumerate() {
        let mut sumi = [_mm256_setzero_si256(); 4];
        let mut sumi2 = [_mm256_setzero_si256(); 4];
        for b in 0..QK_K / 32 {
            let g = w.group(b);
            let wq = _mm256_set_epi64x(g.q[3] as i64, g.q[2] as i64, g.q[1] as i64, g.q[0] as i64);
            let sc = half_scales(g.scale);
            // The weights' magnitudes and signs, for every token alike.
            let (mag, sign) = if W::SHIFTED {
                (_mm256_sign_epi8(wq, wq), wq)
            } else {
                (wq, _mm256_or_si256(bytes_from_bits_32(g.neg), ones))
            };
            let shift = if W::SHIFTED {
                shift_signs(&g.delta)
            } else {
                ones
            };
            for k in 0..4 {
                let q8: &[i8; 32] = a[k][i].qs[32 * b..32 * b + 32].try_into().expect("32");
                let q8 = load_i8x32(q8);
                let dot = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(q8, sign));
                sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(dot, sc));
                if W::SHIFTED {
                    let dd = _mm256_maddubs_epi16(ones, _mm256_sign_epi8(q8, shift));
                    sumi2[k] = _mm256_add_epi32(sumi2[k], _mm256_madd_epi16(dd, sc));
                }
            }
        }
        for k in 0..4 {
            let d = w.d() * a[k][i].d;
            let dv = _mm256_set1_ps(d);
            acc[k] = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(sumi[k]), acc[k]);
            if W::SHIFTED {
                acc2[k] = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(sumi2[k]), acc2[k]);
                acc1[k] = finish_shift_sum(acc1[k], d, hsum_epi32(sumi2[k]));
            }
        }
    }
    std::array::from_fn(|k| {
        let (mut l, mut l2) = ([0f32; 8], [0f32; 8]);
        // SAFETY: 8 writable floats each.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), acc[k]);
            _mm256_storeu_ps(l2.as_mut_ptr(), acc2[k]);
        }
        finish::<W>(&l, &l2, acc1[k])
    })
}

/// A row of decoded super-blocks against four tokens, in llama.cpp's tiled
/// order (`acc = fma(S · d, d_a, acc)` per super-block), with AVX2: per 32
/// weights `|w|` and the per-16 scales are set up once, then for each token
/// the signed products by `maddubs` (sign trick: |w| · a with w's sign;
/// |w| ≤ 62, so the pair sums stay below 2^15), scaled per 16 by `madd`,
/// the lanes summed exactly. Four tokens per pass: one at a time ran a
/// 1B-shape IQ2_XXS prompt at 70 t/s on 2 cores, four at 128.
pub fn tiled_row4(blocks: &[TiledBlock], a: [&[BlockQ8K]; 4]) -> [f32; 4] {
    // SAFETY: only selected when AVX2/FMA are present.
    unsafe { tiled_row4_avx2(blocks, a) }
}

#[target_feature(enable = "avx2,fma")]
fn tiled_row4_avx2(blocks: &[TiledBlock], a: [&[BlockQ8K]; 4]) -> [f32; 4] {
    let mut acc = [0f32; 4];
    for (i, t) in blocks.iter().enumerate() {
        let mut sumi = [_mm256_setzero_si256(); 4];
        for b in 0..QK_K / 32 {
            let wq: &[i8; 32] = t.w[32 * b..32 * b + 32].try_into().expect("32");
            let w = load_i8x32(wq);
            let aw = _mm256_sign_epi8(w, w);
            let sc = _mm256_set_m128i(
                _mm_set1_epi16(t.scale[2 * b + 1]),
                _mm_set1_epi16(t.scale[2 * b]),
            );
            for k in 0..4 {
                let q8: &[i8; 32] = a[k][i].qs[32 * b..32 * b + 32].try_into().expect("32");
                let dot = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(load_i8x32(q8), w));
                sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(dot, sc));
            }
        }
        for k in 0..4 {
            acc[k] = (hsum_epi32(sumi[k]) as f32 * t.d).mul_add(a[k][i].d, acc[k]);
        }
    }
    acc
}
