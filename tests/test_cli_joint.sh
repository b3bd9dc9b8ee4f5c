#!/usr/bin/env bash
# Tests of `xattn run --module joint` (M4): bash tests/test_cli_joint.sh PATH/TO/xattn FIXTURES_DIR
#
# tests/fixtures/joint_cli (tests/reference/gen_joint.py): encoder.safetensors, a 2-layer
# nn.TransformerEncoder (norm_first, gelu, eps 1e-6, final norm) whose file holds only
# __metadata__ heads, so the CLI test gives the other options as flags; layer.safetensors, one
# nn.TransformerEncoderLayer with full metadata, run on an unbatched pair. Outputs are compared
# with the real module's (expected_*.npy); bad inputs give one stderr line and write nothing.
set -u
export LC_ALL=C

HARNESS_NAME=xattn_cli_joint
. "$(dirname "$0")/cli_harness.sh"

J=$FIX/joint_cli
ENC=$J/encoder.safetensors
FLAGS=(--norm-first true --activation gelu --layer-norm-eps 1e-6)

# ---- detection by names, flags for what the file cannot tell, masks -------------------------
if ok "encoder masks" "$X" run "$ENC" --x "$J/x.npy" --context "$J/context.npy" \
    --x-padding-mask "$J/x_mask.npy" --context-padding-mask "$J/context_mask.npy" "${FLAGS[@]}"; then
    same "encoder out" "$D/out.npy" "$J/expected_out.npy"
    same "encoder context_out" "$D/context_out.npy" "$J/expected_context_out.npy"
    has "encoder wrote" "$D.out" "context_out.npy (2, 3, 16)"
fi
if ok "explicit module, threads 1, out-dir" "$X" run --module joint "$ENC" --x "$J/x.npy" \
    --context "$J/context.npy" --x-padding-mask "$J/x_mask.npy" \
    --context-padding-mask "$J/context_mask.npy" "${FLAGS[@]}" --threads 1 --heads 4 \
    --out-dir res; then
    same "out-dir out" "$D/res/out.npy" "$J/expected_out.npy"
    same "out-dir context_out" "$D/res/context_out.npy" "$J/expected_context_out.npy"
fi
# without the flags the defaults (post-norm, relu) give other numbers, each default announced
if warns "defaults differ" "$X" run "$ENC" --x "$J/x.npy" --context "$J/context.npy" \
    --x-padding-mask "$J/x_mask.npy" --context-padding-mask "$J/context_mask.npy"; then
    has "default norm_first announced" "$D.err" "encoder.safetensors: warning: norm_first: not given and not in the file; assuming False"
    has "default activation announced" "$D.err" "encoder.safetensors: warning: activation: not given and not in the file; assuming relu"
    has "default eps announced" "$D.err" "encoder.safetensors: warning: layer_norm_eps: not given and not in the file; assuming 1e-05"
    if "$X" compare "$D/out.npy" "$J/expected_out.npy" >/dev/null 2>&1; then
        fail "defaults: output should differ from norm_first/gelu"
    else
        pass
    fi
fi
# a single layer, options from the metadata, unbatched (rank-2) inputs
if ok "layer unbatched" "$X" run "$J/layer.safetensors" --x "$J/x1.npy" --context "$J/context1.npy"; then
    same "layer out" "$D/out.npy" "$J/expected_out1.npy"
    same "layer context_out" "$D/context_out.npy" "$J/expected_context_out1.npy"
    has "layer wrote" "$D.out" "out.npy (4, 8)"
fi
ok "help" "$X" run --module joint --help && has "help text" "$D.out" "True = IGNORE"
ok "inspect" "$X" inspect "$ENC"
ok "run help lists joint" "$X" run --help && has "run help" "$D.out" "joint"

# ---- errors ----------------------------------------------------------------------------------
bad "missing context" 2 "--context" "$X" run "$ENC" --x "$J/x.npy"
bad "bad activation" 2 "--activation" "$X" run "$ENC" --x "$J/x.npy" --context "$J/context.npy" --activation silu
bad "bad norm-first" 2 "--norm-first" "$X" run "$ENC" --x "$J/x.npy" --context "$J/context.npy" --norm-first maybe
bad "bad eps" 2 "--layer-norm-eps" "$X" run "$ENC" --x "$J/x.npy" --context "$J/context.npy" --layer-norm-eps 0
bad "heads not dividing" 1 "divisible" "$X" run "$ENC" --x "$J/x.npy" --context "$J/context.npy" --heads 5
bad "mask shape" 1 "x_mask.npy" "$X" run "$ENC" --x "$J/x.npy" --context "$J/context.npy" --context-padding-mask "$J/x_mask.npy"
bad "mask not bool" 1 "x.npy: dtype float32 is not supported for --x-padding-mask: expected bool or integer (True / nonzero = ignore)" \
    "$X" run "$ENC" --x "$J/x.npy" --context "$J/context.npy" --x-padding-mask "$J/x.npy"
