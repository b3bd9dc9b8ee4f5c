#!/usr/bin/env bash
# Tests of `xattn run` on the M5 interlaced decoder: bash tests/test_cli_interlaced.sh XATTN FIXTURES
#
# tests/fixtures/interlaced_cli (from tests/reference/gen_interlaced.py): model.safetensors
# (InterlanceDecoder state dict, depth 2, dim 16, __metadata__ heads 2, n_cls 2), x.npy (2, 9, 16),
# context.npy (2, 6, 16), the float64 references expected_out.npy, expected_context_out.npy and
# expected_logits_L.npy. Checks detection by names, --module, the outputs, the options and the
# bad-input cases (exit code, one stderr line naming the problem, nothing written).
set -u
export LC_ALL=C

HARNESS_NAME=xattn_cli_interlaced
. "$(dirname "$0")/cli_harness.sh"

I=$FIX/interlaced_cli
M=$I/model.safetensors

# detected by its names, all outputs
if ok "detect + return-attn" "$X" run "$M" --x "$I/x.npy" --context "$I/context.npy" --return-attn --first x; then
    same "out" "$D/out.npy" "$I/expected_out.npy"
    same "context_out" "$D/context_out.npy" "$I/expected_context_out.npy"
    same "logits 0" "$D/attn_weights_0.npy" "$I/expected_logits_0.npy"
    same "logits 1" "$D/attn_weights_1.npy" "$I/expected_logits_1.npy"
    has "shape of layer 1 logits" "$D.out" "attn_weights_1.npy (2, 2, 6, 9)"
fi
OUT1=$D

# the file does not say which stream layer 0 updates: the reference's default (x), announced
if warns "default first" "$X" run "$M" --x "$I/x.npy" --context "$I/context.npy"; then
    has "default first announced" "$D.err" "model.safetensors: warning: first: not given and not in the file; assuming x"
    same "out (default first)" "$D/out.npy" "$I/expected_out.npy"
fi

# --module, one thread, explicit options equal to the file's
if ok "--module interlaced" "$X" run --module interlaced "$M" --x "$I/x.npy" --context "$I/context.npy" \
    --threads 1 --heads 2 --n-cls 2 --first x --out-dir res; then
    same "out (1 thread)" "$D/res/out.npy" "$I/expected_out.npy"
    same "context_out (1 thread)" "$D/res/context_out.npy" "$I/expected_context_out.npy"
    [ ! -e "$D/res/attn_weights_0.npy" ] && pass || fail "logits written without --return-attn"
fi

# options change the result
if ok "--n-cls 0" "$X" run --module interlaced "$M" --x "$I/x.npy" --context "$I/context.npy" --n-cls 0 --first x; then
    if "$X" compare "$D/out.npy" "$I/expected_out.npy" >/dev/null 2>&1; then
        fail "--n-cls 0 gave the n_cls 2 result"
    else pass; fi
fi
if ok "--first context" "$X" run "$M" --x "$I/x.npy" --context "$I/context.npy" --first context; then
    if "$X" compare "$D/out.npy" "$I/expected_out.npy" >/dev/null 2>&1; then
        fail "--first context gave the x-first result"
    else pass; fi
fi

# help and inspect
ok "help" "$X" run --module interlaced --help && has "help text" "$D.out" "InterlanceDecoder"
ok "inspect" "$X" inspect "$M" && has "inspect line" "$D.out" "module: InterlanceDecoder"

# a NaN input (1, 1, 16) float32
NAN=$TMP/nan.npy
{
    dict="{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 16), }"
    printf '\x93NUMPY\x01\x00\x76\x00%s%*s\n' "$dict" $((128 - 10 - ${#dict} - 1)) ''
    printf '\x00\x00\xc0\x7f'
    for _ in $(seq 15); do printf '\x00\x00\x00\x00'; done
} >"$NAN"

bad "missing --context" 2 "--context" "$X" run --module interlaced "$M" --x "$I/x.npy"
bad "bad --first" 2 "--first" "$X" run --module interlaced "$M" --x "$I/x.npy" --context "$I/context.npy" --first y
bad "negative --n-cls" 2 "--n-cls" "$X" run --module interlaced "$M" --x "$I/x.npy" --context "$I/context.npy" --n-cls -1
bad "unknown option" 2 "--bogus" "$X" run --module interlaced "$M" --x "$I/x.npy" --context "$I/context.npy" --bogus
bad "missing model" 1 "nope.safetensors" "$X" run --module interlaced "$TMP/nope.safetensors" --x "$I/x.npy" --context "$I/context.npy"
bad "not interlaced" 1 "not an interlaced decoder" "$X" run --module interlaced "$F/mha.safetensors" --x "$I/x.npy" --context "$I/context.npy"
bad "heads not dividing" 1 "divisible" "$X" run "$M" --x "$I/x.npy" --context "$I/context.npy" --heads 3
bad "x rank 4" 1 "expected_logits_0.npy" "$X" run "$M" --x "$I/expected_logits_0.npy" --context "$I/context.npy"
bad "x wrong dim" 1 "model's dim is 16" "$X" run "$M" --x "$F/bidir_context.npy" --context "$I/context.npy"
bad "batch differs" 1 "batch sizes differ" "$X" run "$M" --x "$I/x.npy" --context "$NAN" --allow-nonfinite
bad "NaN input" 1 "nan.npy" "$X" run "$M" --x "$I/x.npy" --context "$NAN"
bad "out-dir is a file" 1 "not a directory" "$X" run "$M" --x "$I/x.npy" --context "$I/context.npy" --out-dir "$M"

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

# ---- hostile state dicts: non-finite weights, a block index past the contiguous run ----------
cp "$M" "$TMP/nanw.safetensors"
HL=$(od -An -tu4 -N4 "$M" | tr -d ' ')
printf '\xff\xff\xff\xff\xff\xff\xff\xff' | dd of="$TMP/nanw.safetensors" bs=1 seek=$((8 + HL)) conv=notrunc 2>/dev/null
bad "NaN weight" 1 "non-finite" "$X" run "$TMP/nanw.safetensors" --x "$I/x.npy" --context "$I/context.npy"
ok "NaN weight allowed" "$X" run "$TMP/nanw.safetensors" --x "$I/x.npy" --context "$I/context.npy" --allow-nonfinite --first x
mkst "$TMP/gap.safetensors" blocks.0.attn.q_map.weight blocks.0.self_attn.qkv.weight blocks.0.norm1.weight blocks.2.norm1.weight
bad "block gap" 1 "blocks.2.norm1.weight" "$X" run "$TMP/gap.safetensors" --x "$I/x.npy" --context "$I/context.npy"

echo "test_cli_interlaced: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
