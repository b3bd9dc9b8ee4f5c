#!/usr/bin/env python3
"""Writes a random .npy file without numpy (the MPI CLI tests): mknpy.py OUT.npy f4|b1 D0,D1,... SEED
f4: uniform in [-1, 1); b1: True with probability 0.8."""
import random
import struct
import sys

path, kind, dims, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
shape = tuple(int(d) for d in dims.split(",") if d)
n = 1
for d in shape:
    n *= d
rng = random.Random(seed)
if kind == "f4":
    descr, body = "<f4", struct.pack("<%df" % n, *(rng.uniform(-1, 1) for _ in range(n)))
else:
    descr, body = "|b1", bytes(1 if rng.random() < 0.8 else 0 for _ in range(n))
shp = "(%s)" % (", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else ""))
head = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shp)
pad = 64 - (10 + len(head) + 1) % 64
head = head + " " * (pad % 64) + "\n"
with open(path, "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head.encode() + body)
