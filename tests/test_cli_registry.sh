#!/usr/bin/env bash
# The registry from the command line: bash tests/test_cli_registry.sh PATH/TO/xattn FIXTURES_DIR
# xattn init (reproducible, strict options, --help from the registry), inspect (every module of
# a file with each option's source), run and bench through the registry (--prefix selects one
# of several modules), all with the one-line error convention.
set -u
export LC_ALL=C
HARNESS_NAME=xattn_cli_registry
. "$(dirname "$0")/cli_harness.sh"
M=$FIX
X1=$M/conv2d_cli_x1.npy
X2=$M/conv2d_cli_x2.npy

INIT=(init conv2d-cross --in-channels 6 --out-channels 3 --in-channels2 4 --qk-channels 5)
ok "init" "$X" "${INIT[@]}" --out "$TMP/a.safetensors" --seed 7 && has "init says" "$D.out" "wrote"
ok "init same seed" "$X" "${INIT[@]}" --out "$TMP/b.safetensors" --seed 7
ok "init other seed" "$X" "${INIT[@]}" --out "$TMP/c.safetensors" --seed 8
if cmp -s "$TMP/a.safetensors" "$TMP/b.safetensors"; then pass; else fail "same seed, same file"; fi
if cmp -s "$TMP/a.safetensors" "$TMP/c.safetensors"; then fail "other seed, other weights"; else pass; fi
ok "init help" "$X" init --help && has "init help kinds" "$D.out" "conv2d-cross" &&
    has "init help args" "$D.out" "--qk-channels"
bad "init unknown kind" 2 "(kinds: bidir, bidir-transformer, mha, attention, mutual" "$X" init nope --out "$TMP/x.safetensors"
bad "init bad value" 2 "option 'in_channels' is \"six\", not a positive integer" "$X" init conv2d-cross --in-channels six --out-channels 3 --out "$TMP/x.safetensors"
bad "init unknown option" 2 "unknown option 'heads'" "$X" init conv2d-cross --in-channels 6 --out-channels 3 --heads 2 --out "$TMP/x.safetensors"
bad "init missing required" 2 "out_channels is not given" "$X" init conv2d-cross --in-channels 6 --out "$TMP/x.safetensors"
bad "init repeated option" 2 "--in-channels given twice" "$X" init conv2d-cross --in-channels 6 --in-channels 6 --out-channels 3 --out "$TMP/x.safetensors"
bad "init without --out" 2 "--out" "$X" init conv2d-cross --in-channels 6 --out-channels 3

ok "inspect created" "$X" inspect "$TMP/a.safetensors" &&
    has "inspect kind" "$D.out" "conv2d-cross at prefix ''" &&
    has "inspect source" "$D.out" "qk_channels      = 5          (shape: shape of 'conv_query.weight')" &&
    has "inspect metadata kind" "$D.out" "xattn_kind = conv2d-cross"
ok "run created" "$X" run "$TMP/a.safetensors" --x "$X1" --context "$X2" && has "run out" "$D.out" "out.npy (2, 3, 5, 7)" &&
    cp "$D/out.npy" "$TMP/single_out.npy"
ok "run by input names" "$X" run "$TMP/a.safetensors" --x1 "$X1" --x2 "$X2" --out-dir o
bad "run input twice" 2 "name the same input" "$X" run "$TMP/a.safetensors" --x "$X1" --x1 "$X1" --x2 "$X2"
bad "run unknown option" 2 "--bogus is not an input or option of conv2d-cross" "$X" run "$TMP/a.safetensors" --x "$X1" --x2 "$X2" --bogus 1
bad "run option against shapes" 1 "option in_channels = 9 disagrees with the shape of" "$X" run "$TMP/a.safetensors" --x "$X1" --x2 "$X2" --in-channels 9

# two modules in one file: a. and b. (the same tensors under two prefixes)
python3 - "$TMP/a.safetensors" "$TMP/two.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
head = json.loads(raw[8:8 + n]); data = raw[8 + n:]
out, blob = {}, b''
for p in ('a.', 'b.'):
    for k, v in head.items():
        if k == '__metadata__':
            continue
        s, e = v['data_offsets']
        out[p + k] = dict(v, data_offsets=[len(blob), len(blob) + e - s])
        blob += data[s:e]
h = json.dumps(out).encode()
open(sys.argv[2], 'wb').write(struct.pack('<Q', len(h)) + h + blob)
PY
ok "inspect two modules" "$X" inspect "$TMP/two.safetensors" &&
    has "inspect a." "$D.out" "conv2d-cross at prefix 'a.'" && has "inspect b." "$D.out" "conv2d-cross at prefix 'b.'"
bad "run two modules" 1 "holds 2 modules" "$X" run "$TMP/two.safetensors" --x "$X1" --x2 "$X2"
ok "run --prefix" "$X" run "$TMP/two.safetensors" --prefix b. --x "$X1" --x2 "$X2" &&
    same "prefix b. = the module alone" "$D/out.npy" "$TMP/single_out.npy"
bad "run --prefix absent" 1 "no  module found at prefix 'c.'" "$X" run "$TMP/two.safetensors" --prefix c. --x "$X1" --x2 "$X2"

ok "bench generated" "$X" bench "$TMP/a.safetensors" --len 4 --context-len 3 --reps 2 --json &&
    has "bench kind" "$D.out" '"kind": "conv2d-cross"' && has "bench sizes" "$D.out" '"H2": 3'
ok "bench with x's batch" "$X" bench "$TMP/a.safetensors" --x "$X1" --context-len 3 --reps 1 --out-dir res &&
    has "bench batch" "$D.out" "B=2" && has "bench out-dir" <(ls "$D/res") out.npy
ok "bench prefix" "$X" bench "$TMP/two.safetensors" --prefix a. --len 3 --reps 1
ok "bench weightless kind" "$X" bench --module mutual --len 8 --reps 1 && has "bench mutual" "$D.out" "L=8"
bad "bench bad input" 1 "conv2d_cli_x2.npy: has shape (2, 4, 3, 4); --x needs" "$X" bench "$TMP/a.safetensors" --x "$X2"

# OMP_NUM_THREADS is validated like --threads (a huge value crashed inside the OpenMP runtime)
bad "OMP_NUM_THREADS huge" 2 "OMP_NUM_THREADS: '100000000' is not a thread count" env OMP_NUM_THREADS=100000000 "$X" run "$TMP/a.safetensors" --x "$X1" --x2 "$X2"
bad "OMP_NUM_THREADS above the cap" 2 "OMP_NUM_THREADS: '5000'" env OMP_NUM_THREADS=5000 "$X" bench --module mutual --len 4 --reps 1
ok "OMP_NUM_THREADS nested list" env OMP_NUM_THREADS=2,1 "$X" bench --module mutual --len 4 --reps 1

# --help where an option wants its value asks for help (it is not taken as a file name)
if ok "help in a value's place" "$X" demo --out --help; then
    has "demo usage" "$D.out" "usage: xattn demo"
    if [ -e "$D/--help" ]; then fail "demo --out --help wrote a file named --help"; else pass; fi
fi

echo "test_cli_registry: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
