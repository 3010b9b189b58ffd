#!/usr/bin/env python3
"""Deterministic tree of N small files for memory-per-file measurements: 100 files per directory,
directories nested two deep (pkgNNN/modNN/), names like a source tree (`module_000123.js`),
each file 16..80 bytes. Only the file count varies between trees, so an RSS difference over a
file-count difference is the cost of one more file."""
import os
import random
import sys

if len(sys.argv) != 3:
    sys.exit("usage: gen-many-files.py OUTDIR N")
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"pkg{i // 10000:03d}", f"mod{(i // 100) % 100:02d}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"module_{i:06d}.js"), "w") as f:
        f.write(f"export const v{i} = {rng.randrange(10**12)};\n" + "x" * rng.randrange(0, 48))
print(f"files={n}")
