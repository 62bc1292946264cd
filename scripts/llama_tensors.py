#!/usr/bin/env python3
"""Capture llama.cpp's intermediate tensors for one prompt (CPU, 2 threads, no
flash attention: the configuration of the logit fixtures) through its graph
evaluation callback, for scripts/compare_layers.py.

    python3 scripts/llama_tensors.py MODEL 1,2,3,4 OUT.npz [LAYERS]

Needs llama-cpp-python. The tensor layout follows ggml 0.9's struct ggml_tensor
(type at 0, ne at 16, data at 248, name at 256)."""
import ctypes
import sys

import llama_cpp
import numpy as np

NAMES = ["attn_norm", "kqv_out", "ffn_inp", "ffn_norm", "ffn_gate", "ffn_up", "ffn_swiglu", "ffn_out", "l_out"]


def main():
    path, toks, out = sys.argv[1], [int(t) for t in sys.argv[2].split(",")], sys.argv[3]
    layers = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    want = {f"{n}-{l}" for n in NAMES for l in range(layers)}
    store = {}

    @llama_cpp.ggml_backend_sched_eval_callback
    def callback(t, ask, _user):
        name = ctypes.string_at(t + 256).split(b"\0")[0].decode(errors="replace")
        if ask:
            return name in want
        if name in want and name not in store and ctypes.c_int.from_address(t).value == 0:
            ne = [ctypes.c_int64.from_address(t + 16 + 8 * i).value for i in range(4)]
            data = ctypes.c_void_p.from_address(t + 248).value
            count = ne[0] * ne[1] * ne[2] * ne[3]
            store[name] = np.ctypeslib.as_array((ctypes.c_float * count).from_address(data)).copy()
        return True

    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(path.encode(), llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_threads, params.n_threads_batch, params.n_batch = 1024, 2, 2, 512
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.cb_eval = callback
    ctx = llama_cpp.llama_init_from_model(model, params)
    tokens = (ctypes.c_int32 * len(toks))(*toks)  # kept alive until decode returns
    if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, len(toks))) != 0:
        sys.exit("llama_decode failed")
    np.savez(out, **store)
    print(f"captured {len(store)} tensors into {out}")


if __name__ == "__main__":
    main()
