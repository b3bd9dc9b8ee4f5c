#!/usr/bin/env bash
# Tests of the xattn command-line tool: bash tests/test_cli.sh PATH/TO/xattn FIXTURES_DIR
#
# Runs run / inspect / compare / --help on the fixtures of tests/fixtures/cli (made by
# tests/reference/gen_mha.py and gen_cli_bidir.py) in a temporary directory, compares outputs
# with `xattn compare`, and checks every bad-input case: non-zero exit, exactly one line on
# stderr naming the file (or option) at fault, and nothing written.
set -u
export LC_ALL=C # byte semantics for ${#string} in the file forgers below

HARNESS_NAME=xattn_cli
. "$(dirname "$0")/cli_harness.sh"

MHA=$F/mha.safetensors
ATT=$F/attention.safetensors
INPUTS=(--x "$F/x.npy" --context "$F/context.npy" --value "$F/value.npy")
# nn.MultiheadAttention's add_zero_attn and diffusers Attention's heads, scale_qk,
# residual_connection and rescale_output_factor leave no trace in a state dict, and the fixtures
# carry no __metadata__ for them: a run that assumes the reference's default says so on stderr,
# so the runs that must leave stderr empty state them
NOZ=(--add-zero-attn False)
DIFF=(--scale-qk True --residual-connection False --rescale-output-factor 1)

# ---- help and version --------------------------------------------------------------------
for c in "" run inspect demo compare; do
    if ok "help $c" "$X" $c --help; then has "help $c" "$D.out" "usage: xattn"; fi
done
if ok "help run via 'help'" "$X" help run; then has "help run" "$D.out" "--key-padding-mask"; fi
# every option of a usage synopsis is accepted, and described in the help's body
for c in run inspect demo compare; do
    "$X" $c --help >"$TMP/help_$c" 2>&1
    for o in $(sed -n '/^usage:/,/^$/p' "$TMP/help_$c" | grep -o -- '--[a-z][a-z-]*' | sort -u); do
        if "$X" $c "$o" --help 2>&1 | grep -q "unknown option"; then
            fail "xattn $c --help names $o, which $c does not accept"
        elif [ "$(grep -c -- "$o" "$TMP/help_$c")" -lt 2 ]; then
            fail "xattn $c --help names $o in the synopsis only"
        else
            pass
        fi
    done
done
if ok "version" "$X" --version; then has "version" "$D.out" "xattn 0."; fi
bad "no command" 2 "missing command" "$X"
bad "unknown command" 2 "frobnicate" "$X" frobnicate

# ---- inspect -----------------------------------------------------------------------------
if ok "inspect mha" "$X" inspect "$MHA"; then
    has "inspect mha" "$D.out" "module: torch.nn.MultiheadAttention (embed_dim=9, heads=3, kdim=4, vdim=5, bias=True)"
    has "inspect mha table" "$D.out" "k_proj_weight"
    has "inspect mha dtype" "$D.out" "F32"
    has "inspect mha metadata" "$D.out" "heads = 3"
fi
if ok "inspect mha without heads" "$X" inspect "$F/mha_noheads.safetensors"; then
    has "inspect heads unknown" "$D.out" "heads=?"
fi
if ok "inspect diffusers" "$X" inspect "$ATT"; then
    has "inspect diffusers" "$D.out" "module: diffusers Attention (query_dim=16, cross_attention_dim=6"
    has "inspect diffusers heads" "$D.out" "heads=8 (default)"
fi
if ok "inspect fixture with extra tensors" "$X" inspect "$FIX/mha_weights_bf16.safetensors"; then
    has "inspect bf16" "$D.out" "BF16"
fi

# ---- run: torch.nn.MultiheadAttention ------------------------------------------------------
if ok "run mha kpm + attn" "$X" run "$MHA" "${NOZ[@]}" "${INPUTS[@]}" --key-padding-mask "$F/kpm.npy" \
    --return-attn --out-dir res; then
    same "mha out" "$D/res/out.npy" "$F/expected_out.npy"
    same "mha attn averaged" "$D/res/attn.npy" "$F/expected_attn.npy"
fi
if ok "run mha per-head attn, 1 thread" "$X" run "$MHA" "${NOZ[@]}" "${INPUTS[@]}" --key-padding-mask \
    "$F/kpm.npy" --per-head-attn --threads 1 --module mha; then
    same "mha out (1 thread)" "$D/out.npy" "$F/expected_out.npy"
    same "mha attn per head" "$D/attn.npy" "$F/expected_attn_per_head.npy"
fi
if ok "run mha float64 x, --heads" "$X" run "$F/mha_noheads.safetensors" --heads 3 "${NOZ[@]}" \
    --x "$F/x_f64.npy" --context "$F/context.npy" --value "$F/value.npy" \
    --key-padding-mask="$F/kpm.npy"; then
    same "mha out (float64 x)" "$D/out.npy" "$F/expected_out.npy"
    [ ! -e "$D/attn.npy" ] && pass || fail "attn.npy written without --return-attn"
fi
if ok "run mha attn_mask" "$X" run "$MHA" "${NOZ[@]}" "${INPUTS[@]}" --key-padding-mask "$F/kpm.npy" \
    --attn-mask "$F/attn_mask.npy"; then
    same "mha out (attn_mask)" "$D/out.npy" "$F/expected_out_attn_mask.npy"
fi
if ok "run mha causal" "$X" run "$MHA" "${NOZ[@]}" "${INPUTS[@]}" --key-padding-mask "$F/kpm.npy" --causal; then
    same "mha out (causal)" "$D/out.npy" "$F/expected_out_causal.npy"
fi

# ---- run: diffusers Attention, one unbatched sequence, default heads -----------------------
if ok "run diffusers rank 2" "$X" run "$ATT" --heads 8 "${DIFF[@]}" --x "$F/attention_x.npy" --context \
    "$F/attention_context.npy" --return-attn; then
    same "diffusers out" "$D/out.npy" "$F/attention_expected_out.npy"
fi

# ---- compare -----------------------------------------------------------------------------
ok "compare equal" "$X" compare "$F/expected_out.npy" "$F/expected_out.npy"
ok "compare float32 vs float64" "$X" compare "$F/x.npy" "$F/x_f64.npy" --tol 0
ok "compare loose tol" "$X" compare "$F/expected_out_perturbed.npy" "$F/expected_out.npy" --tol 1e-3
bad "compare different" 1 "expected_out_perturbed.npy" "$X" compare \
    "$F/expected_out_perturbed.npy" "$F/expected_out.npy"
bad "compare shapes" 1 "expected_attn.npy" "$X" compare "$F/expected_attn.npy" "$F/expected_out.npy"
bad "compare missing" 1 "nope.npy" "$X" compare "$TMP/nope.npy" "$F/expected_out.npy"
bad "compare bad tol" 2 "--tol" "$X" compare "$F/x.npy" "$F/x.npy" --tol abc

# ---- bad inputs --------------------------------------------------------------------------
B=$TMP/files
mkdir -p "$B"
head -c 100 "$MHA" >"$B/trunc.safetensors"
head -c 1000 "$MHA" >"$B/trunc_data.safetensors"
head -c 60 "$F/x.npy" >"$B/trunc_header.npy"
head -c 300 "$F/x.npy" >"$B/trunc_data.npy"
: >"$B/empty.npy"
printf 'this is not a safetensors file at all, just text\n' >"$B/garbage.safetensors"
mkdir -p "$B/dir.npy"
: >"$B/file_not_dir"
# torch.save checkpoints: a zip archive whose first entry is archive/data.pkl, and the legacy
# pickle (protocol 2, the magic number first)
{
    printf 'PK\x03\x04\x14\x00\x00\x00\x08\x00'
    printf '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00'
    printf 'archive/data.pkl\x80\x02}q\x00.'
} >"$B/model.pt"
printf '\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e\x80\x02\x4d\xe9\x03.' >"$B/legacy.pth"

