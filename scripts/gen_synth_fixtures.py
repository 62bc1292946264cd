#!/usr/bin/env python3
"""llama.cpp's results on synthetic files in real shapes, for architectures
with no small real model here (tests/synth_reference.rs checks ferry's).

Each case is a `ferry synth` command (random weights from a seed, a real
tokenizer copied with --vocab-from); the file is deterministic, so the test
writes it again and checks its sha256 before comparing. For each prompt:
the sha256 of llama.cpp's logits at every position, the last position's
logits, and a greedy continuation.

Needs: pip install numpy llama-cpp-python; the real models
(scripts/fetch_models.py); a release build (cargo build --release).

    python3 scripts/gen_synth_fixtures.py [CASE...]
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import llama_cpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fetch_models import sha256  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "synth")
FERRY = os.path.join(ROOT, "target", "release", "ferry")
M = os.path.join(ROOT, "models")

# name: (preset, layers, quant, vocab model, seed)
CASES = {
    "qwen3": ("qwen3-0.6b", 3, "q8_0", "qwen2.5-coder-0.5b-instruct.gguf", 7),
    "gemma3-1b": ("gemma3-1b", 6, "q4_k_m", "gemma-3-270m-q4_k_m.gguf", 7),
    "llama31": ("llama3.1-8b", 2, "q8_0", "smollm2-135m-instruct-q4_1.gguf", 7),
    # The 4-bit grid formats (issue #23), each on its own file.
    "iq4_nl": ("llama-1b", 2, "iq4_nl", "smollm2-135m-instruct-q4_1.gguf", 7),
    "iq4_xs": ("qwen3-0.6b", 2, "iq4_xs", "qwen2.5-coder-0.5b-instruct.gguf", 7),
    "mxfp4": ("qwen3-0.6b", 2, "mxfp4", "qwen2.5-coder-0.5b-instruct.gguf", 7),
    # Mixtures of experts (issue #22): 16 experts choose 4 (qwen3moe; the
    # router's softmax in whole 16-lane groups), 8 choose 2 (Mixtral-style
    # llama: the softmax's scalar tail).
    "qwen3moe": ("qwen3moe-mini", 4, "q8_0", "qwen2.5-coder-0.5b-instruct.gguf", 7),
    "mixtral": ("mixtral-mini", 3, "q8_0", "smollm2-135m-instruct-q4_1.gguf", 7),
    # Q4_K_M: Q4_K experts, Q6_K down experts in some layers.
    "qwen3moe-q4km": ("qwen3moe-mini", 4, "q4_k_m", "qwen2.5-coder-0.5b-instruct.gguf", 7),
    # The 1-3 bit i-quants (issue #23): every one of them in one dense file
    # and in a mixture of experts, and a UD-style mix (IQ2_XXS/IQ3_XXS
    # experts, Q5_K/Q6_K attention).
    "iq-every": ("qwen3-0.6b", 2, "iq-every", "qwen2.5-coder-0.5b-instruct.gguf", 7),
    "iq-every-moe": ("qwen3moe-mini", 4, "iq-every", "qwen2.5-coder-0.5b-instruct.gguf", 7),
    "ud-iq2": ("qwen3moe-mini", 4, "ud-iq2_xxs", "qwen2.5-coder-0.5b-instruct.gguf", 7),
}
PROMPTS = [
    "The capital of France is",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Once upon a time, in a land far away, a small dragon",
]
N_GREEDY = 16
# Cases with a sliding window also take a prompt longer than it (gemma3-1b:
# 512), so the window's cut is compared too.
LONG_PROMPT = " ".join(f"item {i}: the {['red', 'green', 'blue'][i % 3]} box" for i in range(100))
WINDOWED = {"gemma3-1b"}
# Cases compared bit for bit only (their hashes suffice): no last-position
# logits file, which a tolerance would need.
HASHES_ONLY = {"iq-every", "iq-every-moe"}


def synth_args(case):
    preset, layers, quant, vocab, seed = CASES[case]
    return ["synth", "--preset", preset, "--layers", str(layers), "--quant", quant,
            "--vocab-from", os.path.join(M, vocab), "--seed", str(seed)]


def logits_at(llm, i):
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()


def main():
    os.makedirs(FIX, exist_ok=True)
    for case in sys.argv[1:] or list(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{case}.gguf")
            subprocess.run([FERRY, *synth_args(case), path], check=True)
            llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=1024, n_ubatch=1024, n_threads=2,
                                  logits_all=True, verbose=False)
            prompts = []
            for i, text in enumerate(PROMPTS + ([LONG_PROMPT] if case in WINDOWED else [])):
                ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
                llm.reset()
                llm.eval(ids)
                hashes = [hashlib.sha256(logits_at(llm, j).tobytes()).hexdigest() for j in range(len(ids))]
                last = logits_at(llm, len(ids) - 1)
                if case not in HASHES_ONLY:
                    with open(os.path.join(FIX, f"{case}-{i}.f32"), "wb") as f:
                        f.write(last.tobytes())
                greedy = []
                for _ in range(N_GREEDY):
                    nxt = int(np.argmax(logits_at(llm, -1)))
                    greedy.append(nxt)
                    llm.eval([nxt])
                prompts.append({"tokens": ids, "sha256": hashes, "greedy": greedy})
                print(f"{case} prompt {i}: {len(ids)} tokens", file=sys.stderr)
            out = {"synth": synth_args(case), "file_sha256": sha256(path), "prompts": prompts}
            with open(os.path.join(FIX, f"{case}.json"), "w") as f:
                json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
