#!/usr/bin/env python3
"""Generate the reference fixtures that ferry's tests compare against.

Needs: pip install numpy gguf llama-cpp-python (llama.cpp built for the CPU),
and the real models (scripts/fetch_models.py). Run from the repository root:

    python3 scripts/gen_fixtures.py

Writes tests/fixtures/:
  quant/<TYPE>.blocks, quant/<TYPE>.f32   random blocks and their dequantization
                                          by gguf-py's numpy reference
  quant/input.f32, quant/<TYPE>.ref       values and ggml's reference quantization
                                          (quantize_row_*_ref from libggml-base)
  quant/lowbit.q8k, quant/<IQ1-3>.dot     ggml's Q8_K activations and its CPU vec_dot
                                          of every weight row with every activation row
  real_tensors.json                       sha256 of every real tensor dequantized
                                          to f32 by gguf-py
  tokenizer/corpus.json                   the test strings
  tokenizer/<model>.json                  llama.cpp's token ids for each string
  chat/<model>.json                       chat prompts rendered by llama-cpp-python's
                                          Jinja2 chat formatter from the GGUF template
  logits/<model>.json, logits/<model>-<i>.f32
                                          prompts (token ids), llama.cpp's last-position
                                          logits (CPU, 2 threads, f16 KV cache, no flash
                                          attention) and 32-token greedy continuations

Pass section names (quant quant_grids quant_lowbit real_tensors tokens chat logits) to regenerate only those.
"""
import ctypes
import hashlib
import json
import os
import sys

import numpy as np
import gguf
from gguf import quants as gq
import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corpus import corpus  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
MODELS = {
    "smollm2": os.path.join(ROOT, "models", "smollm2-135m-instruct-q4_1.gguf"),
    "qwen05": os.path.join(ROOT, "models", "qwen2.5-coder-0.5b-instruct.gguf"),
    "gemma3": os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf"),
}
# Files without a chat template get the architecture's official one, as
# ferry does (src/tokenizer/templates/).
BUILTIN_TEMPLATES = {"gemma3": os.path.join(ROOT, "src", "tokenizer", "templates", "gemma3.jinja")}
# FERRY_FIXTURE_MODELS=gemma3 (comma-separated) regenerates only those models.
if os.environ.get("FERRY_FIXTURE_MODELS"):
    MODELS = {k: v for k, v in MODELS.items() if k in os.environ["FERRY_FIXTURE_MODELS"].split(",")}


def chat_template(model, r):
    if "tokenizer.chat_template" in r.fields:
        return r.fields["tokenizer.chat_template"].contents()
    with open(BUILTIN_TEMPLATES[model]) as f:
        return f.read()
T = gguf.GGMLQuantizationType

DEQUANT_TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# (type, ggml reference quantizer, block elements, block bytes)
REF_QUANTIZERS = [
    ("Q4_0", "quantize_row_q4_0_ref", 32, 18),
    ("Q4_1", "quantize_row_q4_1_ref", 32, 20),
    ("Q5_0", "quantize_row_q5_0_ref", 32, 22),
    ("Q5_1", "quantize_row_q5_1_ref", 32, 24),
    ("Q8_0", "quantize_row_q8_0_ref", 32, 34),
    ("Q8_1", "quantize_row_q8_1_ref", 32, 36),
    ("Q8_K", "quantize_row_q8_K_ref", 256, 292),
]


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(data, (bytes, bytearray)) else "w"
    with open(path, mode) as f:
        f.write(data)