bad "missing model" 1 "missing.safetensors" "$X" run "$B/missing.safetensors" "${INPUTS[@]}"
bad "truncated safetensors" 1 "trunc.safetensors" "$X" run "$B/trunc.safetensors" "${INPUTS[@]}"
bad "truncated safetensors data" 1 "trunc_data.safetensors" "$X" run "$B/trunc_data.safetensors" "${INPUTS[@]}"
bad "garbage safetensors" 1 "garbage.safetensors" "$X" run "$B/garbage.safetensors" "${INPUTS[@]}"
bad "model is a .npy" 1 "x.npy" "$X" run "$F/x.npy" "${INPUTS[@]}"
PT_MSG="this is a PyTorch pickle checkpoint (torch.save), not safetensors: save it with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
bad "model is a torch.save zip" 1 "model.pt: $PT_MSG" "$X" run "$B/model.pt" "${INPUTS[@]}"
bad "model is a legacy torch.save pickle" 1 "legacy.pth: $PT_MSG" "$X" run "$B/legacy.pth" "${INPUTS[@]}"
bad "inspect a torch.save zip" 1 "model.pt: $PT_MSG" "$X" inspect "$B/model.pt"
bad "bench a legacy torch.save pickle" 1 "legacy.pth: $PT_MSG" "$X" bench "$B/legacy.pth"
bad "decoder weights from torch.save" 1 "model.pt: $PT_MSG" "$X" run --module bert-decoder "$B/model.pt" --x "$F/x.npy" --memory "$F/x.npy"
bad "missing x" 1 "missing_x.npy" "$X" run "$MHA" --x "$B/missing_x.npy" --context "$F/context.npy" --value "$F/value.npy"
bad "x is a directory" 1 "dir.npy" "$X" run "$MHA" --x "$B/dir.npy" --context "$F/context.npy" --value "$F/value.npy"
bad "empty npy" 1 "empty.npy" "$X" run "$MHA" --x "$B/empty.npy" --context "$F/context.npy" --value "$F/value.npy"
bad "truncated npy header" 1 "trunc_header.npy" "$X" run "$MHA" --x "$B/trunc_header.npy" --context "$F/context.npy" --value "$F/value.npy"
bad "truncated npy data" 1 "trunc_data.npy" "$X" run "$MHA" --x "$B/trunc_data.npy" --context "$F/context.npy" --value "$F/value.npy"
bad "truncated context" 1 "trunc_data.npy" "$X" run "$MHA" --x "$F/x.npy" --context "$B/trunc_data.npy" --value "$F/value.npy"
bad "wrong-rank x" 1 "bad_rank4.npy" "$X" run "$MHA" --x "$F/bad_rank4.npy" --context "$F/context.npy" --value "$F/value.npy"
bad "x width vs model" 1 "bad_width.npy" "$X" run "$MHA" --x "$F/bad_width.npy" --context "$F/context.npy" --value "$F/value.npy"
bad "x width names the model" 1 "mha.safetensors" "$X" run "$MHA" --x "$F/bad_width.npy" --context "$F/context.npy" --value "$F/value.npy"
bad "context width vs model" 1 "value.npy" "$X" run "$MHA" --x "$F/x.npy" --context "$F/value.npy" --value "$F/value.npy"
bad "value width vs model" 1 "context.npy" "$X" run "$MHA" --x "$F/x.npy" --context "$F/context.npy" --value "$F/context.npy"
bad "context batch" 1 "bad_batch_context.npy" "$X" run "$MHA" --x "$F/x.npy" --context "$F/bad_batch_context.npy" --value "$F/value.npy"
bad "context rank vs x" 1 "/context.npy" "$X" run "$ATT" --x "$F/attention_x.npy" --context "$F/context.npy"
bad "no context, kdim != embed_dim" 1 "--context" "$X" run "$MHA" --x "$F/x.npy"
bad "kpm wrong shape" 1 "bad_kpm_shape.npy" "$X" run "$MHA" "${INPUTS[@]}" --key-padding-mask "$F/bad_kpm_shape.npy"
bad "attn mask wrong shape" 1 "bad_attn_mask_shape.npy" "$X" run "$MHA" "${INPUTS[@]}" --attn-mask "$F/bad_attn_mask_shape.npy"
bad "x bad dtype" 1 "bad_dtype.npy" "$X" run "$MHA" --x "$F/bad_dtype.npy" --context "$F/context.npy" --value "$F/value.npy"
bad "int32 mask, wrong shape" 1 "bad_dtype.npy: has shape (2, 4, 9); expected (B, J) = (2, 6)" \
    "$X" run "$MHA" "${INPUTS[@]}" --key-padding-mask "$F/bad_dtype.npy"
bad "missing mask" 1 "nomask.npy" "$X" run "$MHA" "${INPUTS[@]}" --attn-mask "$B/nomask.npy"
bad "mha without heads" 1 "--heads" "$X" run "$F/mha_noheads.safetensors" "${INPUTS[@]}"
bad "heads not dividing" 1 "divisible" "$X" run "$MHA" "${INPUTS[@]}" --heads 2
bad "wrong --module" 1 "mha.safetensors" "$X" run "$MHA" "${INPUTS[@]}" --module attention
bad "out-dir is a file" 1 "file_not_dir" "$X" run "$MHA" "${INPUTS[@]}" --out-dir "$B/file_not_dir"
bad "unknown option" 2 "--bogus" "$X" run "$MHA" "${INPUTS[@]}" --bogus
bad "option without value" 2 "--x" "$X" run "$MHA" --x
bad "repeated option" 2 "--x given twice" "$X" run "$MHA" "${INPUTS[@]}" --x "$F/x.npy"
bad "repeated option with =" 2 "--threads given twice" "$X" run "$MHA" "${INPUTS[@]}" --threads=1 --threads 2
bad "repeated flag" 2 "--causal given twice" "$X" run "$MHA" "${INPUTS[@]}" --causal --causal
bad "compare repeated option" 2 "--tol given twice" "$X" compare "$F/x.npy" "$F/x.npy" --tol 1 --tol 2
bad "bad --threads" 2 "--threads" "$X" run "$MHA" "${INPUTS[@]}" --threads two
bad "bad --module" 2 "--module" "$X" run "$MHA" "${INPUTS[@]}" --module conv
bad "missing --x" 2 "--x" "$X" run "$MHA"
bad "missing model arg" 2 "MODEL" "$X" run --x "$F/x.npy"
bad "inspect truncated" 1 "trunc.safetensors" "$X" inspect "$B/trunc.safetensors"
bad "inspect missing" 1 "missing.safetensors" "$X" inspect "$B/missing.safetensors"
bad "inspect unknown option" 2 "--all" "$X" inspect --all "$MHA"
bad "demo unknown option" 2 "--size" "$X" demo --size 3
bad "demo bad video length" 2 "--video-len" "$X" demo --video-len 0
bad "demo bad audio length" 2 "--audio-len" "$X" demo --audio-len x

