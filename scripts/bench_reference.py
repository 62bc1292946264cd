#!/usr/bin/env python3
"""Measure llama.cpp (through llama-cpp-python, CPU) the way `ferry bench` measures
ferry, so the two can be run back to back and compared:

  ppN  prefill N tokens into an empty cache (n_batch = n_ubatch = 512)
  tgN  generate N tokens one at a time (llama_decode of a single token)

Each test: one warm-up, then -r repetitions; prints mean ± sample stdev t/s in
the same markdown columns as `ferry bench`.

Usage: python3 scripts/bench_reference.py -m MODEL[,MODEL] [-p 512] [-n 128] [-r 5] [-t 2]
Needs: pip install llama-cpp-python numpy
"""
import argparse
import ctypes
import os
import statistics
import time

import llama_cpp
import numpy as np


def tokens(n, n_vocab, seed):
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(n_vocab // 20, n_vocab // 2, n)]


def decode(ctx, toks, pos0):
    arr = (llama_cpp.llama_token * len(toks))(*toks)
    batch = llama_cpp.llama_batch_get_one(arr, len(toks))
    rc = llama_cpp.llama_decode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc}")


def run(llm, test, n):
    mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
    llama_cpp.llama_memory_clear(mem, True)
    n_vocab = llm.n_vocab()
    if test == "pp":
        toks = tokens(n, n_vocab, 7)
        t0 = time.perf_counter()
        for i in range(0, n, 512):
            decode(llm._ctx.ctx, toks[i:i + 512], i)
        return time.perf_counter() - t0
    toks = tokens(n, n_vocab, 11)
    t0 = time.perf_counter()
    for i, t in enumerate(toks):
        decode(llm._ctx.ctx, [t], i)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("-t", type=int, default=os.cpu_count())
    args = ap.parse_args()
    print("| model | size | backend | threads | test | t/s |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for path in args.model.split(","):
        llm = llama_cpp.Llama(model_path=path, n_ctx=max(args.p, args.n) + 16, n_batch=512, n_ubatch=512,
                              n_threads=args.t, n_threads_batch=args.t, verbose=False)
        size = os.path.getsize(path) / 2**20
        for test, n in (("pp", args.p), ("tg", args.n)):
            if n <= 0:
                continue
            run(llm, test, n)  # warm-up
            tps = [n / run(llm, test, n) for _ in range(args.r)]
            sd = statistics.stdev(tps) if len(tps) > 1 else 0.0
            print(f"| {os.path.basename(path)} | {size:.2f} MiB | llama.cpp CPU | {args.t} | {test}{n} | "
                  f"{statistics.mean(tps):.2f} ± {sd:.2f} |", flush=True)
        del llm


if __name__ == "__main__":
    main()