def random_blocks(name, n_blocks, rng):
    """Random raw blocks whose f16/bf16 scale fields are finite."""
    qtype = T[name]
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    if name == "F16":
        raw = rng.standard_normal(n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    elif name == "BF16":
        f = rng.standard_normal(n_blocks).astype(np.float32).view(np.uint32) >> 16
        raw = f.astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
    else:
        # f16 scale fields, by their byte offsets in the block
        offsets = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
                   "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[name]
        for off in offsets:
            scale = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
            raw[:, off:off + 2] = scale
    return raw


def gen_quant(rng):
    out = os.path.join(FIX, "quant")
    for name in DEQUANT_TYPES:
        n_blocks = 64 if name in ("F16", "BF16") else (64 if "K" not in name else 16)
        if name in ("F16", "BF16"):
            n_blocks = 512
        raw = random_blocks(name, n_blocks, rng)
        deq = gq.dequantize(raw.reshape(-1), T[name]).astype(np.float32)
        write(os.path.join(out, f"{name}.blocks"), raw.tobytes())
        write(os.path.join(out, f"{name}.f32"), deq.tobytes())

    # Values for the reference quantizers: random blocks plus edge cases
    # (all zero, constant, ties at .5 steps, one outlier, negatives only).
    x = (rng.standard_normal(256 * 32) * rng.uniform(0.01, 4.0, size=256 * 32)).astype(np.float32)
    x[0:256] = 0.0
    x[256:512] = 0.75
    x[512:768] = np.arange(256, dtype=np.float32) * 0.5 - 64
    x[768:1024] = rng.standard_normal(256).astype(np.float32) * 1e-3
    x[800] = 50.0
    x[1024:1280] = -np.abs(x[1024:1280]) - 1.0
    write(os.path.join(out, "input.f32"), x.tobytes())
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    for name, fn, be, bb in REF_QUANTIZERS:
        f = getattr(lib, fn)
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        f.restype = None
        dst = np.zeros(len(x) // be * bb, dtype=np.uint8)
        f(x.ctypes.data, dst.ctypes.data, len(x))
        write(os.path.join(out, f"{name}.ref"), dst.tobytes())


# The 4-bit grid formats (IQ4_NL, IQ4_XS, MXFP4), apart from gen_quant so that
# adding them left the other fixtures byte for byte as they were: random blocks
# and gguf-py's dequantization, and ggml's reference quantizers on input.f32.
IQ_TYPES = [
    ("IQ4_NL", "quantize_row_iq4_nl_ref", 32, 18, [0]),
    ("IQ4_XS", "quantize_row_iq4_xs_ref", 256, 136, [0]),
    ("MXFP4", "quantize_row_mxfp4_ref", 32, 17, []),
]


def gen_quant_grids():
    rng = np.random.default_rng(20261207)
    out = os.path.join(FIX, "quant")
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    x = np.fromfile(os.path.join(out, "input.f32"), dtype=np.float32)
    for name, fn, be, bb, f16_offsets in IQ_TYPES:
        n_blocks = 64 if be == 32 else 16
        raw = rng.integers(0, 256, size=(n_blocks, bb), dtype=np.uint8)
        for off in f16_offsets:
            scale = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
            raw[:, off:off + 2] = scale
        if name == "MXFP4":
            # Exponents around 2^0, as real weights have them (all 256 are valid).
            raw[:, 0] = rng.integers(100, 140, size=n_blocks, dtype=np.uint8)
        deq = gq.dequantize(raw.reshape(-1), T[name]).astype(np.float32)
        write(os.path.join(out, f"{name}.blocks"), raw.tobytes())
        write(os.path.join(out, f"{name}.f32"), deq.tobytes())
        f = getattr(lib, fn)
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        f.restype = None
        dst = np.zeros(len(x) // be * bb, dtype=np.uint8)
        f(x.ctypes.data, dst.ctypes.data, len(x))
        write(os.path.join(out, f"{name}.ref"), dst.tobytes())


# The 1-3 bit i-quants: random blocks, gguf-py's dequantization, and ggml's
# own CPU dot product (`ggml_get_type_traits_cpu(type)->vec_dot`, the build's
# x86 kernels) against activations quantized by ggml's `from_float` (Q8_K).
LOWBIT_TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]
LOWBIT_ROWS, LOWBIT_SUPERBLOCKS = 16, 2


class CpuTraits(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


def gen_quant_lowbit():
    rng = np.random.default_rng(20261208)
    out = os.path.join(FIX, "quant")
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-cpu.so"))
    lib.ggml_cpu_init()
    lib.ggml_get_type_traits_cpu.restype = ctypes.POINTER(CpuTraits)
    lib.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    from_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    vec_dot_t = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
                                 ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                                 ctypes.c_int)
    n = LOWBIT_SUPERBLOCKS * 256
    # One set of activations (rows of different magnitudes) for every type.
    q8k = lib.ggml_get_type_traits_cpu(T.Q8_K).contents
    act_bytes = gguf.GGML_QUANT_SIZES[T.Q8_K][1]
    x = (rng.standard_normal((LOWBIT_ROWS, n)) * rng.uniform(0.1, 3.0, size=(LOWBIT_ROWS, 1))).astype(np.float32)
    act = np.zeros(LOWBIT_ROWS * LOWBIT_SUPERBLOCKS * act_bytes, dtype=np.uint8)
    from_float_t(q8k.from_float)(x.ctypes.data, act.ctypes.data, x.size)
    write(os.path.join(out, "lowbit.q8k"), act.tobytes())
    for name in LOWBIT_TYPES:
        qtype = T[name]
        _, bb = gguf.GGML_QUANT_SIZES[qtype]
        nb = LOWBIT_ROWS * LOWBIT_SUPERBLOCKS
        raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
        d = (np.abs(rng.standard_normal(nb)) * 0.01 + 1e-4).astype(np.float16).view(np.uint16)
        if name == "IQ1_M":
            # The f16 scale lives in the top nibbles of the four u16 scale words.
            sc = raw[:, 48:56].copy().view(np.uint16)
            for k in range(4):
                sc[:, k] = (sc[:, k] & 0x0FFF) | (((d >> (4 * k)) & 0xF) << 12)
            raw[:, 48:56] = sc.view(np.uint8)
        else:
            raw[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
        deq = gq.dequantize(raw.reshape(-1), qtype).astype(np.float32)
        write(os.path.join(out, f"{name}.blocks"), raw.tobytes())
        write(os.path.join(out, f"{name}.f32"), deq.tobytes())
        traits = lib.ggml_get_type_traits_cpu(qtype).contents
        assert traits.vec_dot_type == T.Q8_K
        vec_dot = vec_dot_t(traits.vec_dot)
        dots = np.zeros((LOWBIT_ROWS, LOWBIT_ROWS), dtype=np.float32)
        row_w = LOWBIT_SUPERBLOCKS * bb
        row_a = LOWBIT_SUPERBLOCKS * act_bytes
        s = ctypes.c_float()
        for i in range(LOWBIT_ROWS):
            for j in range(LOWBIT_ROWS):
                vec_dot(n, ctypes.byref(s), 0, raw.ctypes.data + i * row_w, 0,
                        act.ctypes.data + j * row_a, 0, 1)
                dots[i, j] = s.value
        write(os.path.join(out, f"{name}.dot"), dots.tobytes())


def gen_real_tensors():
    out = os.path.join(FIX, "real_tensors.json")
    # Models not regenerated keep their entries.
    result = json.load(open(out)) if os.path.exists(out) else {}
    for model, path in MODELS.items():
        r = gguf.GGUFReader(path)
        hashes = {}
        for t in r.tensors:
            deq = gq.dequantize(t.data, t.tensor_type).astype(np.float32)
            hashes[t.name] = {
                "type": t.tensor_type.name,
                "n": int(deq.size),
                "sha256": hashlib.sha256(np.ascontiguousarray(deq).tobytes()).hexdigest(),
            }
        result[model] = hashes
        print(f"{model}: {len(hashes)} tensors hashed", file=sys.stderr)
    write(out, json.dumps(result, indent=1, sort_keys=True))


def gen_tokens(strings):
    write(os.path.join(FIX, "tokenizer", "corpus.json"), json.dumps(strings, indent=1, ensure_ascii=False))
    for model, path in MODELS.items():
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        cases = []
        for s in strings:
            b = s.encode("utf-8")
            cases.append({
                "special": llm.tokenize(b, add_bos=True, special=True),
                "no_special": llm.tokenize(b, add_bos=True, special=False),
            })
        write(os.path.join(FIX, "tokenizer", f"{model}.json"), json.dumps(cases))
        print(f"{model}: {len(cases)} strings tokenized", file=sys.stderr)


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You write Rust."},
        {"role": "user", "content": "Write a function that adds two numbers."},
        {"role": "assistant", "content": "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}"},
        {"role": "user", "content": "Now make it generic."},
    ],
    [{"role": "user", "content": "Ünïcödé 你好 😀\n\nwith  spaces  "}],
    [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "second"},
    ],
]


