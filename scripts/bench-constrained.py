#!/usr/bin/env python3
"""What constrained decoding costs a decode step (issue #25's cost row).

Starts `ferry serve` (CPU unless --device says otherwise) with --parallel N and
sends N concurrent chat requests of the same length, first unconstrained, then
each held to a JSON Schema, and prints the time per decode step of each run:
the server's decode steps (its /metrics) over the wall time of the batch, so
masking, sampling and scheduling are all counted.

    python3 scripts/bench-constrained.py [--ferry target/release/ferry]
        [--model models/qwen2.5-coder-0.5b-instruct.gguf] [--parallel 8]
        [--tokens 64] [--rounds 3]
"""

import argparse
import json
import re
import subprocess
import threading
import time
import urllib.request

SCHEMA = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "count": {"type": "integer"}, "note": {"type": "string"}},
            "required": ["name", "count", "note"]}},
    },
    "required": ["items"],
}
# At least ten items: the constrained answers cannot end before max_tokens,
# and the unconstrained prompt asks for something long, so that both runs
# decode full batches for the same number of steps.
SCHEMA["properties"]["items"]["minItems"] = 10


def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(ferry_\w+) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def run(port, n, tokens, constrained):
    ask = "List the fruit in a basket as JSON, with notes." if constrained else "Write a long essay about the sea."
    body = {"messages": [{"role": "user", "content": ask}], "max_tokens": tokens, "temperature": 1.0, "seed": 1}
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "basket", "schema": SCHEMA}}
    before = metrics(port)
    results = [None] * n
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, post(port, body))) for i in range(n)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    after = metrics(port)
    steps = after["ferry_decode_steps_total"] - before["ferry_decode_steps_total"]
    toks = sum(r["usage"]["completion_tokens"] for r in results)
    return wall, steps, toks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ferry", default="target/release/ferry")
    ap.add_argument("--model", default="models/qwen2.5-coder-0.5b-instruct.gguf")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    proc = subprocess.Popen([a.ferry, "serve", "-m", a.model, "--port", "0", "-c", "2048", "--device", a.device,
                             "--parallel", str(a.parallel)], stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    try:
        run(port, a.parallel, 8, True)  # warm up (and compile the tokenizer's trie)
        print(f"| requests | constrained | decode steps | tokens | ms per step |")
        print(f"| ---: | --- | ---: | ---: | ---: |")
        rows = {}
        for r in range(a.rounds):
            for constrained in (False, True):
                wall, steps, toks = run(port, a.parallel, a.tokens, constrained)
                rows.setdefault(constrained, []).append(wall * 1000 / max(steps, 1))
                print(f"| {a.parallel} | {'JSON Schema' if constrained else 'no'} | {steps:.0f} | {toks} | "
                      f"{wall * 1000 / max(steps, 1):.2f} |")
        best = {k: min(v) for k, v in rows.items()}
        print(f"best of {a.rounds}: {best[False]:.2f} ms/step unconstrained, {best[True]:.2f} constrained "
              f"({(best[True] / best[False] - 1) * 100:+.1f} %)")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
