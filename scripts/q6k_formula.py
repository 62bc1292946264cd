#!/usr/bin/env python3
"""Which float accumulation llama.cpp's Q6_K products use: recompute one layer's
Q6_K `ffn_down` output from llama.cpp's own captured input (scripts/llama_tensors.py)
under candidate formulas and count the rows that differ from its captured output.
Integer sums are exact in any order; only the float steps differ.

    python3 scripts/q6k_formula.py MODEL REF.npz N_TOKENS LAYER

Found with it (llama-cpp-python 0.3.36, AVX-512 host, Qwen2.5-Coder-0.5B layers 0
and 1): batches of 1-7 tokens take its AVX2 `vec_dot` (eight i32 lanes, one FMA per
lane and super-block, then a horizontal sum); from 8 tokens on every token takes one
float step per super-block, acc = fma(float(Σ scale·q·a) · d, d_a, acc)."""
import sys

import numpy as np
from gguf import GGUFReader

from q4k_formula import fma, quantize_q8_k


def q6k_blocks(model, name):
    w = next(t for t in GGUFReader(model).tensors if t.name == name).data
    rows, nb = w.shape[0], w.shape[1] // 210
    b = w.reshape(rows, nb, 210)
    ql = b[:, :, 0:128].astype(np.int64)
    qh = b[:, :, 128:192].astype(np.int64)
    sc = b[:, :, 192:208].copy().view(np.int8).astype(np.int64)
    d = b[:, :, 208:210].copy().view(np.float16).astype(np.float32)[:, :, 0]
    q = np.zeros((rows, nb, 256), np.int64)
    for n in range(2):
        for l in range(32):
            lo0, lo1, h = ql[:, :, 64 * n + l], ql[:, :, 64 * n + l + 32], qh[:, :, 32 * n + l]
            q[:, :, 128 * n + l] = ((lo0 & 0xF) | ((h & 3) << 4)) - 32
            q[:, :, 128 * n + l + 32] = ((lo1 & 0xF) | (((h >> 2) & 3) << 4)) - 32
            q[:, :, 128 * n + l + 64] = ((lo0 >> 4) | (((h >> 4) & 3) << 4)) - 32
            q[:, :, 128 * n + l + 96] = ((lo1 >> 4) | (((h >> 6) & 3) << 4)) - 32
    return d, sc, q


def vec_dot(blocks, x):
    """Its AVX2 kernel: lane i of eight sums elements 4i..4i+4 of each 32 (q + 32,
    scale of their 16), less 32·a·scale of sub-blocks 2i and 2i+1; one FMA per lane
    and super-block with d_a·d; the lanes summed pairwise at the end."""
    d, sc, q = blocks
    rows, nb = d.shape
    aq, ad = quantize_q8_k(x)
    aq = aq.reshape(nb, 256)
    bsums = aq.reshape(nb, 16, 16).sum(axis=2)
    acc = np.zeros((rows, 8), np.float32)
    for b in range(nb):
        lanes = np.zeros((rows, 8), np.int64)
        for g in range(8):
            for i in range(8):
                e = 32 * g + 4 * i
                lanes[:, i] += sc[:, b, 2 * g + (i >= 4)] * ((q[:, b, e:e + 4] + 32) * aq[b, e:e + 4]).sum(axis=1)
        for i in range(8):
            lanes[:, i] -= 32 * (bsums[b, 2 * i] * sc[:, b, 2 * i] + bsums[b, 2 * i + 1] * sc[:, b, 2 * i + 1])
        dd = (np.float32(ad[b]) * d[:, b]).astype(np.float32)
        acc = fma(np.repeat(dd[:, None], 8, axis=1), lanes.astype(np.float32), acc)
    s4 = (acc[:, 0:4] + acc[:, 4:8]).astype(np.float32)
    s2 = (s4[:, 0:2] + s4[:, 2:4]).astype(np.float32)
    return (s2[:, 0] + s2[:, 1]).astype(np.float32)


def per_superblock(blocks, x):
    d, sc, q = blocks
    rows, nb = d.shape
    aq, ad = quantize_q8_k(x)
    aq = aq.reshape(nb, 256)
    acc = np.zeros(rows, np.float32)
    for b in range(nb):
        total = (q[:, b, :] * aq[b][None, :] * np.repeat(sc[:, b, :], 16, axis=1)).sum(axis=1)
        acc = fma((total.astype(np.float32) * d[:, b]).astype(np.float32), np.full(rows, ad[b], np.float32), acc)
    return acc


def main():
    model, ref_path, n, layer = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ref = np.load(ref_path)
    blocks = q6k_blocks(model, f"blk.{layer}.ffn_down.weight")
    x = ref[f"ffn_swiglu-{layer}"].reshape(n, -1)
    y = ref[f"ffn_out-{layer}"].reshape(n, -1)
    for name, f in [("vec_dot (its kernel below 8 tokens)", vec_dot),
                    ("per super-block (from 8 tokens on)", per_superblock)]:
        differ = [int((f(blocks, x[t]) != y[t]).sum()) for t in range(n)]
        print(f"{name:40s} rows differing per token: {differ}")


if __name__ == "__main__":
    main()
