#!/usr/bin/env bash
# Tests of `xattn attn-png`: bash tests/test_cli_png.sh PATH/TO/xattn FIXTURES_DIR
#
# Draws the attention maps of tests/fixtures/cli (expected_attn.npy: (B, I, J) head-averaged
# weights; expected_attn_per_head.npy: (B, H, I, J)) and a few forged .npy files in a temporary
# directory, checks the PNG written (signature, size from the IHDR chunk, no .tmp left), and
# every bad-input case: exit code, exactly one stderr line naming the file or option at fault,
# nothing written. In a build without libpng only the "built without libpng" error is checked.
set -u
export LC_ALL=C

HARNESS_NAME=xattn_cli_png
. "$(dirname "$0")/cli_harness.sh"

# png_size FILE: prints "WIDTH HEIGHT" from the IHDR chunk, or nothing if FILE is no PNG.
png_size() {
    local sig
    sig=$(od -An -tx1 -N8 "$1" 2>/dev/null | tr -d ' \n')
    [ "$sig" = "89504e470d0a1a0a" ] || return 1
    od -An -tu1 -j16 -N8 "$1" | awk '{ print $1*16777216 + $2*65536 + $3*256 + $4, $5*16777216 + $6*65536 + $7*256 + $8 }'
}

# png_ok NAME FILE MINW MAXW MINH MAXH: FILE is a PNG of a size in those bounds, no FILE.tmp.
png_ok() {
    local size w h
    if ! size=$(png_size "$2") || [ -z "$size" ]; then
        fail "$1: $2 is not a PNG"
        return
    fi
    read -r w h <<<"$size"
    if [ "$w" -lt "$3" ] || [ "$w" -gt "$4" ] || [ "$h" -lt "$5" ] || [ "$h" -gt "$6" ]; then
        fail "$1: $2 is $w x $h, expected [$3, $4] x [$5, $6]"
    elif [ -e "$2.tmp" ]; then
        fail "$1: $2.tmp left behind"
    else
        pass
    fi
}