# ---- file forgers (bash only) ---------------------------------------------------------------
# le N W: W little-endian bytes of N as printf escapes (N is a signed 64-bit bash integer)
le() {
    local n=$1 w=$2 i s=""
    for ((i = 0; i < w; i++)); do s+=$(printf '\\x%02x' $(((n >> (8 * i)) & 255))); done
    printf '%s' "$s"
}
# rep S N: S repeated N times
rep() {
    local out="" i
    for ((i = 0; i < $2; i++)); do out+=$1; done
    printf '%s' "$out"
}
# mk_npy FILE DICT [DATA]: a version 1.0 .npy file; DATA is printf escapes
mk_npy() {
    { printf '\x93NUMPY\x01\x00'; printf "$(le $((${#2} + 1)) 2)"; printf '%s\n' "$2"; printf "${3:-}"; } >"$1"
}
# mk_st FILE HEADER [DATA]: a safetensors file
mk_st() {
    { printf "$(le ${#2} 8)"; printf '%s' "$2"; printf "${3:-}"; } >"$1"
}
# tiny_attn FILE DATA [PREFIX] [DTYPE] [ESIZE]: a diffusers Attention with query_dim =
# cross_attention_dim = inner = out = 2 and one head; DATA holds its 16 values
tiny_attn() {
    local p=${3:-} t=${4:-F32} e=${5:-4} h="" k=0 name
    for name in to_q.weight to_k.weight to_v.weight to_out.0.weight; do
        h+="\"$p$name\":{\"dtype\":\"$t\",\"shape\":[2,2],\"data_offsets\":[$((k * 4 * e)),$(((k + 1) * 4 * e))]},"
        k=$((k + 1))
    done
    mk_st "$1" "{${h}\"__metadata__\":{\"heads\":\"1\"}}" "$2"
}
HALF='\x00\x00\x00\x3f' NAN='\x00\x00\xc0\x7f' INF='\x00\x00\x80\x7f' NINF='\x00\x00\x80\xff'
ZERO='\x00\x00\x00\x00'
G=$TMP/forged
mkdir -p "$G"
X32="{'descr': '<f4', 'fortran_order': False, 'shape':"
tiny_attn "$G/tiny.safetensors" "$(rep "$HALF" 16)"
mk_npy "$G/xs.npy" "$X32 (3, 2), }" "$(rep "$HALF" 6)"
mk_npy "$G/cs.npy" "$X32 (5, 2), }" "$(rep "$HALF" 10)"
TINY=(--x "$G/xs.npy" --context "$G/cs.npy")
ok "forged tiny model runs" "$X" run "$G/tiny.safetensors" "${TINY[@]}" "${DIFF[@]}"

# compare names the position of the largest difference as an index, not a flat offset
ONE='\x00\x00\x80\x3f'
mk_npy "$G/cmp_a.npy" "$X32 (2, 3, 4), }" "$(rep "$HALF" 24)"
mk_npy "$G/cmp_b.npy" "$X32 (2, 3, 4), }" "$(rep "$HALF" 5)$ONE$(rep "$HALF" 11)$ONE$ZERO$(rep "$HALF" 5)"
bad "compare index" 1 "cmp_a.npy: differs from $G/cmp_b.npy: max error 0.5 > tol 2e-05 at index [1, 1, 2]" \
    "$X" compare "$G/cmp_a.npy" "$G/cmp_b.npy"
if ok "compare index within tol" "$X" compare "$G/cmp_a.npy" "$G/cmp_b.npy" --tol 1; then
    has "compare index printed" "$D.out" "max error 0.5 over 24 values (tol 1) at index [1, 1, 2]: ok"
fi

# ---- NaN policy ----------------------------------------------------------------------------
if ok "help run names --allow-nonfinite" "$X" run --help; then
    has "help --allow-nonfinite" "$D.out" "--allow-nonfinite"
fi
mk_npy "$G/x_nan.npy" "$X32 (2, 4, 9), }" "$(rep "$HALF" 40)$NAN$(rep "$HALF" 31)"
mk_npy "$G/ctx_inf.npy" "$X32 (2, 6, 4), }" "$(rep "$HALF" 47)$INF"
mk_npy "$G/val_ninf.npy" "$X32 (2, 6, 5), }" "$NINF$(rep "$HALF" 59)"
mk_npy "$G/x_f64_big.npy" "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 4, 9), }" \
    "$(rep '\x00\x00\x00\x00\x00\x00\xe0\x3f' 5)\x9c\x75\x00\x88\x3c\xe4\x37\x7e$(rep '\x00\x00\x00\x00\x00\x00\xe0\x3f' 66)"
bad "NaN in x" 1 "x_nan.npy: holds a non-finite value (nan) at index [1, 0, 4]" \
    "$X" run "$MHA" --x "$G/x_nan.npy" --context "$F/context.npy" --value "$F/value.npy"
bad "inf in context" 1 "ctx_inf.npy: holds a non-finite value (inf) at index [1, 5, 3]" \
    "$X" run "$MHA" --x "$F/x.npy" --context "$G/ctx_inf.npy" --value "$F/value.npy"
bad "-inf in value" 1 "val_ninf.npy: holds a non-finite value (-inf) at index [0, 0, 0]" \
    "$X" run "$MHA" --x "$F/x.npy" --context "$F/context.npy" --value "$G/val_ninf.npy"
bad "float64 beyond float32" 1 "x_f64_big.npy: holds a non-finite value (1e+300" \
    "$X" run "$MHA" --x "$G/x_f64_big.npy" --context "$F/context.npy" --value "$F/value.npy"
mk_npy "$G/xs_nan.npy" "$X32 (3, 2), }" "$(rep "$HALF" 5)$NAN"
bad "NaN in rank-2 x" 1 "xs_nan.npy: holds a non-finite value (nan) at index [2, 1]" \
    "$X" run "$G/tiny.safetensors" --x "$G/xs_nan.npy" --context "$G/cs.npy"
"$X" run "$G/tiny.safetensors" "${TINY[@]}" --out-dir "$G/clean" >/dev/null
if ok "--allow-nonfinite passes NaN through" "$X" run "$G/tiny.safetensors" "${DIFF[@]}" --x "$G/xs_nan.npy" \
    --context "$G/cs.npy" --allow-nonfinite --return-attn; then
    # the NaN query row (i = 2) makes that output row NaN: "infinitely far" from a clean run
    if "$X" compare "$D/out.npy" "$G/clean/out.npy" 2>&1 | grep -q "max error inf"; then
        pass
    else
        fail "--allow-nonfinite: out.npy holds no NaN"
    fi
fi
ok "--allow-nonfinite with NaN in x, context, value" "$X" run "$MHA" "${NOZ[@]}" --x "$G/x_nan.npy" \
    --context "$G/ctx_inf.npy" --value "$G/val_ninf.npy" --allow-nonfinite --per-head-attn

tiny_attn "$G/w_nan.safetensors" "$(rep "$HALF" 7)$NAN$(rep "$HALF" 8)"
tiny_attn "$G/w_ninf.safetensors" "$(rep "$HALF" 13)$NINF$(rep "$HALF" 2)"
tiny_attn "$G/w_inf_f16.safetensors" "$(rep '\x00\x38' 10)\x00\x7c$(rep '\x00\x38' 5)" "" F16 2
tiny_attn "$G/w_nan_ctrl.safetensors" "$NAN$(rep "$HALF" 15)" 'blk\n\u001b[2J.'
bad "NaN weight" 1 "w_nan.safetensors: tensor 'to_k.weight' holds a non-finite value (nan) at index [1, 1]" \
    "$X" run "$G/w_nan.safetensors" "${TINY[@]}"
bad "-inf weight" 1 "tensor 'to_out.0.weight' holds a non-finite value (-inf) at index [0, 1]" \
    "$X" run "$G/w_ninf.safetensors" "${TINY[@]}"
