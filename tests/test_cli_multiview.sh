#!/usr/bin/env bash
# Tests of `xattn run` for M6 (multiscale multiview cross-attention):
#     bash tests/test_cli_multiview.sh PATH/TO/xattn FIXTURES_DIR
#
# tests/fixtures/multiview_cli.safetensors is a 3-view, 2-stage MultiscaleMultiview state dict
# (tests/reference/gen_multiview.py) with heads "2,4" in __metadata__; multiview_cli_x{0,1,2}.npy
# are its views (B=2; 7, 4, 5 tokens) and multiview_cli_expected_{0,1,2}.npy the float64 PyTorch
# outputs. Checks detection and --module, the repeated --view form, --heads, rank-2 inputs, and
# bad input: one stderr line naming the file or option, exit code, nothing written.
set -u
export LC_ALL=C

HARNESS_NAME=xattn_cli_multiview
. "$(dirname "$0")/cli_harness.sh"

M=$FIX/multiview_cli.safetensors
MN=$FIX/multiview_cli_noheads.safetensors
V0=$FIX/multiview_cli_x0.npy
V1=$FIX/multiview_cli_x1.npy
V2=$FIX/multiview_cli_x2.npy

# mknpy FILE DESCR SHAPE NVALUES [FILL]: a little-endian .npy (v1.0) of NVALUES 4-byte values
# (zero, or the 4 bytes FILL as a printf escape string)
mknpy() {
    local hdr="{'descr': '$2', 'fortran_order': False, 'shape': $3, }"
    local len=$((${#hdr} + 11))
    local pad=$(((64 - len % 64) % 64))
    local hl=$((${#hdr} + pad + 1))
    {
        printf '\x93NUMPY\x01\x00'
        printf "\\x$(printf %02x $((hl % 256)))\\x$(printf %02x $((hl / 256)))"
        printf '%s' "$hdr"
        printf '%*s' "$pad" ''
        printf '\n'
        if [ -n "${5:-}" ]; then
            for _ in $(seq "$4"); do printf "$5"; done
        else
            head -c $(($4 * 4)) /dev/zero
        fi
    } >"$1"
}
mknpy "$TMP/one_tok.npy" '<f4' '(2, 1, 8)' 16
mknpy "$TMP/b3.npy" '<f4' '(3, 4, 8)' 96
mknpy "$TMP/nan.npy" '<f4' '(2, 4, 8)' 64 '\x00\x00\xc0\x7f'
mknpy "$TMP/r2.npy" '<f4' '(4, 8)' 32
mknpy "$TMP/int.npy" '<i4' '(2, 4, 8)' 64

# detection by names, three views
if ok "detect 3 views" "$X" run "$M" --x "$V0" --context "$V1" --view "$V2"; then
    for k in 0 1 2; do same "view $k" "$D/out_$k.npy" "$FIX/multiview_cli_expected_$k.npy"; done
    has "prints out_2" "$D.out" "out_2.npy (2, 2, 16)"
fi
# --module, every view by --view, --view=, threads, out-dir, heads from the flag
if ok "--view only" "$X" run --module multiview "$MN" --view "$V0" --view="$V1" --view "$V2" \
    --heads 2,4 --threads 2 --out-dir o --gelu erf --eps 1e-5; then
    for k in 0 1 2; do same "view-only $k" "$D/o/out_$k.npy" "$FIX/multiview_cli_expected_$k.npy"; done
fi
# a different head count changes the result but runs
ok "heads 1" "$X" run "$M" --x "$V0" --context "$V1" --view "$V2" --heads 1
# rank-2 inputs: one sample (shape without the batch axis)
if ok "rank 2" "$X" run "$M" --view "$TMP/r2.npy" --view "$TMP/r2.npy" --view "$TMP/r2.npy"; then
    has "rank-2 output" "$D.out" "out_0.npy (2, 16)"
fi
ok "help" "$X" run --module multiview --help && has "help names --view" "$D.out" "--view VK.npy"

bad "two views for a 3-view model" 1 "3 views" "$X" run "$M" --x "$V0" --context "$V1"
bad "one view" 2 "two views" "$X" run "$M" --x "$V0"
bad "no model" 2 "MODEL" "$X" run --module multiview --x "$V0" --context "$V1"
bad "no heads" 1 "heads" "$X" run "$MN" --x "$V0" --context "$V1" --view "$V2"
bad "bad heads flag" 2 "--heads" "$X" run "$M" --x "$V0" --context "$V1" --view "$V2" --heads 2,x
bad "heads count" 1 "heads" "$X" run "$M" --x "$V0" --context "$V1" --view "$V2" --heads 2,4,8
bad "heads not dividing" 1 "divisible" "$X" run "$M" --x "$V0" --context "$V1" --view "$V2" --heads 3
bad "bad gelu" 2 "--gelu" "$X" run "$M" --x "$V0" --context "$V1" --view "$V2" --gelu relu
bad "width" 1 "expected_0.npy" "$X" run "$M" --x "$V0" --context "$V1" --view "$FIX/multiview_cli_expected_0.npy"
bad "one token, two stages" 1 "one_tok.npy" "$X" run "$M" --x "$V0" --context "$V1" --view "$TMP/one_tok.npy"
bad "batch" 1 "b3.npy" "$X" run "$M" --x "$V0" --context "$TMP/b3.npy" --view "$V2"
bad "rank mix" 1 "r2.npy" "$X" run "$M" --x "$V0" --context "$TMP/r2.npy" --view "$V2"
bad "nan" 1 "nan.npy" "$X" run "$M" --x "$V0" --context "$TMP/nan.npy" --view "$V2"
bad "int dtype" 1 "int.npy" "$X" run "$M" --x "$V0" --context "$TMP/int.npy" --view "$V2"
bad "missing file" 1 "nothere.npy" "$X" run "$M" --x "$V0" --context "$V1" --view "$TMP/nothere.npy"
bad "missing model" 1 "nomodel.safetensors" "$X" run --module multiview "$TMP/nomodel.safetensors" --x "$V0" --context "$V1"
bad "--view without value" 2 "--view" "$X" run "$M" --x "$V0" --context "$V1" --view
bad "unknown option" 2 "--bogus" "$X" run "$M" --x "$V0" --context "$V1" --bogus
bad "context without x" 2 "--context" "$X" run "$M" --context "$V1" --view "$V2" --view "$V0"
# NaN passes with --allow-nonfinite
ok "allow nonfinite" "$X" run "$M" --x "$V0" --context "$TMP/nan.npy" --view "$V2" --allow-nonfinite

echo "test_cli_multiview: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