def gen_chat():
    for model, path in MODELS.items():
        r = gguf.GGUFReader(path)
        template = chat_template(model, r)
        tokens = r.fields["tokenizer.ggml.tokens"].contents()
        bos = tokens[r.fields["tokenizer.ggml.bos_token_id"].contents()]
        eos = tokens[r.fields["tokenizer.ggml.eos_token_id"].contents()]
        cases = []
        for messages in CONVERSATIONS:
            for agp in (True, False):
                fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=agp)
                cases.append({
                    "messages": messages,
                    "add_generation_prompt": agp,
                    "rendered": fmt(messages=messages).prompt,
                })
        write(os.path.join(FIX, "chat", f"{model}.json"), json.dumps(cases, indent=1, ensure_ascii=False))


LOGIT_PROMPTS = [
    ("raw", "The capital of France is"),
    ("raw", "def quicksort(arr):\n    \"\"\"Sort a list.\"\"\"\n"),
    ("raw", "Once upon a time, in a small village by the sea, there lived"),
    ("raw", "1, 2, 3, 5, 8, 13, 21,"),
    ("raw", "Translate to French: The weather is nice today.\nFrench:"),
    ("chat", "What is the tallest mountain in the world?"),
    ("chat", "Write a haiku about the ocean."),
    ("chat", "Explain in one sentence what a GPU is."),
    ("chat", "List three prime numbers greater than 100."),
]
N_GREEDY = 32


