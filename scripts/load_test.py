#!/usr/bin/env python3
"""Bounded load run against `ferry serve`: many concurrent clients for a fixed
time, mixing chat and completions, streamed and not. Prints requests, failures,
tokens/s, latency percentiles and the server's resident memory over time (to
show it does not grow).

    PYTHONPATH=target/pydeps python3 scripts/load_test.py \
        [--ferry target/release/ferry] [--clients 64] [--seconds 60] [--parallel 8]
"""

import argparse
import os
import random
import re
import statistics
import subprocess
import threading
import time
import urllib.request

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of Japan?",
    "Explain recursion in one sentence.",
    "List three fruits.",
    "Translate 'good morning' to French.",
    "What is 12 times 12?",
    "Give me a name for a cat.",
    "Describe the colour blue to someone who cannot see.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ferry", default=os.path.join(ROOT, "target", "release", "ferry"))
    ap.add_argument("--model", default=os.path.join(os.environ.get("FERRY_MODELS", os.path.join(ROOT, "models")),
                                                    "smollm2-135m-instruct-q4_1.gguf"))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=1024)
    args = ap.parse_args()

    cmd = [args.ferry, "serve", "-m", args.model, "--port", "0", "-c", str(args.ctx),
           "--parallel", str(args.parallel), "--queue", str(args.clients), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        raise SystemExit("server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    base = f"http://127.0.0.1:{port}"

    def metrics():
        text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
    lock = threading.Lock()
    latencies, failures, tokens = [], [], [0]
    stop_at = time.time() + args.seconds

    def worker(i):
        rng = random.Random(i)
        while time.time() < stop_at:
            prompt = rng.choice(PROMPTS)
            n = rng.randint(8, 64)
            stream = rng.random() < 0.5
            t0 = time.time()
            try:
                if rng.random() < 0.5:
                    if stream:
                        got = sum(1 for c in client.chat.completions.create(
                            model="m", messages=[{"role": "user", "content": prompt}], max_tokens=n,
                            stream=True) if c.choices and c.choices[0].delta.content)
                    else:
                        r = client.chat.completions.create(
                            model="m", messages=[{"role": "user", "content": prompt}], max_tokens=n)
                        got = r.usage.completion_tokens
                else:
                    if stream:
                        got = sum(1 for c in client.completions.create(
                            model="m", prompt=prompt, max_tokens=n, stream=True) if c.choices[0].text)
                    else:
                        got = client.completions.create(model="m", prompt=prompt, max_tokens=n).usage.completion_tokens
                with lock:
                    latencies.append(time.time() - t0)
                    tokens[0] += got
            except Exception as e:  # noqa: BLE001 - every failure counts
                with lock:
                    failures.append(repr(e))

    # Warm-up request, then the baseline memory.
    client.completions.create(model="m", prompt="Hello", max_tokens=4)
    rss = [(0.0, metrics()["ferry_resident_memory_bytes"])]
    start = time.time()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(5)
        rss.append((time.time() - start, metrics()["ferry_resident_memory_bytes"]))
    for t in threads:
        t.join()
    elapsed = time.time() - start
    m = metrics()
    rss.append((elapsed, m["ferry_resident_memory_bytes"]))
    proc.terminate()
    proc.wait(timeout=30)

    lat = sorted(latencies)
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    mib = lambda b: b / 2**20  # noqa: E731
    print(f"clients {args.clients}, parallel {args.parallel}, {args.seconds:.0f} s (ran {elapsed:.1f} s)")
    print(f"requests ok {len(latencies)}, failed {len(failures)}")
    for f in failures[:5]:
        print("  failure:", f)
    print(f"generated text pieces {tokens[0]}, server generated tokens {m['ferry_generated_tokens_total']:.0f}, "
          f"{m['ferry_generated_tokens_total'] / elapsed:.1f} tokens/s overall")
    print(f"server decode {m['ferry_decode_tokens_per_second']:.1f} tokens/s of decode time, "
          f"mean batch {m['ferry_decode_batch_mean']:.2f}, prefill {m['ferry_prefill_tokens_per_second']:.1f} tokens/s")
    print(f"latency p50 {pct(0.5):.2f} s, p95 {pct(0.95):.2f} s, max {lat[-1] if lat else float('nan'):.2f} s, "
          f"mean {statistics.mean(lat) if lat else float('nan'):.2f} s")
    print("resident memory (MiB) at t=s: " + ", ".join(f"{t:.0f}:{mib(b):.1f}" for t, b in rss))
    print(f"resident memory growth from the first sample after warm-up to the end: "
          f"{mib(rss[-1][1] - rss[1][1] if len(rss) > 1 else 0):+.1f} MiB")


if __name__ == "__main__":
    main()
