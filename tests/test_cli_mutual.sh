#!/usr/bin/env bash
# Tests of `xattn run --module mutual`: bash tests/test_cli_mutual.sh PATH/TO/xattn FIXTURES_DIR
# Outputs against tests/reference/gen_mutual.py (mutual_cli_*.npy), and bad input: exit code,
# one stderr line naming the file or option, nothing written.
set -u
export LC_ALL=C
HARNESS_NAME=xattn_cli_mutual
. "$(dirname "$0")/cli_harness.sh"
M=$FIX

ok "plain" "$X" run --module mutual --x "$M/mutual_cli_a.npy" --context "$M/mutual_cli_b.npy" --threads 1 &&
    same "plain out" "$D/out.npy" "$M/mutual_cli_out.npy"
ok "threads 2 out-dir" "$X" run --module=mutual --x "$M/mutual_cli_a.npy" --context "$M/mutual_cli_b.npy" --threads 2 --out-dir res &&
    same "threads 2 out" "$D/res/out.npy" "$M/mutual_cli_out.npy"
ok "bands axis 1" "$X" run --module mutual --x "$M/mutual_cli_bands_a.npy" --context "$M/mutual_cli_bands_b.npy" --band-axis 1 &&
    same "bands 1 out" "$D/out.npy" "$M/mutual_cli_bands_out.npy"
ok "bands axis -1" "$X" run --module mutual --x "$M/mutual_cli_bands_a.npy" --context "$M/mutual_cli_bands_b.npy" --band-axis -1 &&
    same "bands -1 out" "$D/out.npy" "$M/mutual_cli_bands_ax3_out.npy"
ok "help" "$X" run --module mutual --help && has "help text" "$D.out" "--band-axis"
ok "run help lists mutual" "$X" run --help && has "run help" "$D.out" "mutual"

bad "missing context" 2 "--context" "$X" run --module mutual --x "$M/mutual_cli_a.npy"
bad "missing x" 2 "--x" "$X" run --module mutual --context "$M/mutual_cli_a.npy"
bad "model file given" 2 "no model file" "$X" run --module mutual "$M/conv2d_cli.safetensors" --x "$M/mutual_cli_a.npy" --context "$M/mutual_cli_b.npy"
bad "rank 4 without band axis" 1 "mutual_cli_bands_a.npy" "$X" run --module mutual --x "$M/mutual_cli_bands_a.npy" --context "$M/mutual_cli_bands_b.npy"
bad "band axis out of range" 1 "--band-axis 4" "$X" run --module mutual --x "$M/mutual_cli_bands_a.npy" --context "$M/mutual_cli_bands_b.npy" --band-axis 4
bad "band axis not a number" 2 "--band-axis" "$X" run --module mutual --x "$M/mutual_cli_bands_a.npy" --context "$M/mutual_cli_bands_b.npy" --band-axis one
bad "repeated --x" 2 "--x given twice" "$X" run --module mutual --x "$M/mutual_cli_a.npy" --context "$M/mutual_cli_b.npy" --x "$M/mutual_cli_b.npy"
bad "missing file" 1 "nope.npy" "$X" run --module mutual --x "$M/nope.npy" --context "$M/mutual_cli_b.npy"
printf '\x93NUMPY\x01\x00\x76\x00{' >"$TMP/trunc.npy"
bad "truncated npy" 1 "trunc.npy" "$X" run --module mutual --x "$TMP/trunc.npy" --context "$M/mutual_cli_b.npy"
"$X" compare --help >/dev/null 2>&1 || true
# NaN policy: a float32 (1, 1, 2) array holding NaN
dict="{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 2), }"
{
    dict="{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 2), }"
    printf '\x93NUMPY\x01\x00\x76\x00%s%*s\n' "$dict" $((128 - 10 - ${#dict} - 1)) ''
    printf '\x00\x00\xc0\x7f\x00\x00\x80\x3f'
} >"$TMP/nan.npy"
bad "nan input" 1 "nan.npy" "$X" run --module mutual --x "$TMP/nan.npy" --context "$TMP/nan.npy"
{
    printf '\x93NUMPY\x01\x00\x76\x00%s%*s\n' "$dict" $((128 - 10 - ${#dict} - 1)) ''
    printf '\x00\x00\x00\x40\x00\x00\x80\x3f'
} >"$TMP/small.npy"
bad "shape mismatch" 1 "same shape" "$X" run --module mutual --x "$M/mutual_cli_a.npy" --context "$TMP/small.npy"
ok "nan allowed" "$X" run --module mutual --x "$TMP/nan.npy" --context "$TMP/nan.npy" --allow-nonfinite

echo "test_cli_mutual: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