bad "inf F16 weight" 1 "tensor 'to_v.weight' holds a non-finite value (inf) at index [1, 0]" \
    "$X" run "$G/w_inf_f16.safetensors" "${TINY[@]}"
bad "NaN weight, control characters in the name" 1 "to_q.weight' holds a non-finite value (nan)" \
    "$X" run "$G/w_nan_ctrl.safetensors" "${TINY[@]}"
ok "--allow-nonfinite passes NaN weights" "$X" run "$G/w_nan.safetensors" "${TINY[@]}" "${DIFF[@]}" --allow-nonfinite

# float masks: -inf marks a masked key (same result as the bool mask), NaN and +inf do not
kpm_hl=$(od -An -tu2 -j8 -N2 "$F/kpm.npy" | tr -d ' ')
kpm_f="" kpm_f16="" kpm_i32="" kpm_nan="" kpm_pinf=""
k=0
for b in $(od -An -tu1 -v -j$((10 + kpm_hl)) "$F/kpm.npy"); do
    if [ "$b" -ne 0 ]; then kpm_f+=$NINF kpm_f16+='\x00\xfc' kpm_i32+='\x03\x00\x00\x00'
    else kpm_f+=$ZERO kpm_f16+='\x00\x00' kpm_i32+=$ZERO; fi
    if [ $k -eq 7 ]; then kpm_nan+=$NAN; else kpm_nan+=$ZERO; fi
    if [ $k -eq 11 ]; then kpm_pinf+=$INF; else kpm_pinf+=$ZERO; fi
    k=$((k + 1))
done
mk_npy "$G/kpm_ninf.npy" "$X32 (2, 6), }" "$kpm_f"
mk_npy "$G/kpm_nan.npy" "$X32 (2, 6), }" "$kpm_nan"
mk_npy "$G/kpm_pinf.npy" "$X32 (2, 6), }" "$kpm_pinf"
if ok "float mask with -inf" "$X" run "$MHA" "${NOZ[@]}" "${INPUTS[@]}" --key-padding-mask "$G/kpm_ninf.npy" \
    --return-attn; then
    same "float -inf mask = bool mask (out)" "$D/out.npy" "$F/expected_out.npy"
    same "float -inf mask = bool mask (attn)" "$D/attn.npy" "$F/expected_attn.npy"
fi
# float16 float masks are accepted too (float16 -inf = 0xfc00)
mk_npy "$G/kpm_ninf_f16.npy" "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 6), }" "$kpm_f16"
if ok "float16 mask with -inf" "$X" run "$MHA" "${NOZ[@]}" "${INPUTS[@]}" --key-padding-mask "$G/kpm_ninf_f16.npy" \
    --return-attn; then
    same "float16 -inf mask = bool mask (out)" "$D/out.npy" "$F/expected_out.npy"
    same "float16 -inf mask = bool mask (attn)" "$D/attn.npy" "$F/expected_attn.npy"
fi
# integer masks are bool masks: nonzero = True (here: masked out, as torch)
mk_npy "$G/kpm_i32.npy" "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 6), }" "$kpm_i32"
if ok "int32 key padding mask" "$X" run "$MHA" "${NOZ[@]}" "${INPUTS[@]}" --key-padding-mask "$G/kpm_i32.npy" \
    --return-attn; then
    same "int32 mask = bool mask (out)" "$D/out.npy" "$F/expected_out.npy"
    same "int32 mask = bool mask (attn)" "$D/attn.npy" "$F/expected_attn.npy"
fi
bad "NaN in a float mask" 1 "kpm_nan.npy: float mask holds nan at index [1, 1]" \
    "$X" run "$MHA" "${INPUTS[@]}" --key-padding-mask "$G/kpm_nan.npy"
bad "+inf in a float mask" 1 "kpm_pinf.npy: float mask holds inf at index [1, 5]" \
    "$X" run "$MHA" "${INPUTS[@]}" --key-padding-mask "$G/kpm_pinf.npy"
ok "--allow-nonfinite passes a NaN mask" "$X" run "$MHA" "${NOZ[@]}" "${INPUTS[@]}" --key-padding-mask \
    "$G/kpm_nan.npy" --allow-nonfinite

# ---- hostile files -------------------------------------------------------------------------
printf "$(le -1 8){}" >"$G/hlen_max.safetensors"
printf "$(le $((1 << 63)) 8){}" >"$G/hlen_2_63.safetensors"
mk_st "$G/huge_shape.safetensors" '{"to_q.weight":{"dtype":"F32","shape":[1000000000000,1000000000000],"data_offsets":[0,16]}}' "$(rep "$ZERO" 4)"
mk_st "$G/off_max.safetensors" '{"to_q.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[9223372036854775791,9223372036854775807]}}' "$(rep "$ZERO" 4)"
mk_st "$G/off_2_53.safetensors" '{"to_q.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[9007199254740976,9007199254740992]}}' "$(rep "$ZERO" 4)"
bomb=$(printf '%*s' 100000 '' | tr ' ' '[')
mk_st "$G/bomb.safetensors" "$bomb"
longname=$(printf '%*s' 200000 '' | tr ' ' 'x')
mk_st "$G/longname.safetensors" "{\"$longname\":{\"dtype\":\"F99\",\"shape\":[1],\"data_offsets\":[0,4]}}" "$ZERO"
mk_st "$G/ctrlname.safetensors" '{"a\nb\r\u001b[2J.to_q.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,17]}}' "$(rep "$ZERO" 4)\x00"
bad "header length 2^64-1" 1 "hlen_max.safetensors: header length 18446744073709551615 past end of file" \
    "$X" run "$G/hlen_max.safetensors" "${INPUTS[@]}"
bad "header length 2^63" 1 "hlen_2_63.safetensors: header length" "$X" run "$G/hlen_2_63.safetensors" "${INPUTS[@]}"
bad "huge shape" 1 "huge_shape.safetensors: tensor 'to_q.weight': shape [1000000000000, 1000000000000] overflows" \
    "$X" run "$G/huge_shape.safetensors" "${INPUTS[@]}"
bad "offsets near INT64_MAX" 1 "off_max.safetensors: tensor 'to_q.weight': data_offsets[0]" \
    "$X" run "$G/off_max.safetensors" "${INPUTS[@]}"
bad "offsets near 2^53" 1 "past end of data" "$X" run "$G/off_2_53.safetensors" "${INPUTS[@]}"
bad "JSON nesting bomb" 1 "bomb.safetensors: header is not valid JSON" "$X" run "$G/bomb.safetensors" "${INPUTS[@]}"
bad "inspect JSON nesting bomb" 1 "bomb.safetensors" "$X" inspect "$G/bomb.safetensors"
bad "200 KB tensor name" 1 "longname.safetensors: tensor 'xxxx" "$X" run "$G/longname.safetensors" "${INPUTS[@]}"
[ "$(wc -c <"$BAD_ERR")" -lt 600 ] && pass || fail "200 KB tensor name: message of $(wc -c <"$BAD_ERR") bytes"
bad "control characters in a tensor name" 1 "hold 17 bytes" "$X" run "$G/ctrlname.safetensors" "${INPUTS[@]}"
tiny_attn "$G/longprefix.safetensors" "$(rep "$HALF" 16)" "$(printf '%*s' 300 '' | tr ' ' 'p')."
bad "prefix of 300 bytes" 1 "longprefix.safetensors: the attention module's tensor names have a prefix longer than 255 bytes" \
    "$X" run "$G/longprefix.safetensors" "${TINY[@]}"
