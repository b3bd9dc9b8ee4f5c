#!/usr/bin/env bash
# Tests of `xattn run` on HALLO's audio block (attn2_0/1/2, zero_conv_*, norm2/3, ff):
# bash tests/test_cli_hallo.sh PATH/TO/xattn FIXTURES_DIR
# Outputs against tests/reference/gen_hallo.py (hallo_fullres: masks at 40x36 resized to the
# 8x6 latent, motion scales 1, 0.5, 2), and bad input: exit code, one stderr line naming the file
# or option, nothing written.
set -u
export LC_ALL=C
HARNESS_NAME=xattn_cli_hallo
. "$(dirname "$0")/cli_harness.sh"
M=$FIX
W=$M/hallo_fullres.safetensors
XI=$M/hallo_cli_x.npy
AU=$M/hallo_cli_audio.npy
MK=$M/hallo_cli_masks.npy
MS="--motion-scale 1,0.5,2"

ok "detected" "$X" run "$W" --x "$XI" --context "$AU" --region-masks "$MK" --latent-hw 8,6 $MS --threads 1 &&
    same "detected out" "$D/out.npy" "$M/hallo_cli_out.npy"
ok "module flag, regions, threads 2" "$X" run "$W" --module hallo-audio --x "$XI" --context "$AU" \
    --region-masks "$MK" --latent-hw 8,6 $MS --regions --threads 2 --out-dir o &&
    same "module out" "$D/o/out.npy" "$M/hallo_cli_out.npy" &&
    same "regions" "$D/o/regions.npy" "$M/hallo_cli_regions.npy"
ok "heads flag" "$X" run "$W" --x "$XI" --context "$AU" --region-masks "$MK" --latent-hw 8,6 $MS --heads 4 &&
    same "heads out" "$D/out.npy" "$M/hallo_cli_out.npy"
ok "inspect" "$X" inspect "$W" && has "inspect module" "$D.out" "hallo-audio"
ok "help" "$X" run --module hallo-audio --help && has "help text" "$D.out" "zero_conv"

bad "no model" 2 "MODEL.safetensors" "$X" run --module hallo-audio --x "$XI" --context "$AU" --region-masks "$MK"
bad "no masks" 2 "--region-masks" "$X" run "$W" --x "$XI" --context "$AU"
bad "bad hw" 2 "--latent-hw" "$X" run "$W" --x "$XI" --context "$AU" --region-masks "$MK" --latent-hw 8
bad "bad motion" 2 "--motion-scale" "$X" run "$W" --x "$XI" --context "$AU" --region-masks "$MK" --motion-scale 1,x,2
bad "not square" 1 "--latent-hw" "$X" run "$W" --x "$XI" --context "$AU" --region-masks "$MK"
bad "hw mismatch" 1 "hallo_cli_x.npy" "$X" run "$W" --x "$XI" --context "$AU" --region-masks "$MK" --latent-hw 7,7
bad "x channels" 1 "norm2.weight" "$X" run "$W" --x "$AU" --context "$AU" --region-masks "$MK"
bad "audio channels" 1 "attn2_0.to_k.weight" "$X" run "$W" --x "$XI" --context "$XI" --region-masks "$MK" --latent-hw 8,6
bad "masks shape" 1 "hallo_cli_x.npy" "$X" run "$W" --x "$XI" --context "$AU" --region-masks "$XI" --latent-hw 8,6
bad "nan input" 1 "hallo_cli_x_nan.npy" "$X" run "$W" --x "$M/hallo_cli_x_nan.npy" --context "$AU" --region-masks "$MK" --latent-hw 8,6
bad "missing model" 1 "nope.safetensors" "$X" run "$M/nope.safetensors" --module hallo-audio --x "$XI" --context "$AU" --region-masks "$MK"
ok "nan allowed" "$X" run "$W" --x "$M/hallo_cli_x_nan.npy" --context "$AU" --region-masks "$MK" --latent-hw 8,6 --allow-nonfinite

echo "test_cli_hallo: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
