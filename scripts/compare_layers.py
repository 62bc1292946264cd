#!/usr/bin/env python3
"""Set ferry's intermediate tensors (examples/dump_layers.rs) against llama.cpp's
(scripts/llama_tensors.py), in graph order: for each tensor, whether every
token's row is bit-identical, else the first differing row and the largest
difference. The first line that is not identical names the operation to fix.

    python3 scripts/compare_layers.py REF.npz OURS.bin N_TOKENS"""
import sys

import numpy as np


def main():
    ref = np.load(sys.argv[1])
    n = int(sys.argv[3])
    with open(sys.argv[2], "rb") as f:
        while line := f.readline():
            name, count = line.decode().split()
            ours = np.frombuffer(f.read(4 * int(count)), dtype="<f4").reshape(n, -1)
            if name not in ref.files:
                print(f"{name:16s} (not captured)")
                continue
            theirs = ref[name]
            if theirs.size != ours.size:  # llama.cpp keeps only the rows it needs at the end
                print(f"{name:16s} (llama.cpp kept {theirs.size // ours.shape[1]} rows)")
                continue
            theirs = theirs.reshape(n, -1)
            rows = [np.array_equal(a, b) for a, b in zip(ours, theirs)]
            if all(rows):
                print(f"{name:16s} identical")
            else:
                print(f"{name:16s} row {rows.index(False)} first differs, max |Δ| {np.abs(ours - theirs).max():.2e}")


if __name__ == "__main__":
    main()
