#!/usr/bin/env python3
"""Which float accumulation llama.cpp's Q4_K products use: recompute one layer's
Q4_K `ffn_down` output from llama.cpp's own captured input (scripts/llama_tensors.py)
under several candidate formulas and count the rows that differ from its captured
output. Integer sums are exact in any order; only the float steps differ.

    python3 scripts/q4k_formula.py MODEL REF.npz N_TOKENS LAYER

Found with it (llama-cpp-python 0.3.36, AVX-512 host, Qwen2.5-Coder-0.5B layer 2):
a single row (its repacked q4_K_8x8 GEMV) accumulates per super-block, a 4-row group
(its GEMM) per pair of 32-element sub-blocks; both with FMA, the minimums in their own
accumulator, result acc - acc_min."""
import sys

import numpy as np
from gguf import GGUFReader


def q4k_blocks(model, name):
    w = next(t for t in GGUFReader(model).tensors if t.name == name).data
    rows, nb = w.shape[0], w.shape[1] // 144
    b = w.reshape(rows, nb, 144)
    d = b[:, :, 0:2].copy().view(np.float16).astype(np.float32)[:, :, 0]
    dmin = b[:, :, 2:4].copy().view(np.float16).astype(np.float32)[:, :, 0]
    s12 = b[:, :, 4:16].astype(np.int64)
    sc = np.zeros((rows, nb, 8), np.int64)
    mn = np.zeros((rows, nb, 8), np.int64)
    for j in range(8):
        if j < 4:
            sc[:, :, j], mn[:, :, j] = s12[:, :, j] & 63, s12[:, :, j + 4] & 63
        else:
            sc[:, :, j] = (s12[:, :, j + 4] & 0xF) | ((s12[:, :, j - 4] >> 6) << 4)
            mn[:, :, j] = (s12[:, :, j + 4] >> 4) | ((s12[:, :, j] >> 6) << 4)
    qs = b[:, :, 16:144].astype(np.int64)
    q = np.zeros((rows, nb, 256), np.int64)
    for c in range(4):
        q[:, :, 64 * c:64 * c + 32] = qs[:, :, 32 * c:32 * c + 32] & 0xF
        q[:, :, 64 * c + 32:64 * c + 64] = qs[:, :, 32 * c:32 * c + 32] >> 4
    return d, dmin, sc, mn, q


def quantize_q8_k(x):
    """ggml's Q8_K: per 256, iscale = -127 / (the value of largest magnitude)."""
    x = x.astype(np.float32).reshape(-1, 256)
    q = np.zeros(x.shape, np.int64)
    dd = np.zeros(x.shape[0], np.float32)
    for i, row in enumerate(x):
        m = row[np.argmax(np.abs(row))]  # first of the largest, as the reference
        if m == 0:
            continue
        iscale = np.float32(-127.0) / np.float32(m)
        q[i] = np.minimum(np.rint(iscale * row), 127)
        dd[i] = np.float32(1.0) / iscale
    return q, dd


def fma(a, b, c):
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def product(blocks, x, group, use_fma=True):
    """One token: groups of `group` 32-element sub-blocks per float step."""
    d, dmin, sc, mn, q = blocks
    rows, nb = d.shape
    aq, ad = quantize_q8_k(x)
    dots = np.einsum("rbjk,bjk->rbj", q.reshape(rows, nb, 8, 32), aq.reshape(nb, 8, 32))
    bsum = aq.reshape(nb, 8, 32).sum(axis=2)
    acc = np.zeros(rows, np.float32)
    acc_min = np.zeros(rows, np.float32)
    for b in range(nb):
        ds = (d[:, b] * ad[b]).astype(np.float32)
        dm = (dmin[:, b] * ad[b]).astype(np.float32)
        for g in range(0, 8, group):
            s = (sc[:, b, g:g + group] * dots[:, b, g:g + group]).sum(axis=1).astype(np.float32)
            m = (mn[:, b, g:g + group] * bsum[b, g:g + group]).sum(axis=1).astype(np.float32)
            if use_fma:
                acc, acc_min = fma(s, ds, acc), fma(m, dm, acc_min)
            else:
                acc = (acc + (s * ds).astype(np.float32)).astype(np.float32)
                acc_min = (acc_min + (m * dm).astype(np.float32)).astype(np.float32)
    return acc - acc_min


def main():
    model, ref_path, n, layer = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ref = np.load(ref_path)
    blocks = q4k_blocks(model, f"blk.{layer}.ffn_down.weight")
    x = ref[f"ffn_swiglu-{layer}"].reshape(n, -1)
    y = ref[f"ffn_out-{layer}"].reshape(n, -1)
    for name, group, use_fma in [
        ("per super-block, fma (its GEMV)", 8, True),
        ("per pair of sub-blocks, fma (its 4-row GEMM)", 2, True),
        ("per super-block, no fma", 8, False),
    ]:
        differ = [int((product(blocks, x[t], group, use_fma) != y[t]).sum()) for t in range(n)]
        print(f"{name:48s} rows differing per token: {differ}")


if __name__ == "__main__":
    main()
