//! Causal grouped-query attention over an f16 KV cache.
//!
//! The arithmetic follows llama.cpp's CPU path (without flash attention) so
//! that results agree bit for bit: keys and values are stored as f16, the
//! query is rounded to f16 before `q·k`, products accumulate in 16 lanes as
//! its f16 matrix products do, the softmax uses its exp and summation order,
//! and the softmax weights are rounded to f16 before they weight the values
//! (`reference_math`).

use half::f16;
use rayon::prelude::*;

use super::{CpuAct, CpuKv, reference_math, simd};
use crate::arch::AttnSpec;
use crate::backend::{BackendError, Batch};

pub fn attention(
    cfg: &AttnSpec,
    q: &CpuAct,
    k: &CpuAct,
    v: &CpuAct,
    kv: &mut CpuKv,
    batch: &Batch,
    out: &mut CpuAct,
) -> Result<(), BackendError> {
    let (hd, n_heads, width) = (cfg.head_dim, cfg.n_heads, kv.width);
    let group = n_heads / cfg.n_kv_heads;
    // Store the new keys and values.
    for (i, slot) in batch
        .cache_slots(kv.n_seq, kv.n_ctx)?
        .into_iter()
        .enumerate()
    {
        let off = slot * width;
        for (dst, &src) in kv.k[off..off + width].iter_mut().zip(k.row(i)) {
            *dst = f16::from_f32(src);
        }
        for (dst, &src) in kv.v[off..off + width].iter_mut().zip(v.row(i)) {
            *dst = f16::from_f32(src);
        }
    }
    let scale = cfg.scale;
    // Queries of each sequence in this batch: llama.cpp multiplies one query
    // (a decode step) differently from several (a prompt), and deciding per
    // sequence keeps a sequence's results the same alone or batched with others.
    let mut queries = vec![0usize; kv.n_seq];
    for &seq in batch.seqs {
        queries[seq as usize] += 1;
    }
    let kv = &*kv;
    // One task per (token, KV head): the query heads sharing that KV head are
    // processed together, so each cached key and value is widened once for all.
    out.data
        .par_chunks_mut(group * hd)
        .enumerate()
        .for_each(|(task, out)| {
            let (t, g) = (task / cfg.n_kv_heads, task % cfg.n_kv_heads);
            let (seq, pos) = (batch.seqs[t] as usize, batch.positions[t] as usize);
            // A sliding window: the keys from a multiple of 64 at or before
            // its first, the ones before it masked. Every lane of the sums
            // below (16 or 64 keys wide) then holds the keys it holds when
            // llama.cpp masks the whole cache, and the skipped keys would have
            // added exact zeros: the same bits, for a window's work.
            let first = cfg.first_key(pos) / 64 * 64;
            let masked = cfg.first_key(pos) - first;
            let base = (seq * kv.n_ctx + first) * width + g * hd;
            let n_keys = pos + 1 - first;
            // Queries rounded to f16, as llama.cpp multiplies them with f16 keys.
            let q_heads: Vec<f32> = q.row(t)[g * group * hd..(g + 1) * group * hd]
                .iter()
                .map(|&x| f16::from_f32(x).to_f32())
                .collect();
            // Widen this task's keys and values once for all its heads.
            let mut keys = vec![0f32; n_keys.next_multiple_of(8) * hd];
            let mut values = vec![0f32; n_keys * hd];
            for j in 0..n_keys {
                let off = base + j * width;
                simd::f16_to_f32(&kv.k[off..off + hd], &mut keys[j * hd..(j + 1) * hd]);
                simd::f16_to_f32(&kv.v[off..off + hd], &mut values[j * hd..(j + 1) * hd]);
            }
            let mut scores = vec![0f32; n_keys.next_multiple_of(8)];
            // Heads whose size is a multiple of 16 follow llama.cpp's
            // arithmetic exactly (`reference_math::attend`); others take
            // ferry's own vector kernels with the same softmax.
            let exact = hd.is_multiple_of(16);
            let single = queries[seq] == 1;
            let mut acc = vec![0f32; if exact { 64 * hd } else { 0 }];
            for h in 0..group {
                let qh = &q_heads[h * hd..(h + 1) * hd];
                let out_h = &mut out[h * hd..(h + 1) * hd];
                if exact {
                    reference_math::attend(
                        qh,
                        &keys[..n_keys * hd],
                        &values,
                        scale,
                        single,
                        masked,
                        &mut scores[..n_keys],
                        &mut acc,
                        out_h,
                    );
                    continue;
                }
                for j in (0..n_keys).step_by(8) {
                    let s = simd::dot8_rows(&keys[j * hd..(j + 8) * hd], qh, hd);
                    scores[j..j + 8].copy_from_slice(&s);
                }
                let row = &mut scores[..n_keys];
                for s in row.iter_mut() {
                    *s *= scale;
                }
                row[..masked].fill(f32::NEG_INFINITY);
                reference_math::softmax(row);
                reference_math::round_to_f16(row);
                simd::weighted_rows(&values, row, hd, out_h);
            }
        });
    Ok(())
}
