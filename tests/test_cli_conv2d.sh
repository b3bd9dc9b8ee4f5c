#!/usr/bin/env bash
# Tests of `xattn run` on a conv2d-cross state dict (conv_query/conv_key/conv_value):
# bash tests/test_cli_conv2d.sh PATH/TO/xattn FIXTURES_DIR
# Outputs against tests/reference/gen_conv2d.py (conv2d_cli_*), and bad input: exit code, one
# stderr line naming the file or option, nothing written.
set -u
export LC_ALL=C
HARNESS_NAME=xattn_cli_conv2d
. "$(dirname "$0")/cli_harness.sh"
M=$FIX
W=$M/conv2d_cli.safetensors
X1=$M/conv2d_cli_x1.npy
X2=$M/conv2d_cli_x2.npy

ok "detected" "$X" run "$W" --x "$X1" --context "$X2" --threads 1 &&
    same "detected out" "$D/out.npy" "$M/conv2d_cli_out.npy"
ok "module flag threads 2" "$X" run "$W" --module conv2d-cross --x "$X1" --context "$X2" --threads 2 --out-dir o &&
    same "module out" "$D/o/out.npy" "$M/conv2d_cli_out.npy"
ok "scale" "$X" run "$W" --x "$X1" --context "$X2" --scale 0.5 &&
    same "scale out" "$D/out.npy" "$M/conv2d_cli_out_scale.npy"
ok "inspect" "$X" inspect "$W" && has "inspect module" "$D.out" "conv2d-cross"
ok "help" "$X" run --module conv2d-cross --help && has "help text" "$D.out" "conv_query"

bad "no model" 2 "MODEL.safetensors" "$X" run --module conv2d-cross --x "$X1" --context "$X2"
bad "no context" 2 "--context" "$X" run "$W" --x "$X1"
bad "bad scale" 2 "--scale" "$X" run "$W" --x "$X1" --context "$X2" --scale abc
bad "x1 channels" 1 "conv_query.weight" "$X" run "$W" --x "$X2" --context "$X2"
bad "x2 channels" 1 "conv_key.weight" "$X" run "$W" --x "$X1" --context "$X1"
bad "rank" 1 "mutual_cli_a.npy" "$X" run "$W" --x "$M/mutual_cli_a.npy" --context "$X2"
bad "batch differs" 1 "batch" "$X" run "$W" --x "$X1" --context "$M/mutual_cli_bands_a.npy"
bad "missing tensor" 1 "conv_value.weight" "$X" run "$M/conv2d_cli_missing_value.safetensors" --module conv2d-cross --x "$X1" --context "$X2"
bad "missing model" 1 "nope.safetensors" "$X" run "$M/nope.safetensors" --module conv2d-cross --x "$X1" --context "$X2"

echo "test_cli_conv2d: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
