#!/usr/bin/env python3
"""Plot prefill t/s against the VRAM budget for each mode, from the markdown
tables `ferry bench --vram-budget ... --mode ...` prints. Writes an SVG with no
plotting library (log-scale y axis: the CPU-placed mode is two orders of
magnitude below the others).

    python3 scripts/plot_budget.py OUT.svg --test pp512 --resident 1085.1 \
        bench/2026-11-28-h100/sweep.txt bench/2026-11-28-h100/budget25.txt ...
"""

import argparse
import math
import re


def parse_size_gib(s):
    m = re.match(r"([\d.]+)\s*(GiB|MiB)", s)
    v = float(m.group(1))
    return v if m.group(2) == "GiB" else v / 1024


def read_rows(paths, test):
    """(mode, budget GiB, t/s) for every row of `test` in the files."""
    rows = []
    for p in paths:
        for line in open(p):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 6 or cells[4] != test or cells[0] in ("mode", "---"):
                continue
            rows.append((cells[0], parse_size_gib(cells[1]), float(cells[5])))
    # One point per (mode, budget): the mean of repeated measurements.
    merged = {}
    for mode, b, v in rows:
        merged.setdefault((mode, round(b, 2)), []).append(v)
    return sorted((m, b, sum(v) / len(v)) for (m, b), v in merged.items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--test", default="pp512")
    ap.add_argument("--resident", type=float, help="full-resident t/s (a reference line)")
    ap.add_argument("--model-gib", type=float, default=18.48)
    ap.add_argument("--title", default="32B-shape Q4_K_M, prefill vs VRAM budget (H100)")
    args = ap.parse_args()
    rows = read_rows(args.tables, args.test)
    modes = sorted({m for m, _, _ in rows}, key=lambda m: ["stream", "sync", "static"].index(m)
                   if m in ("stream", "sync", "static") else 9)
    colours = {"stream": "#1f77b4", "sync": "#d62728", "static": "#2ca02c"}
    labels = {
        "stream": "stream (ferry: layer-major, overlapped copies)",
        "sync": "sync (llama.cpp's mechanism: upload per layer and micro-batch)",
        "static": "static (non-resident layers on the CPU)",
    }

    W, H = 860, 520
    left, right, top, bottom = 80, 30, 50, 150
    pw, ph = W - left - right, H - top - bottom
    xmax = args.model_gib
    values = [v for _, _, v in rows] + ([args.resident] if args.resident else [])
    ymin = 10 ** math.floor(math.log10(min(values)))
    ymax = 10 ** math.ceil(math.log10(max(values) * 1.05))

    def x(b):
        return left + pw * b / xmax

    def y(v):
        return top + ph * (1 - (math.log10(v) - math.log10(ymin)) / (math.log10(ymax) - math.log10(ymin)))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="13">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="28" text-anchor="middle" font-size="16">{args.title}</text>']
    # Grid and axes.
    decade = ymin
    while decade <= ymax:
        for k in range(1, 10):
            v = decade * k
            if v > ymax:
                break
            yy = y(v)
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" '
                       f'stroke="{"#bbb" if k == 1 else "#eee"}"/>')
            if k in (1, 2, 5):
                out.append(f'<text x="{left - 8}" y="{yy + 4:.1f}" text-anchor="end">{v:g}</text>')
        decade *= 10
    for gib in range(0, int(xmax) + 1, 2):
        xx = x(gib)
        out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{top + ph}" stroke="#eee"/>')
        out.append(f'<text x="{xx:.1f}" y="{top + ph + 18}" text-anchor="middle">{gib}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 40}" text-anchor="middle">'
               f'VRAM budget (GiB; the model is {args.model_gib} GiB)</text>')
    out.append(f'<text transform="translate(22 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
               f'{args.test} tokens/s (log scale)</text>')
    if args.resident:
        yy = y(args.resident)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#555" '
                   f'stroke-dasharray="6 4"/>')
        out.append(f'<text x="{left + 6}" y="{yy - 18:.1f}" text-anchor="start" fill="#555">'
                   f'all layers resident: {args.resident:g} t/s</text>')
    for m in modes:
        pts = [(b, v) for mm, b, v in rows if mm == m]
        c = colours.get(m, "#000")
        if len(pts) > 1:
            path = " ".join(f"{x(b):.1f},{y(v):.1f}" for b, v in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for b, v in pts:
            out.append(f'<circle cx="{x(b):.1f}" cy="{y(v):.1f}" r="4" fill="{c}"/>')
            out.append(f'<text x="{x(b) + 6:.1f}" y="{y(v) - 6:.1f}" fill="{c}" font-size="11">{v:.0f}</text>')
    for i, m in enumerate(modes):
        ly = top + ph + 65 + 20 * i
        out.append(f'<line x1="{left}" x2="{left + 24}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{colours.get(m, "#000")}" stroke-width="3"/>')
        out.append(f'<text x="{left + 32}" y="{ly}">{labels.get(m, m)}</text>')
    out.append("</svg>")
    with open(args.out, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {args.out}: {len(rows)} points, modes {', '.join(modes)}")


if __name__ == "__main__":
    main()