if ok "inspect control characters in names" "$X" inspect "$G/w_nan_ctrl.safetensors"; then
    [ "$(grep -c '^  blk??\[2J\.to_' "$D.out")" -eq 4 ] && pass || fail "inspect: names break lines: $(cat "$D.out")"
fi

mk_npy "$G/n_huge.npy" "$X32 (1000000000000,), }"
mk_npy "$G/n_neg.npy" "$X32 (2, -4, 9), }" "$(rep "$ZERO" 72)"
{ printf '\x93NUMPY\x01\x00\x60\xea'; printf '%s\n' "$X32 (2,), }"; } >"$G/n_hlen.npy"
mk_npy "$G/n_be.npy" "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 4, 9), }" "$(rep "$ZERO" 72)"
mk_npy "$G/n_str.npy" "{'descr': '<U10', 'fortran_order': False, 'shape': (2, 4, 9), }" "$(rep "$ZERO" 720)"
mk_npy "$G/n_obj.npy" "{'descr': '|O', 'fortran_order': False, 'shape': (2, 4, 9), }" "$(rep "$ZERO" 144)"
mk_npy "$G/n_rank1.npy" "$X32 (9,), }" "$(rep "$HALF" 9)"
mk_npy "$G/n_f16.npy" "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 4, 9), }" "$(rep '\x00\x38' 72)"
mk_npy "$G/n_b0.npy" "$X32 (0, 4, 9), }"
mk_npy "$G/n_i0.npy" "$X32 (2, 0, 9), }"
mk_npy "$G/n_w0.npy" "$X32 (2, 4, 0), }"
mk_npy "$G/n_j0.npy" "$X32 (2, 0, 4), }"
mk_npy "$G/n_kpm_f16.npy" "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 6), }" "$(rep '\x00\x00' 12)"
CV=(--context "$F/context.npy" --value "$F/value.npy")
bad "npy shape (10**12,)" 1 "n_huge.npy: truncated: expected 4000000000000 data bytes" "$X" run "$MHA" --x "$G/n_huge.npy" "${CV[@]}"
bad "npy negative dimension" 1 "n_neg.npy: .npy header: negative dimension" "$X" run "$MHA" --x "$G/n_neg.npy" "${CV[@]}"
bad "npy header length past EOF" 1 "n_hlen.npy: .npy header length 60000 past end of file" "$X" run "$MHA" --x "$G/n_hlen.npy" "${CV[@]}"
bad "npy big-endian" 1 "n_be.npy: big-endian" "$X" run "$MHA" --x "$G/n_be.npy" "${CV[@]}"
bad "npy unicode strings" 1 "n_str.npy: dtype '<U10' is not supported" "$X" run "$MHA" --x "$G/n_str.npy" "${CV[@]}"
bad "npy object array" 1 "n_obj.npy: object arrays" "$X" run "$MHA" --x "$G/n_obj.npy" "${CV[@]}"
bad "x of rank 1" 1 "n_rank1.npy: has shape (9,) (rank 1); expected rank 2 to 3" "$X" run "$MHA" --x "$G/n_rank1.npy" "${CV[@]}"
# float16 inputs are read as float32 (exactly): the same values as float16 and as float32
F16V='\x00\x38\x00\xbd\x00\x40\x00\x00\x00\xb6\x00\x43\x00\x2c\x80\xc1'
F32V='\x00\x00\x00\x3f\x00\x00\xa0\xbf\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\xc0\xbe\x00\x00\x60\x40\x00\x00\x80\x3d\x00\x00\x30\xc0'
mk_npy "$G/x_vals_f16.npy" "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 4, 9), }" "$(rep "$F16V" 9)"
mk_npy "$G/x_vals_f32.npy" "$X32 (2, 4, 9), }" "$(rep "$F32V" 9)"
if ok "x float32 values" "$X" run "$MHA" "${NOZ[@]}" --x "$G/x_vals_f32.npy" "${CV[@]}"; then
    d32=$D
    ok "x float16" "$X" run "$MHA" "${NOZ[@]}" --x "$G/x_vals_f16.npy" "${CV[@]}" &&
        same "x float16 = float32 (out)" "$D/out.npy" "$d32/out.npy" 0
fi
same "float16 file = float32 file" "$G/x_vals_f16.npy" "$G/x_vals_f32.npy" 0
mk_npy "$G/x_inf_f16.npy" "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 4, 9), }" \
    "$(rep '\x00\x38' 50)\x00\x7c$(rep '\x00\x38' 21)"
bad "inf in float16 x" 1 "x_inf_f16.npy: holds a non-finite value (inf) at index [1, 1, 5]" \
    "$X" run "$MHA" --x "$G/x_inf_f16.npy" "${CV[@]}"
bad "B = 0" 1 "n_b0.npy: has an empty shape (0, 4, 9)" "$X" run "$MHA" --x "$G/n_b0.npy" "${CV[@]}"
bad "I = 0" 1 "n_i0.npy: has an empty shape (2, 0, 9)" "$X" run "$MHA" --x "$G/n_i0.npy" "${CV[@]}"
bad "width 0" 1 "n_w0.npy: has an empty shape (2, 4, 0)" "$X" run "$MHA" --x "$G/n_w0.npy" "${CV[@]}"
bad "J = 0" 1 "n_j0.npy: has an empty shape (2, 0, 4)" "$X" run "$MHA" --x "$F/x.npy" --context "$G/n_j0.npy" --value "$F/value.npy"
if ok "float16 zero mask" "$X" run "$MHA" "${NOZ[@]}" "${INPUTS[@]}" --key-padding-mask "$G/n_kpm_f16.npy"; then
    d16=$D
    ok "no mask" "$X" run "$MHA" "${NOZ[@]}" "${INPUTS[@]}" && same "float16 zero mask = no mask" "$d16/out.npy" "$D/out.npy" 0
fi

# ---- options -------------------------------------------------------------------------------
bad "--heads 0" 2 "--heads: '0'" "$X" run "$MHA" "${INPUTS[@]}" --heads 0
bad "--heads negative" 2 "--heads: '-3'" "$X" run "$MHA" "${INPUTS[@]}" --heads -3
bad "--heads non-numeric" 2 "--heads: 'three'" "$X" run "$MHA" "${INPUTS[@]}" --heads three
bad "--heads trailing junk" 2 "--heads: '3x'" "$X" run "$MHA" "${INPUTS[@]}" --heads 3x
bad "--heads huge" 2 "--heads" "$X" run "$MHA" "${INPUTS[@]}" --heads 99999999999999999999999
bad "--threads 0" 2 "--threads: '0'" "$X" run "$MHA" "${INPUTS[@]}" --threads 0
bad "--threads=" 2 "--threads" "$X" run "$MHA" "${INPUTS[@]}" --threads=
bad "empty model argument" 2 "empty argument" "$X" run "" "${INPUTS[@]}"

# ---- output directory ----------------------------------------------------------------------
bad "out-dir parent missing" 1 "cannot create the output directory" \
    "$X" run "$MHA" "${INPUTS[@]}" --out-dir "$G/no/such/dir"
[ ! -e "$G/no" ] && pass || fail "out-dir parent missing: created $G/no"
bad "out-dir not writable (/proc/self)" 1 "/proc/self" "$X" run "$MHA" "${INPUTS[@]}" --out-dir /proc/self
mkdir -p "$G/ro"
chmod 555 "$G/ro"
if [ ! -w "$G/ro" ]; then # (root writes anywhere)
    bad "out-dir not writable" 1 "ro: output directory is not writable" \
        "$X" run "$MHA" "${INPUTS[@]}" --out-dir "$G/ro"