# npy FILE DESCR SHAPE HEXDATA: writes a version 1.0 .npy with a 128-byte header.
npy() {
    local dict="{'descr': '$2', 'fortran_order': False, 'shape': $3, }"
    local pad=$((128 - 10 - ${#dict} - 1))
    {
        printf '\x93NUMPY\x01\x00\x76\x00'
        printf '%s' "$dict"
        printf '%*s' "$pad" ''
        printf '\n'
        printf '%b' "$4"
    } >"$1"
}

AVG=$F/expected_attn.npy           # (2, 4, 6) float32
PER=$F/expected_attn_per_head.npy  # (2, 3, 4, 6) float32

# ---- a build without libpng ----------------------------------------------------------------
"$X" attn-png "$AVG" --out "$TMP/probe.png" >/dev/null 2>"$TMP/probe.err"
if grep -q "without libpng" "$TMP/probe.err"; then
    bad "no libpng" 1 "without libpng" "$X" attn-png "$AVG" --out a.png
    ok "help without libpng" "$X" attn-png --help
    echo "test_cli_png: xattn built without libpng; $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
fi
rm -f "$TMP/probe.png" "$TMP/probe.err"

# ---- help --------------------------------------------------------------------------------
if ok "help" "$X" attn-png --help; then
    has "help usage" "$D.out" "usage: xattn attn-png ATTN.npy --out FILE.png"
    has "help shapes" "$D.out" "(B, H, I, J)"
fi
if ok "help via 'help'" "$X" help attn-png; then has "help via help" "$D.out" "--max-side"; fi
if ok "command list" "$X" --help; then has "command list" "$D.out" "attn-png"; fi
"$X" attn-png --help >"$TMP/help" 2>&1
for o in $(sed -n '/^usage:/,/^$/p' "$TMP/help" | grep -o -- '--[a-z][a-z-]*' | sort -u); do
    if "$X" attn-png "$o" 2>&1 | grep -q "unknown option"; then
        fail "attn-png --help names $o, which attn-png does not accept"
    elif [ "$(grep -c -- "$o" "$TMP/help")" -lt 2 ]; then
        fail "attn-png --help names $o in the synopsis only"
    else
        pass
    fi
done

# ---- pictures ------------------------------------------------------------------------------
# a 4 x 6 map: map area 768 x 512 plus axes, labels and colour bar
if ok "averaged (B, I, J)" "$X" attn-png "$AVG" --out a.png; then
    has "prints the path" "$D.out" "a.png"
    png_ok "averaged (B, I, J)" "$D/a.png" 800 1400 550 900
    [ "$(ls -A "$D")" = "a.png" ] && pass || fail "averaged: extra files: $(ls -A "$D")"
fi
if ok "per head, mean" "$X" attn-png "$PER" --out m.png; then
    png_ok "per head, mean" "$D/m.png" 800 1400 550 900
fi
# the mean over heads of the per-head weights is nn.MultiheadAttention's averaged map: the
# two pictures (same title) are the same bytes
if ok "mean over heads = averaged weights" bash -c "'$X' attn-png '$PER' --batch 1 --title t \
    --out m.png && '$X' attn-png '$AVG' --batch 1 --title t --out a.png"; then
    cmp -s "$D/m.png" "$D/a.png" && pass || fail "mean over heads differs from $AVG (batch 1)"
fi
if ok "per head, --head --batch" "$X" attn-png "$PER" --head 2 --batch 1 --out h.png; then
    png_ok "per head, --head --batch" "$D/h.png" 800 1400 550 900
fi
if ok "--batch on (B, I, J)" "$X" attn-png "$AVG" --batch 1 --out=b.png; then
    png_ok "--batch on (B, I, J)" "$D/b.png" 800 1400 550 900
fi
if ok "--title, --max-side" "$X" attn-png "$AVG" --title "cross-attention, layer 3" \
    --max-side 256 --out s.png; then
    png_ok "--max-side 256" "$D/s.png" 280 600 170 400
fi
if ok "float64 input" "$X" attn-png "$F/x_f64.npy" --out f.png; then
    png_ok "float64 input" "$D/f.png" 800 1400 400 900
fi
if ok "rank 2 input" "$X" attn-png "$F/attention_x.npy" --out r.png; then
    png_ok "rank 2 input" "$D/r.png" 800 1400 128 600
fi
if ok "rank 4, one head" "$X" attn-png "$F/bad_rank4.npy" --out o.png; then
    png_ok "rank 4, one head" "$D/o.png" 800 1600 128 700
fi
B=$TMP/files
mkdir -p "$B"
npy "$B/nan.npy" "<f4" "(2, 2)" '\x00\x00\xc0\x7f\x00\x00\x80\x3f\x00\x00\x00\x00\x00\x00\x00\x3f'
if ok "NaN cells" "$X" attn-png "$B/nan.npy" --out n.png; then
    png_ok "NaN cells" "$D/n.png" 700 1400 700 1000
fi
if ok "writes over an existing file" bash -c "cp '$F/x.npy' a.png && '$X' attn-png '$AVG' --out a.png"; then
    png_ok "writes over an existing file" "$D/a.png" 800 1400 550 900
fi

# ---- bad input -----------------------------------------------------------------------------
npy "$B/rank1.npy" "<f4" "(2,)" '\x00\x00\x80\x3f\x00\x00\x00\x00'
npy "$B/rank5.npy" "<f4" "(1, 1, 1, 1, 2)" '\x00\x00\x80\x3f\x00\x00\x00\x00'
head -c 200 "$PER" >"$B/trunc.npy"
mkdir -p "$B/outdir.png"

bad "--head out of range" 1 "--head 3 is out of range" "$X" attn-png "$PER" --head 3 --out a.png
bad "--head names the shape" 1 "(2, 3, 4, 6)" "$X" attn-png "$PER" --head 7 --out a.png
bad "--head on (B, I, J)" 1 "--head" "$X" attn-png "$AVG" --head 0 --out a.png
bad "--head on (B, I, J) names the shape" 1 "(2, 4, 6)" "$X" attn-png "$AVG" --head 0 --out a.png
bad "--batch out of range" 1 "--batch 2 is out of range" "$X" attn-png "$PER" --batch 2 --out a.png
bad "--batch names the shape" 1 "(2, 4, 6)" "$X" attn-png "$AVG" --batch 5 --out a.png
bad "--batch on (I, J)" 1 "--batch" "$X" attn-png "$F/attention_x.npy" --batch 0 --out a.png
bad "rank 1" 1 "rank1.npy" "$X" attn-png "$B/rank1.npy" --out a.png
bad "rank 5" 1 "rank5.npy" "$X" attn-png "$B/rank5.npy" --out a.png
bad "bool dtype" 1 "attn_mask.npy" "$X" attn-png "$F/attn_mask.npy" --out a.png
bad "int dtype" 1 "bad_dtype.npy" "$X" attn-png "$F/bad_dtype.npy" --out a.png
bad "truncated .npy" 1 "trunc.npy" "$X" attn-png "$B/trunc.npy" --out a.png
bad "missing input" 1 "missing.npy" "$X" attn-png "$B/missing.npy" --out a.png
bad "input is a safetensors" 1 "mha.safetensors" "$X" attn-png "$F/mha.safetensors" --out a.png
bad "output dir missing" 1 "no_such_dir/a.png" "$X" attn-png "$AVG" --out "$B/no_such_dir/a.png"
bad "output is a directory" 1 "outdir.png" "$X" attn-png "$AVG" --out "$B/outdir.png"
[ ! -e "$B/outdir.png.tmp" ] && pass || fail "output is a directory: .tmp left behind"
bad "missing --out" 2 "--out" "$X" attn-png "$AVG"
bad "empty --out" 2 "--out" "$X" attn-png "$AVG" --out ""
bad "no input" 2 "ATTN.npy" "$X" attn-png --out a.png
bad "two inputs" 2 "too many" "$X" attn-png "$AVG" "$PER" --out a.png
bad "negative --head" 2 "--head" "$X" attn-png "$PER" --head -1 --out a.png
bad "bad --batch" 2 "--batch" "$X" attn-png "$PER" --batch x --out a.png
bad "--max-side too small" 2 "--max-side" "$X" attn-png "$AVG" --max-side 10 --out a.png
bad "--max-side too large" 2 "--max-side" "$X" attn-png "$AVG" --max-side 100000 --out a.png
bad "unknown option" 2 "--bogus" "$X" attn-png "$AVG" --out a.png --bogus
bad "--out without value" 2 "--out" "$X" attn-png "$AVG" --out

echo "test_cli_png: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