def last_logits(llm):
    """The logits of the last evaluated token, read straight from the context."""
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()


def gen_logits():
    out = os.path.join(FIX, "logits")
    os.makedirs(out, exist_ok=True)
    for model, path in MODELS.items():
        r = gguf.GGUFReader(path)
        template = chat_template(model, r)
        tokens = r.fields["tokenizer.ggml.tokens"].contents()
        bos = tokens[r.fields["tokenizer.ggml.bos_token_id"].contents()]
        eos = tokens[r.fields["tokenizer.ggml.eos_token_id"].contents()]
        llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=2, verbose=False)
        cases = []
        for i, (kind, text) in enumerate(LOGIT_PROMPTS):
            if kind == "chat":
                fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
                text = fmt(messages=[{"role": "user", "content": text}]).prompt
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            llm.reset()
            llm.eval(ids)
            logits = last_logits(llm)
            write(os.path.join(out, f"{model}-{i}.f32"), logits.tobytes())
            greedy = []
            for _ in range(N_GREEDY):
                nxt = int(np.argmax(last_logits(llm)))
                greedy.append(nxt)
                if nxt == llm.token_eos():
                    break
                llm.eval([nxt])
            cases.append({"kind": kind, "text": text, "tokens": ids, "greedy": greedy})
            print(f"{model} prompt {i}: {len(ids)} tokens, greedy {llm.detokenize(greedy)!r}", file=sys.stderr)
        write(os.path.join(out, f"{model}.json"), json.dumps(cases, indent=1, ensure_ascii=False))


SHORT_PROMPTS = ["The capital of France", "def add(a, b):", "Hello, my name", "1, 2, 3,"]


def gen_short():
    """Prompts of at most 4 tokens, with the sha256 of llama.cpp's logits at every
    position: up to 4 tokens, ferry reproduces llama.cpp bit for bit."""
    short = os.path.join(FIX, "logits", "short.json")
    # Models not regenerated keep their entries.
    out = json.load(open(short)) if os.path.exists(short) else {}
    for model, path in MODELS.items():
        llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=2, verbose=False, logits_all=True)
        cases = []
        for text in SHORT_PROMPTS:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)[:4]
            llm.reset()
            llm.eval(ids)
            hashes = []
            for i in range(len(ids)):
                ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i)
                logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32)
                hashes.append(hashlib.sha256(logits.tobytes()).hexdigest())
            cases.append({"tokens": ids, "sha256": hashes})
        out[model] = cases
    write(short, json.dumps(out, indent=1))


def main():
    sections = sys.argv[1:] or ["quant", "real_tensors", "tokens", "chat", "logits", "short"]
    rng = np.random.default_rng(20261128)
    if "quant" in sections:
        gen_quant(rng)
    if "quant" in sections or "quant_grids" in sections:
        gen_quant_grids()
    if "quant" in sections or "quant_lowbit" in sections:
        gen_quant_lowbit()
    if "real_tensors" in sections:
        gen_real_tensors()
    if "tokens" in sections:
        gen_tokens(corpus())
    if "chat" in sections:
        gen_chat()
    if "logits" in sections:
        gen_logits()
    if "short" in sections:
        gen_short()


if __name__ == "__main__":
    main()