fi
chmod 755 "$G/ro"
# a late failure (attn.npy cannot be written) keeps an earlier out.npy and leaves no partial file
mkdir -p "$G/keep/attn.npy"
printf 'earlier result' >"$G/keep/out.npy"
bad "attn.npy not writable" 1 "attn.npy" "$X" run "$MHA" "${INPUTS[@]}" --return-attn --out-dir "$G/keep"
[ "$(cat "$G/keep/out.npy")" = "earlier result" ] && pass || fail "failed run replaced an earlier out.npy"
[ "$(ls -A "$G/keep")" = "attn.npy
out.npy" ] && pass || fail "failed run left files: $(ls -A "$G/keep")"

# ---- bidirectional cross-attention (M2; fixtures by tests/reference/gen_cli_bidir.py) -------
BA=$F/bidir_attn.safetensors
BT=$F/bidir_tr.safetensors
BP=$F/bidir_plain_bf16.safetensors
BIN=(--x "$F/bidir_x.npy" --context "$F/bidir_context.npy")
BMASKS=(--mask "$F/bidir_mask.npy" --context-mask "$F/bidir_context_mask.npy")
PIN=(--x "$F/bidir_plain_x.npy" --context "$F/bidir_plain_context.npy")
if ok "help run describes the bidirectional modules" "$X" run --help; then
    has "help bidir" "$D.out" "BidirectionalCrossAttentionTransformer"
    has "help bidir mask polarity" "$D.out" "True = KEEP"
    has "help mha mask polarity" "$D.out" "bool True = masked out"
fi
if ok "run bidir" "$X" run "$BA" "${BIN[@]}" --out-dir res; then
    same "bidir out" "$D/res/out.npy" "$F/bidir_expected_out.npy"
    same "bidir context_out" "$D/res/context_out.npy" "$F/bidir_expected_context_out.npy"
    [ ! -e "$D/res/attn.npy" ] && [ ! -e "$D/res/context_attn.npy" ] && pass ||
        fail "bidir: attention maps written without --return-attn"
fi
if ok "run bidir masks + rel_pos_bias + maps" "$X" run "$BA" "${BIN[@]}" "${BMASKS[@]}" \
    --rel-pos-bias "$F/bidir_bias.npy" --return-attn --module bidir; then
    for o in out context_out attn context_attn; do
        same "bidir masked $o" "$D/$o.npy" "$F/bidir_expected_masked_$o.npy"
    done
    has "bidir context_attn shape" "$D.out" "context_attn.npy (2, 4, 5, 7)"
    # with talking heads the maps are the head-mixed ones, not one softmax per head
    has "bidir talking-heads attn label" "$D.out" \
        "attn.npy (2, 4, 5, 7) (softmax over j, mixed across heads by talking heads)"
    has "bidir talking-heads context_attn label" "$D.out" \
        "context_attn.npy (2, 4, 5, 7) (softmax over i, mixed across heads by talking heads)"
fi
if ok "run bidir float64 x, 1 thread" "$X" run "$BA" --x "$F/bidir_x_f64.npy" --context \
    "$F/bidir_context.npy" --threads 1; then
    same "bidir out (float64 x)" "$D/out.npy" "$F/bidir_expected_out.npy"
fi
if ok "run bidir rank 2, BF16 weights, 1-D masks, (I, J) bias" "$X" run "$BP" "${PIN[@]}" \
    --mask "$F/bidir_plain_mask.npy" --context-mask "$F/bidir_plain_context_mask.npy" \
    --rel-pos-bias "$F/bidir_plain_bias.npy" --return-attn; then
    for o in out context_out attn context_attn; do
        same "bidir rank-2 $o" "$D/$o.npy" "$F/bidir_plain_expected_$o.npy"
    done
    has "bidir attn label without talking heads" "$D.out" "attn.npy (2, 6, 4) (softmax over j, per head)"
    has "bidir context_attn label without talking heads" "$D.out" \
        "context_attn.npy (2, 6, 4) (softmax over i, per head)"
    has "bidir rank-2 attn shape" "$D.out" "attn.npy (2, 6, 4)"
fi
if ok "run bidir 0.0.x LayerNorm prenorm, F16 weights, --heads" "$X" run \
    "$F/bidir_ln_f16.safetensors" --heads 2 --x "$F/bidir_ln_x.npy" --context "$F/bidir_ln_context.npy"; then
    same "bidir layernorm out" "$D/out.npy" "$F/bidir_ln_expected_out.npy"
    same "bidir layernorm context_out" "$D/context_out.npy" "$F/bidir_ln_expected_context_out.npy"
fi
# --weights: 16-bit weights are read exactly (as stored here: the same outputs as float32),
# bf16 / int8 change them by their rounding; gradients need float32
for w in auto f32 f16; do
    if ok "run F16 file, --weights $w" "$X" run "$F/bidir_ln_f16.safetensors" --heads 2 \
        --x "$F/bidir_ln_x.npy" --context "$F/bidir_ln_context.npy" --weights $w --out-dir "w_$w"; then
        same "--weights $w out" "$D/w_$w/out.npy" "$F/bidir_ln_expected_out.npy"
    fi
done
for w in bf16 int8; do
    if ok "run --weights $w" "$X" run "$F/bidir_ln_f16.safetensors" --heads 2 \
        --x "$F/bidir_ln_x.npy" --context "$F/bidir_ln_context.npy" --weights $w --out-dir "w_$w"; then
        same "--weights $w out (its rounding)" "$D/w_$w/out.npy" "$F/bidir_ln_expected_out.npy" 0.06
    fi
done
if ok "bench F16 weights as stored" "$X" bench "$F/bidir_ln_f16.safetensors" --heads 2 --len 8 --reps 1; then
    has "bench says f16" "$D.out" "weights f16, compute f32]"
fi
if ok "bench --weights int8" "$X" bench "$F/bidir_ln_f16.safetensors" --heads 2 --len 8 --reps 1 --weights int8 --json; then
    has "bench json weights" "$D.out" '"weights": "int8"'
fi
if ok "inspect F32 weights" "$X" inspect "$MHA"; then
    has "inspect says f32" "$D.out" "linear weights   = f32"
fi
if ok "run --compute bf16" "$X" run "$F/bidir_ln_f16.safetensors" --heads 2 \
    --x "$F/bidir_ln_x.npy" --context "$F/bidir_ln_context.npy" --compute bf16 --out-dir c_bf16; then
    same "--compute bf16 out (32 bf16 roundoffs)" "$D/c_bf16/out.npy" "$F/bidir_ln_expected_out.npy" 0.0625
fi
# --kernels: a set the CPU has runs (scalar everywhere); one it lacks, or no such set, is refused
if ok "run --kernels scalar" "$X" run "$F/bidir_ln_f16.safetensors" --heads 2 \
    --x "$F/bidir_ln_x.npy" --context "$F/bidir_ln_context.npy" --kernels scalar --out-dir k_scalar; then
    same "--kernels scalar out" "$D/k_scalar/out.npy" "$F/bidir_ln_expected_out.npy" 2e-5
fi
if ok "bench --kernels scalar" "$X" bench "$F/bidir_ln_f16.safetensors" --heads 2 --len 8 --reps 1 --kernels scalar; then
    has "bench names the set" "$D.out" "[scalar, "
fi
# the sets ranked above this CPU's best (dispatch takes the first it has) are ones it lacks
best=$("$X" --version | sed -n 's/.*(kernels: \([a-z0-9]*\)).*/\1/p')
for k in amx avx512bf16 avx512 avx2; do
    [ "$k" = "$best" ] && break
    bad "run --kernels $k (not on this CPU)" 1 "kernel set '$k' is not available on this CPU or build" "$X" run \
        "$F/bidir_ln_f16.safetensors" --heads 2 --x "$F/bidir_ln_x.npy" --context "$F/bidir_ln_context.npy" --kernels $k
done
bad "run --kernels sse9" 1 "unknown kernel set 'sse9'" "$X" run "$F/bidir_ln_f16.safetensors" \
    --heads 2 --x "$F/bidir_ln_x.npy" --context "$F/bidir_ln_context.npy" --kernels sse9
bad "run --compute fp8" 2 "--compute: 'fp8' is not f32 or bf16" "$X" run "$F/bidir_ln_f16.safetensors" \
    --heads 2 --x "$F/bidir_ln_x.npy" --context "$F/bidir_ln_context.npy" --compute fp8
bad "run --weights int4" 2 "--weights: 'int4' is not auto, f32, bf16, f16 or int8" "$X" run \
    "$F/bidir_ln_f16.safetensors" --heads 2 --x "$F/bidir_ln_x.npy" --context "$F/bidir_ln_context.npy" --weights int4
if ok "run bidir transformer" "$X" run "$BT" "${BIN[@]}" "${BMASKS[@]}" --rel-pos-bias \
    "$F/bidir_tr_bias.npy" --module bidir-transformer --threads 2; then
    same "bidir transformer out" "$D/out.npy" "$F/bidir_tr_expected_out.npy"
    same "bidir transformer context_out" "$D/context_out.npy" "$F/bidir_tr_expected_context_out.npy"
fi
if ok "inspect bidir" "$X" inspect "$BA"; then
    has "inspect bidir" "$D.out" "module: BidirectionalCrossAttention (dim=16, context_dim=12, heads=4 (from talking_heads.weight), dim_head=8, inner_dim=32, prenorm=RMSNorm, talking_heads=True)"
fi
if ok "inspect bidir transformer" "$X" inspect "$BT"; then
    has "inspect bidir transformer" "$D.out" "module: BidirectionalCrossAttentionTransformer (dim=16, context_dim=12, depth=2, heads=2, dim_head=8, inner_dim=16, prenorm=RMSNorm, talking_heads=False, ff_hidden=32, context_ff_hidden=24, final_norms=True (context_norm of size 12))"
fi
if ok "inspect bidir BF16" "$X" inspect "$BP"; then
    has "inspect bidir plain" "$D.out" "heads=2, dim_head=4, inner_dim=8, prenorm=none, talking_heads=False"
    has "inspect bidir BF16" "$D.out" "BF16"
fi
if ok "inspect bidir without heads" "$X" inspect "$F/bidir_ln_f16.safetensors"; then
    has "inspect bidir heads unknown" "$D.out" "heads=? ("
    has "inspect bidir layernorm" "$D.out" "prenorm=LayerNorm (0.0.x)"
fi
if ok "inspect bidir missing tensor" "$X" inspect "$F/bidir_missing.safetensors"; then
    has "inspect bidir missing" "$D.out" "module: unknown (BidirectionalCrossAttention names, but: tensor 'context_to_v.weight' is missing"
fi

bad "bidir x of rank 4" 1 "bad_rank4.npy" "$X" run "$BA" --x "$F/bad_rank4.npy" --context "$F/bidir_context.npy"
bad "bidir x of rank 1" 1 "n_rank1.npy" "$X" run "$BA" --x "$G/n_rank1.npy" --context "$F/bidir_context.npy"
bad "bidir x width vs dim" 1 "bidir_context.npy: last dimension 12 does not match the model's dim 16" \
    "$X" run "$BA" --x "$F/bidir_context.npy" --context "$F/bidir_context.npy"
bad "bidir context width vs context_dim" 1 "bidir_x.npy: last dimension 16 does not match the model's context_dim 12" \
    "$X" run "$BA" --x "$F/bidir_x.npy" --context "$F/bidir_x.npy"
bad "bidir context batch" 1 "bidir_context_b1.npy: batch 1 does not match" \
    "$X" run "$BA" --x "$F/bidir_x.npy" --context "$F/bidir_context_b1.npy"
bad "bidir context rank vs x" 1 "bidir_plain_context.npy: has shape (4, 8) (rank 2)" \
    "$X" run "$BA" --x "$F/bidir_x.npy" --context "$F/bidir_plain_context.npy"
bad "bidir without --context" 1 "--context" "$X" run "$BA" --x "$F/bidir_x.npy"
bad "bidir mask shape" 1 "bidir_bad_mask_shape.npy: has shape (2, 6); --mask needs (B, I) = (2, 5)" \
    "$X" run "$BA" "${BIN[@]}" --mask "$F/bidir_bad_mask_shape.npy"
bad "bidir context mask shape" 1 "bidir_mask.npy: has shape (2, 5); --context-mask needs (B, J) = (2, 7)" \
    "$X" run "$BA" "${BIN[@]}" --context-mask "$F/bidir_mask.npy"
bad "bidir rank-2 mask shape" 1 "--mask needs (I,) = (6,)" \
    "$X" run "$BP" "${PIN[@]}" --mask "$F/bidir_mask.npy"
bad "bidir float mask" 1 "bidir_mask_float.npy: dtype float32 is not supported for --mask: expected bool or integer (True / nonzero = keep)" \
    "$X" run "$BA" "${BIN[@]}" --mask "$F/bidir_mask_float.npy"
# integer masks are bool masks: nonzero = True = keep
C64=''
for b in $(od -An -tu1 -v -j$(($(od -An -tu2 -j8 -N2 "$F/bidir_context_mask.npy" | tr -d ' ') + 10)) \
    "$F/bidir_context_mask.npy"); do
    if [ "$b" -ne 0 ]; then C64+='\xfe\xff\xff\xff\xff\xff\xff\xff'; else C64+="$ZERO$ZERO"; fi
done
mk_npy "$G/bidir_context_mask_i64.npy" "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 7), }" "$C64"
if ok "bidir bool masks" "$X" run "$BA" "${BIN[@]}" "${BMASKS[@]}" --return-attn; then
    dbool=$D
    if ok "bidir uint8 mask, int64 context mask" "$X" run "$BA" "${BIN[@]}" --return-attn \
        --mask "$F/bidir_mask_u8.npy" --context-mask "$G/bidir_context_mask_i64.npy"; then
        for o in out context_out attn context_attn; do
            same "bidir integer masks = bool masks ($o)" "$D/$o.npy" "$dbool/$o.npy" 0
        done
    fi
fi
bad "bidir bias heads" 1 "bidir_bad_bias_heads.npy: has shape (2, 3, 5, 7); expected" \
    "$X" run "$BA" "${BIN[@]}" --rel-pos-bias "$F/bidir_bad_bias_heads.npy"
bad "bidir bias of rank 1" 1 "bidir_bias_rank1.npy: has shape (7,) (rank 1)" \
    "$X" run "$BA" "${BIN[@]}" --rel-pos-bias "$F/bidir_bias_rank1.npy"
bad "bidir bool bias" 1 "bidir_mask.npy: dtype bool is not supported" \
    "$X" run "$BA" "${BIN[@]}" --rel-pos-bias "$F/bidir_mask.npy"
bad "bidir missing mask file" 1 "nomask.npy" "$X" run "$BA" "${BIN[@]}" --mask "$B/nomask.npy"
bad "bidir missing tensor" 1 "bidir_missing.safetensors: tensor 'context_to_v.weight' is missing" \
    "$X" run "$F/bidir_missing.safetensors" "${BIN[@]}"
bad "bidir transformer missing tensor" 1 "tensor 'layers.1.2.3.bias' is missing" \
    "$X" run "$F/bidir_tr_missing.safetensors" "${BIN[@]}"
bad "bidir NaN weight" 1 "bidir_w_nan.safetensors: tensor 'context_to_out.bias' holds a non-finite value (nan) at index [3]" \
    "$X" run "$F/bidir_w_nan.safetensors" "${BIN[@]}"
ok "bidir --allow-nonfinite passes a NaN weight" "$X" run "$F/bidir_w_nan.safetensors" "${BIN[@]}" --allow-nonfinite
mk_npy "$G/bx_nan.npy" "$X32 (2, 5, 16), }" "$(rep "$HALF" 100)$NAN$(rep "$HALF" 59)"
mk_npy "$G/bbias_inf.npy" "$X32 (2, 4, 5, 7), }" "$(rep "$HALF" 279)$NINF"
bad "bidir NaN in x" 1 "bx_nan.npy: holds a non-finite value (nan) at index [1, 1, 4]" \
    "$X" run "$BA" --x "$G/bx_nan.npy" --context "$F/bidir_context.npy"
bad "bidir -inf in rel_pos_bias" 1 "bbias_inf.npy: holds a non-finite value (-inf) at index [1, 3, 4, 6]" \
    "$X" run "$BA" "${BIN[@]}" --rel-pos-bias "$G/bbias_inf.npy"
for o in "--key-padding-mask $F/bidir_mask.npy" "--attn-mask $F/bidir_mask.npy" "--causal" \
    "--value $F/bidir_context.npy" "--per-head-attn"; do
    # shellcheck disable=SC2086
    bad "bidir with ${o%% *}" 1 "${o%% *} is an option of the multi-head modules" "$X" run "$BA" "${BIN[@]}" $o
done
bad "mha with --mask" 1 "--mask is an option of the bidirectional modules" \
    "$X" run "$MHA" "${INPUTS[@]}" --mask "$F/kpm.npy"
bad "mha with --rel-pos-bias" 1 "--rel-pos-bias is an option of the bidirectional modules" \
    "$X" run "$MHA" "${INPUTS[@]}" --rel-pos-bias "$F/attn_mask.npy"
bad "diffusers with --context-mask" 1 "--context-mask is an option of the bidirectional modules" \
    "$X" run "$ATT" --x "$F/attention_x.npy" --context "$F/attention_context.npy" --context-mask "$F/kpm.npy"
bad "bidir transformer --return-attn" 1 "returns no attention maps" "$X" run "$BT" "${BIN[@]}" --return-attn
bad "bidir --module mha" 1 "--module mha, but the tensors are a BidirectionalCrossAttention" \
    "$X" run "$BA" "${BIN[@]}" --module mha
bad "bidir transformer --module bidir" 1 "--module bidir, but the tensors are a BidirectionalCrossAttentionTransformer" \
    "$X" run "$BT" "${BIN[@]}" --module bidir
bad "mha --module bidir" 1 "--module bidir, but the tensors are a torch.nn.MultiheadAttention" \
    "$X" run "$MHA" "${INPUTS[@]}" --module bidir
bad "bidir --heads vs talking heads" 1 "heads argument 3 disagrees with tensor 'talking_heads.weight' of shape (4, 4, 1, 1)" \
    "$X" run "$BA" "${BIN[@]}" --heads 3
bad "bidir --heads not dividing" 1 "inner dim 8 (rows of 'to_qk.weight') is not divisible by heads 3" \
    "$X" run "$BP" "${PIN[@]}" --heads 3
bad "bidir default heads not dividing" 1 "is not divisible by heads 8" \
    "$X" run "$F/bidir_ln_f16.safetensors" --x "$F/bidir_ln_x.npy" --context "$F/bidir_ln_context.npy"
# hostile transformer names: a layer index far beyond the layers present, one too long to parse
tqk() { printf '{"dtype":"F32","shape":[2,2],"data_offsets":[%d,%d]}' $(($1 * 16)) $(($1 * 16 + 16)); }
mk_st "$G/bidir_deep.safetensors" "{\"layers.0.0.to_qk.weight\":$(tqk 0),\"layers.0.1.1.weight\":$(tqk 1),\"layers.99999.0.to_qk.weight\":$(tqk 2)}" "$(rep "$HALF" 12)"
mk_st "$G/bidir_idx.safetensors" "{\"layers.0.0.to_qk.weight\":$(tqk 0),\"layers.0.1.1.weight\":$(tqk 1),\"layers.123456789012345678901234567890.0.to_qk.weight\":$(tqk 2)}" "$(rep "$HALF" 12)"
bad "bidir layer index far away" 1 "tensor 'layers.1.0.to_qk.weight' is missing (the file names layers up to 99999)" \
    "$X" run "$G/bidir_deep.safetensors" "${BIN[@]}"
bad "bidir layer index overflow" 1 "layer index is not a plain integer" \
    "$X" run "$G/bidir_idx.safetensors" "${BIN[@]}"
# a late failure (context_attn.npy cannot be written) writes nothing and keeps earlier results
mkdir -p "$G/bkeep/context_attn.npy"
printf 'earlier result' >"$G/bkeep/out.npy"
bad "bidir context_attn.npy not writable" 1 "context_attn.npy" "$X" run "$BA" "${BIN[@]}" --return-attn --out-dir "$G/bkeep"
[ "$(cat "$G/bkeep/out.npy")" = "earlier result" ] && pass || fail "failed bidir run replaced an earlier out.npy"
[ "$(ls -A "$G/bkeep")" = "context_attn.npy
out.npy" ] && pass || fail "failed bidir run left files: $(ls -A "$G/bkeep")"

# ---- demo (small) ------------------------------------------------------------------------
if ok "demo" "$X" demo --video-len 256 --audio-len 512 --offset 5 --threads 2 --out demo.png; then
    has "demo GFLOP/s" "$D.out" "GFLOP/s"
    has "demo alignment" "$D.out" "100.0% matched within one audio frame"
    has "demo truth" "$D.out" "audio = 2 x video + 5"
    if [ "$(head -c 8 "$D/demo.png" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]; then
        pass
    else
        fail "demo: demo.png is not a PNG"
    fi
fi

# ---- nn.MultiheadAttention(add_bias_kv=True, add_zero_attn=True) --------------------------------
EXTRA=(--x "$F/extra_cli_both_x.npy" --context "$F/extra_cli_both_k.npy" --value "$F/extra_cli_both_v.npy")
if ok "add_bias_kv + add_zero_attn" "$X" run "$F/extra_cli_both.safetensors" "${EXTRA[@]}" \
    --add-zero-attn --return-attn; then
    same "add_zero_attn out" "$D/out.npy" "$F/extra_cli_both_out.npy"
    same "add_zero_attn attn (J + 2 columns)" "$D/attn.npy" "$F/extra_cli_both_attn.npy"
fi
# without the flag the zero key is missing: the result must differ from torch's
if ok "add_bias_kv only" "$X" run "$F/extra_cli_both.safetensors" "${EXTRA[@]}" --add-zero-attn False; then
    if "$X" compare "$D/out.npy" "$F/extra_cli_both_out.npy" >/dev/null 2>&1; then
        fail "without --add-zero-attn the output should differ from torch's"
    else
        pass
    fi
fi

echo "test_cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