# integer masks are bool masks: nonzero = True = ignore (x_mask.npy and context_mask.npy as uint8
# and int16, True as 1 and 5)
npy_head() { printf '\x93NUMPY\x01\x00\x76\x00%s%*s\n' "$1" $((128 - 10 - ${#1} - 1)) ''; }
{
    npy_head "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 5), }"
    printf '\x00\x00\x00\x01\x01\x00\x00\x00\x00\x00'
} >"$TMP/x_mask_u8.npy"
{
    npy_head "{'descr': '<i2', 'fortran_order': False, 'shape': (2, 3), }"
    printf '\x00\x00\x00\x00\x05\x00\x05\x00\x00\x00\x00\x00'
} >"$TMP/context_mask_i16.npy"
if ok "integer masks" "$X" run "$ENC" --x "$J/x.npy" --context "$J/context.npy" \
    --x-padding-mask "$TMP/x_mask_u8.npy" --context-padding-mask "$TMP/context_mask_i16.npy" "${FLAGS[@]}"; then
    same "integer masks out" "$D/out.npy" "$J/expected_out.npy"
    same "integer masks context_out" "$D/context_out.npy" "$J/expected_context_out.npy"
fi
bad "width mismatch" 1 "x1.npy" "$X" run "$ENC" --x "$J/x1.npy" --context "$J/context1.npy"
bad "rank mismatch" 1 "context1.npy" "$X" run "$ENC" --x "$J/x.npy" --context "$J/context1.npy"
bad "missing input" 1 "nope.npy" "$X" run "$ENC" --x "$J/nope.npy" --context "$J/context.npy"
bad "missing model" 1 "nope.safetensors" "$X" run --module joint "$J/nope.safetensors" --x "$J/x.npy" --context "$J/context.npy"
bad "not a joint model" 1 "self_attn.in_proj_weight" "$X" run --module joint "$F/mha.safetensors" --x "$J/x.npy" --context "$J/context.npy"
cp "$J/x.npy" "$TMP/nan.npy"
# poison one float32 value of x with a NaN (data starts after the 128-byte header)
printf '\x00\x00\xc0\x7f' | dd of="$TMP/nan.npy" bs=1 seek=132 conv=notrunc 2>/dev/null
bad "nan input" 1 "nan.npy" "$X" run "$ENC" --x "$TMP/nan.npy" --context "$J/context.npy"
ok "nan allowed" "$X" run "$ENC" --x "$TMP/nan.npy" --context "$J/context.npy" --allow-nonfinite "${FLAGS[@]}"

# mkst FILE NAME...: a safetensors file of float32 tensors of shape (1,), all 1.0, with the
# given names and __metadata__ heads 1
mkst() {
    local f=$1 hdr='{"__metadata__":{"heads":"1"}' off=0 nm
    shift
    for nm in "$@"; do
        hdr="$hdr,\"$nm\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[$off,$((off + 4))]}"
        off=$((off + 4))
    done
    hdr="$hdr}"
    while [ $((${#hdr} % 8)) -ne 0 ]; do hdr="$hdr "; done
    local l=${#hdr} i
    {
        for i in 0 1 2 3 4 5 6 7; do printf "\\x$(printf %02x $(((l >> (8 * i)) & 255)))"; done
        printf '%s' "$hdr"
        for nm in "$@"; do printf '\x00\x00\x80\x3f'; done
    } >"$f"
}

# ---- hostile state dicts: a layer index past the contiguous run is refused, not ignored ----
mkst "$TMP/gap.safetensors" layers.0.self_attn.in_proj_weight layers.3.linear1.weight
bad "layer gap" 1 "layers.3.linear1.weight" "$X" run "$TMP/gap.safetensors" --x "$J/x.npy" --context "$J/context.npy" --heads 1
mkst "$TMP/huge_layer.safetensors" layers.0.self_attn.in_proj_weight layers.99999999999999999999.norm1.weight
bad "huge layer index" 1 "outside the 1 layer" "$X" run "$TMP/huge_layer.safetensors" --x "$J/x.npy" --context "$J/context.npy" --heads 1

echo "test_cli_joint: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
