#!/usr/bin/env bash
# Tests of `xattn run --module bert-decoder` (M8): bash tests/test_cli_decoder.sh PATH/TO/xattn FIXTURES_DIR
#
# tests/fixtures/decoder_cli (tests/reference/gen_decoder.py): model.safetensors, a 2-layer
# transformers BertEncoder decoder (is_decoder, add_cross_attention) with a video/audio
# projector; outputs of the real model (expected_*.npy). The full forward and --incremental give
# the same out.npy; bad inputs give one stderr line and write nothing.
set -u
export LC_ALL=C

HARNESS_NAME=xattn_cli_decoder
. "$(dirname "$0")/cli_harness.sh"

J=$FIX/decoder_cli
MOD=$J/model.safetensors
IN=(--x "$J/x.npy" --memory "$J/memory.npy" --attention-mask "$J/attention_mask.npy" --memory-mask "$J/memory_mask.npy")

if ok "detected, masks" "$X" run "$MOD" "${IN[@]}"; then
    same "full out" "$D/out.npy" "$J/expected_out.npy"
    has "wrote" "$D.out" "out.npy (2, 9, 16)"
fi
if ok "incremental" "$X" run --module bert-decoder "$MOD" "${IN[@]}" --incremental --threads 1 --out-dir res; then
    same "incremental out" "$D/res/out.npy" "$J/expected_out.npy"
fi
if ok "T-AV memory from the projector" "$X" run "$MOD" --x "$J/x.npy" --video "$J/video.npy" --audio "$J/audio.npy"; then
    same "T-AV out" "$D/out.npy" "$J/expected_out_av.npy"
fi
if ok "T-V incremental" "$X" run "$MOD" --x "$J/x.npy" --video "$J/video.npy" --incremental; then
    same "T-V out" "$D/out.npy" "$J/expected_out_v.npy"
fi
if ok "unbatched, --context alias" "$X" run "$MOD" --x "$J/x1.npy" --context "$J/memory1.npy"; then
    same "unbatched out" "$D/out.npy" "$J/expected_out1.npy"
    has "unbatched wrote" "$D.out" "out.npy (9, 16)"
fi
# another eps than the metadata's gives other numbers
if ok "eps flag" "$X" run "$MOD" "${IN[@]}" --layer-norm-eps 0.5; then
    if "$X" compare "$D/out.npy" "$J/expected_out.npy" >/dev/null 2>&1; then
        fail "eps flag: output should differ"
    else
        pass
    fi
fi
ok "help" "$X" run --module bert-decoder --help && has "help text" "$D.out" "1 = KEEP"
ok "inspect" "$X" inspect "$MOD" && has "inspect names it" "$D.out" "bert-decoder"
# integer masks: nonzero = keep (memory_mask.npy as uint8 with 7 for True)
mm_hl=$(od -An -tu2 -j8 -N2 "$J/memory_mask.npy" | tr -d ' ')
{
    head -c $((10 + mm_hl)) "$J/memory_mask.npy" | sed "s/'|b1'/'|u1'/"
    for b in $(od -An -tu1 -v -j$((10 + mm_hl)) "$J/memory_mask.npy"); do
        if [ "$b" -ne 0 ]; then printf '\x07'; else printf '\x00'; fi
    done
} >"$TMP/memory_mask_u8.npy"
if ok "uint8 memory mask" "$X" run "$MOD" --x "$J/x.npy" --memory "$J/memory.npy" \
    --attention-mask "$J/attention_mask.npy" --memory-mask "$TMP/memory_mask_u8.npy"; then
    same "uint8 memory mask out" "$D/out.npy" "$J/expected_out.npy"
fi
ok "run help lists bert-decoder" "$X" run --help && has "run help" "$D.out" "bert-decoder"

# ---- errors ----------------------------------------------------------------------------------
bad "missing memory" 2 "--memory" "$X" run "$MOD" --x "$J/x.npy"
bad "memory and video" 2 "--video" "$X" run "$MOD" --x "$J/x.npy" --memory "$J/memory.npy" --video "$J/video.npy"
bad "bad eps" 2 "--layer-norm-eps" "$X" run "$MOD" "${IN[@]}" --layer-norm-eps -1
bad "heads not dividing" 1 "divisible" "$X" run "$MOD" "${IN[@]}" --heads 5
bad "mask shape" 1 "memory_mask.npy" "$X" run "$MOD" --x "$J/x.npy" --memory "$J/memory.npy" --attention-mask "$J/memory_mask.npy"
bad "mask values" 1 "x.npy" "$X" run "$MOD" --x "$J/x1.npy" --memory "$J/memory1.npy" --attention-mask "$J/x.npy"
bad "width mismatch" 1 "video.npy" "$X" run "$MOD" --x "$J/x.npy" --memory "$J/video.npy"
bad "memory rank" 1 "memory1.npy" "$X" run "$MOD" --x "$J/x.npy" --memory "$J/memory1.npy"
bad "video shape" 1 "audio.npy" "$X" run "$MOD" --x "$J/x.npy" --video "$J/audio.npy"
bad "missing model" 1 "nope.safetensors" "$X" run --module bert-decoder nope.safetensors --x "$J/x.npy" --memory "$J/memory.npy"
bad "not a decoder" 1 "crossattention.self.query.weight" "$X" run --module bert-decoder "$F/mha.safetensors" --x "$J/x.npy" --memory "$J/memory.npy"
cp "$J/x.npy" "$TMP/nan.npy"
# poison one float32 value of x with a NaN (data starts after the 128-byte header)
printf '\x00\x00\xc0\x7f' | dd of="$TMP/nan.npy" bs=1 seek=132 conv=notrunc 2>/dev/null
bad "nan input" 1 "nan.npy" "$X" run "$MOD" --x "$TMP/nan.npy" --memory "$J/memory.npy"
ok "nan allowed" "$X" run "$MOD" --x "$TMP/nan.npy" --memory "$J/memory.npy" --allow-nonfinite

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
mkst "$TMP/gap.safetensors" layer.0.attention.self.query.weight layer.0.crossattention.self.query.weight layer.5.output.dense.weight
bad "layer gap" 1 "layer.5.output.dense.weight" "$X" run "$TMP/gap.safetensors" --x "$J/x.npy" --memory "$J/memory.npy"

echo "test_cli_decoder: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
