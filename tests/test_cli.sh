#!/usr/bin/env bash
# Tests of the xattn command-line tool: bash tests/test_cli.sh PATH/TO/xattn FIXTURES_DIR
#
# Runs run / inspect / compare / --help on the fixtures of tests/fixtures/cli (made by
# tests/reference/gen_mha.py) in a temporary directory, compares outputs with `xattn compare`,
# and checks every bad-input case: non-zero exit, exactly one line on stderr naming the file
# (or option) at fault, and nothing written.
set -u

if [ $# -ne 2 ]; then
    echo "usage: bash $0 PATH/TO/xattn FIXTURES_DIR" >&2
    exit 2
fi
X=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
FIX=$(cd "$2" && pwd)
F=$FIX/cli
TMP=$(mktemp -d "${TMPDIR:-/tmp}/xattn_cli.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

passed=0
failed=0
n=0

pass() { passed=$((passed + 1)); }
fail() {
    failed=$((failed + 1))
    echo "FAIL: $1" >&2
}

# ok NAME CMD...: runs CMD in a fresh directory; expects exit 0 and an empty stderr.
# Leaves the directory in $D, stdout in $D.out.
ok() {
    local name=$1
    shift
    n=$((n + 1))
    D="$TMP/ok$n"
    mkdir -p "$D"
    (cd "$D" && "$@") >"$D.out" 2>"$D.err"
    local rc=$?
    if [ $rc -ne 0 ] || [ -s "$D.err" ]; then
        fail "$name: exit $rc, stderr: $(head -c 400 "$D.err")"
        return 1
    fi
    pass
    return 0
}

# bad NAME WANT_RC NEEDLE CMD...: runs CMD in a fresh empty directory (the default output
# directory); expects exit WANT_RC (any non-zero if WANT_RC is 0), exactly one stderr line that
# contains NEEDLE, and the directory still empty.
bad() {
    local name=$1 want=$2 needle=$3
    shift 3
    n=$((n + 1))
    local d="$TMP/bad$n"
    mkdir -p "$d"
    (cd "$d" && "$@") >"$d.out" 2>"$d.err"
    local rc=$?
    local lines
    lines=$(wc -l <"$d.err")
    if [ $rc -eq 0 ]; then
        fail "$name: exit 0, expected failure"
    elif [ "$want" -ne 0 ] && [ $rc -ne "$want" ]; then
        fail "$name: exit $rc, expected $want (stderr: $(cat "$d.err"))"
    elif [ $rc -ge 128 ]; then
        fail "$name: killed by a signal (exit $rc)"
    elif [ "$lines" -ne 1 ]; then
        fail "$name: $lines stderr lines, expected 1: $(cat "$d.err")"
    elif ! grep -qF -- "$needle" "$d.err"; then
        fail "$name: stderr does not name '$needle': $(cat "$d.err")"
    elif ! grep -q '^xattn' "$d.err"; then
        fail "$name: stderr line does not start with 'xattn': $(cat "$d.err")"
    elif [ -n "$(ls -A "$d")" ]; then
        fail "$name: wrote files on failure: $(ls -A "$d")"
    else
        pass
    fi
}

# same NAME GOT REF [TOL]: xattn compare GOT REF exits 0.
same() {
    local out
    if out=$("$X" compare "$2" "$3" --tol "${4:-2e-5}" 2>&1); then
        pass
    else
        fail "$1: $out"
    fi
}

# has NAME FILE TEXT: FILE contains TEXT.
has() {
    if grep -qF -- "$3" "$2"; then pass; else fail "$1: '$3' not in: $(head -c 600 "$2")"; fi
}

MHA=$F/mha.safetensors
ATT=$F/attention.safetensors
INPUTS=(--x "$F/x.npy" --context "$F/context.npy" --value "$F/value.npy")

# ---- help and version --------------------------------------------------------------------
for c in "" run inspect demo compare; do
    if ok "help $c" "$X" $c --help; then has "help $c" "$D.out" "usage: xattn"; fi
done
if ok "help run via 'help'" "$X" help run; then has "help run" "$D.out" "--key-padding-mask"; fi
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
if ok "run mha kpm + attn" "$X" run "$MHA" "${INPUTS[@]}" --key-padding-mask "$F/kpm.npy" \
    --return-attn --out-dir res; then
    same "mha out" "$D/res/out.npy" "$F/expected_out.npy"
    same "mha attn averaged" "$D/res/attn.npy" "$F/expected_attn.npy"
fi
if ok "run mha per-head attn, 1 thread" "$X" run "$MHA" "${INPUTS[@]}" --key-padding-mask \
    "$F/kpm.npy" --per-head-attn --threads 1 --module mha; then
    same "mha out (1 thread)" "$D/out.npy" "$F/expected_out.npy"
    same "mha attn per head" "$D/attn.npy" "$F/expected_attn_per_head.npy"
fi
if ok "run mha float64 x, --heads" "$X" run "$F/mha_noheads.safetensors" --heads 3 \
    --x "$F/x_f64.npy" --context "$F/context.npy" --value "$F/value.npy" \
    --key-padding-mask="$F/kpm.npy"; then
    same "mha out (float64 x)" "$D/out.npy" "$F/expected_out.npy"
    [ ! -e "$D/attn.npy" ] && pass || fail "attn.npy written without --return-attn"
fi
if ok "run mha attn_mask" "$X" run "$MHA" "${INPUTS[@]}" --key-padding-mask "$F/kpm.npy" \
    --attn-mask "$F/attn_mask.npy"; then
    same "mha out (attn_mask)" "$D/out.npy" "$F/expected_out_attn_mask.npy"
fi
if ok "run mha causal" "$X" run "$MHA" "${INPUTS[@]}" --key-padding-mask "$F/kpm.npy" --causal; then
    same "mha out (causal)" "$D/out.npy" "$F/expected_out_causal.npy"
fi

# ---- run: diffusers Attention, one unbatched sequence, default heads -----------------------
if ok "run diffusers rank 2" "$X" run "$ATT" --x "$F/attention_x.npy" --context \
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

bad "missing model" 1 "missing.safetensors" "$X" run "$B/missing.safetensors" "${INPUTS[@]}"
bad "truncated safetensors" 1 "trunc.safetensors" "$X" run "$B/trunc.safetensors" "${INPUTS[@]}"
bad "truncated safetensors data" 1 "trunc_data.safetensors" "$X" run "$B/trunc_data.safetensors" "${INPUTS[@]}"
bad "garbage safetensors" 1 "garbage.safetensors" "$X" run "$B/garbage.safetensors" "${INPUTS[@]}"
bad "model is a .npy" 1 "x.npy" "$X" run "$F/x.npy" "${INPUTS[@]}"
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
bad "mask bad dtype" 1 "bad_dtype.npy" "$X" run "$MHA" "${INPUTS[@]}" --key-padding-mask "$F/bad_dtype.npy"
bad "missing mask" 1 "nomask.npy" "$X" run "$MHA" "${INPUTS[@]}" --attn-mask "$B/nomask.npy"
bad "mha without heads" 1 "--heads" "$X" run "$F/mha_noheads.safetensors" "${INPUTS[@]}"
bad "heads not dividing" 1 "divisible" "$X" run "$MHA" "${INPUTS[@]}" --heads 2
bad "wrong --module" 1 "mha.safetensors" "$X" run "$MHA" "${INPUTS[@]}" --module attention
bad "out-dir is a file" 1 "file_not_dir" "$X" run "$MHA" "${INPUTS[@]}" --out-dir "$B/file_not_dir"
bad "unknown option" 2 "--bogus" "$X" run "$MHA" "${INPUTS[@]}" --bogus
bad "option without value" 2 "--x" "$X" run "$MHA" --x
bad "bad --threads" 2 "--threads" "$X" run "$MHA" "${INPUTS[@]}" --threads two
bad "bad --module" 2 "--module" "$X" run "$MHA" "${INPUTS[@]}" --module conv
bad "missing --x" 2 "--x" "$X" run "$MHA"
bad "missing model arg" 2 "MODEL" "$X" run --x "$F/x.npy"
bad "inspect truncated" 1 "trunc.safetensors" "$X" inspect "$B/trunc.safetensors"
bad "inspect missing" 1 "missing.safetensors" "$X" inspect "$B/missing.safetensors"
bad "inspect unknown option" 2 "--all" "$X" inspect --all "$MHA"
bad "demo unknown option" 2 "--size" "$X" demo --size 3
bad "demo bad len" 2 "--len" "$X" demo --len 0

# ---- demo (small) ------------------------------------------------------------------------
if ok "demo" "$X" demo --len 96 --threads 2 --seed 3; then
    has "demo GFLOP/s" "$D.out" "GFLOP/s"
    has "demo check" "$D.out" "(ok)"
fi

echo "test_cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
