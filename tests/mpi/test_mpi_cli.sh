#!/usr/bin/env bash
# The command line under mpirun (MPI build): xattn run, grad and train on 1 to 4 ranks give the
# files of one process (outputs within 2e-5 (1 + |ref|), gradients and trained weights within
# 1e-4), with lengths not divisible by the rank count and shards of 0 rows; and the faults: a
# refused input, a rank meeting bad data, a rank that dies mid-training (every rank ends within
# seconds, no partial file, the checkpoint resumes to the uninterrupted result).
#   bash tests/mpi/test_mpi_cli.sh build-mpi/xattn
set -u
X=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
MK="python3 $HERE/mknpy.py"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/xattn_mpi_cli.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPI="timeout 120 mpirun --oversubscribe"
passed=0
failed=0
fail() {
    failed=$((failed + 1))
    echo "FAIL: $*" >&2
}
pass() { passed=$((passed + 1)); }
# same A B TOL: xattn compare within TOL
same() {
    if "$X" compare "$1" "$2" --tol "$3" >cmp.out 2>&1; then pass; else fail "$1 vs $2: $(tail -1 cmp.out)"; fi
}

# case NAME "INIT ARGS" "RUN ARGS" OUTPUTS...: one process, then 1..4 ranks (INIT "-": a kind
# without weights, named in RUN ARGS)
case_run() {
    local name=$1 init=$2 args=$3 model=$1.safetensors
    shift 3
    if [ "$init" = - ]; then
        model=
    else
        "$X" init $init --out "$name.safetensors" >/dev/null || { fail "$name: init"; return; }
    fi
    "$X" run $model $args --out-dir "ref_$name" >/dev/null 2>err.txt ||
        { fail "$name: one process: $(cat err.txt)"; return; }
    for np in 1 2 3 4; do
        if ! $MPI -np $np "$X" run $model $args --out-dir "d_${name}_$np" >/dev/null 2>err.txt; then
            fail "$name on $np ranks: $(head -3 err.txt)"
            continue
        fi
        for o in "$@"; do same "d_${name}_$np/$o.npy" "ref_$name/$o.npy" 2e-5; done
    done
}

$MK x.npy f4 2,7,8 1
$MK c.npy f4 2,5,6 2
$MK c8.npy f4 2,5,8 3
$MK xm.npy b1 2,7 4
$MK cm.npy b1 2,5 5
$MK x1.npy f4 1,3,8 6 # 3 rows over 4 ranks: a shard of 0 rows
$MK c1.npy f4 1,2,6 7
$MK xu.npy f4 7,8 8 # one sequence, no batch axis
$MK cu.npy f4 5,6 9

case_run bidir "bidir --dim 8 --context-dim 6 --heads 2 --dim-head 4 --talking-heads true --prenorm true" \
    "--x x.npy --context c.npy --mask xm.npy --context-mask cm.npy" out context_out
case_run bidir_short "bidir --dim 8 --context-dim 6 --heads 2 --dim-head 4" "--x x1.npy --context c1.npy" out context_out
case_run bidir_unbatched "bidir --dim 8 --context-dim 6 --heads 2 --dim-head 4" "--x xu.npy --context cu.npy" out context_out
case_run bidirtf "bidir-transformer --dim 8 --context-dim 8 --depth 2 --heads 2 --dim-head 4 --final-norms true" \
    "--x x.npy --context c8.npy --context-mask cm.npy" out context_out
# rel_pos_bias: each rank reads its x rows of every (I, J) plane
$MK b.npy f4 7,5 31
$MK bh.npy f4 2,2,7,5 32
$MK b1h.npy f4 2,3,2 33 # 3 rows over 4 ranks: a shard of 0 rows
case_run bidir_bias "bidir --dim 8 --context-dim 6 --heads 2 --dim-head 4 --talking-heads true" \
    "--x x.npy --context c.npy --mask xm.npy --rel-pos-bias b.npy" out context_out
case_run bidir_maps "bidir --dim 8 --context-dim 6 --heads 2 --dim-head 4 --talking-heads true --prenorm true" \
    "--x x.npy --context c.npy --mask xm.npy --context-mask cm.npy --rel-pos-bias b.npy --return-attn" \
    out context_out attn context_attn
case_run bidir_maps_short "bidir --dim 8 --context-dim 6 --heads 2 --dim-head 4" \
    "--x x1.npy --context c1.npy --return-attn" out context_out attn context_attn
case_run bidir_bias_short "bidir --dim 8 --context-dim 6 --heads 2 --dim-head 4" \
    "--x x1.npy --context c1.npy --rel-pos-bias b1h.npy" out context_out
case_run bidirtf_bias "bidir-transformer --dim 8 --context-dim 8 --depth 2 --heads 2 --dim-head 4" \
    "--x x.npy --context c8.npy --rel-pos-bias bh.npy" out context_out
case_run mha "mha --embed-dim 8 --num-heads 2 --kdim 6 --vdim 6" "--query x.npy --key c.npy --value c.npy --key-padding-mask cm.npy" out
case_run mha_causal "mha --embed-dim 8 --num-heads 2" "--query x.npy --is-causal" out
# attn_mask: each rank reads its query rows of every (I, J) plane, every key column
$MK am.npy b1 7,5 34
$MK amh.npy f4 4,7,5 36
$MK amself.npy f4 7,7 37
case_run mha_attn_mask "mha --embed-dim 8 --num-heads 2 --kdim 6 --vdim 6" \
    "--query x.npy --key c.npy --value c.npy --key-padding-mask cm.npy --attn-mask am.npy" out
case_run mha_attn_mask_heads "mha --embed-dim 8 --num-heads 2 --kdim 6 --vdim 6" \
    "--query x.npy --key c.npy --value c.npy --attn-mask amh.npy" out
case_run mha_attn_mask_self "mha --embed-dim 8 --num-heads 2" "--query x.npy --attn-mask amself.npy --is-causal" out
# the attention maps (--return-attn): each rank writes its query rows of every key column
case_run mha_maps "mha --embed-dim 8 --num-heads 2 --kdim 6 --vdim 6" \
    "--query x.npy --key c.npy --value c.npy --key-padding-mask cm.npy --attn-mask am.npy --return-attn" out attn
case_run attention_maps "attention --query-dim 8 --cross-attention-dim 6 --heads 2 --dim-head 4" \
    "--hidden-states x.npy --encoder-hidden-states c.npy --attention-mask cm.npy --return-attn" out attention_probs
case_run attention "attention --query-dim 8 --cross-attention-dim 6 --heads 2 --dim-head 4" \
    "--hidden-states x.npy --encoder-hidden-states c.npy --attention-mask cm.npy" out
$MK xb2.npy f4 2,7,8 13
case_run mutual - "--module mutual --a x.npy --b xb2.npy" out
$MK a2.npy f4 6,5 10
case_run mutual2d - "--module mutual --a a2.npy --b a2.npy" out
case_run joint "joint --d-model 8 --nhead 2 --dim-feedforward 12 --num-layers 2" \
    "--x x.npy --context c8.npy --x-padding-mask xm.npy" out context_out
case_run decoder "bert-decoder --hidden-size 8 --num-attention-heads 2 --intermediate-size 12 --num-hidden-layers 2 --encoder-width 6" \
    "--hidden-states x.npy --encoder-hidden-states c.npy --attention-mask xm.npy --encoder-attention-mask cm.npy" out

# gradients: output gradients and MSE targets
$MK g.npy f4 2,7,8 11
$MK gc.npy f4 2,5,6 12
G="--x x.npy --context c.npy --mask xm.npy"
"$X" grad bidir.safetensors $G --grad-out g.npy --grad-context-out gc.npy --out-dir gref >/dev/null
"$X" grad bidir.safetensors $G --target g.npy --context-target gc.npy --out-dir tref >tref.out
# the gradient of rel_pos_bias: each rank writes its rows
GB="--x x.npy --context c.npy --rel-pos-bias bh.npy"
"$X" grad bidir_bias.safetensors $GB --grad-out g.npy --grad-context-out gc.npy --out-dir gbref >/dev/null
for np in 1 2 3 4; do
    $MPI -np $np "$X" grad bidir_bias.safetensors $GB --grad-out g.npy --grad-context-out gc.npy --out-dir gbd$np >/dev/null 2>err.txt ||
        fail "grad with rel_pos_bias on $np ranks: $(head -3 err.txt)"
    for f in d_x.npy d_context.npy d_rel_pos_bias.npy grads.safetensors; do same "gbd$np/$f" "gbref/$f" 1e-4; done
done
# mha's gradients with an attn_mask (each rank its query rows, every key column)
GM="--query x.npy --key c.npy --value c.npy --key-padding-mask cm.npy --attn-mask amh.npy"
"$X" grad mha_attn_mask.safetensors $GM --grad-out xb2.npy --out-dir gmref >/dev/null
for np in 1 2 3 4; do
    $MPI -np $np "$X" grad mha_attn_mask.safetensors $GM --grad-out xb2.npy --out-dir gmd$np >/dev/null 2>err.txt ||
        fail "mha grad with attn_mask on $np ranks: $(head -3 err.txt)"
    for f in d_query.npy d_key.npy d_value.npy grads.safetensors; do same "gmd$np/$f" "gmref/$f" 1e-4; done
done
for np in 2 3 4; do
    $MPI -np $np "$X" grad bidir.safetensors $G --grad-out g.npy --grad-context-out gc.npy --out-dir gd$np >/dev/null 2>&1 ||
        fail "grad on $np ranks"
    for f in d_x.npy d_context.npy grads.safetensors; do same "gd$np/$f" "gref/$f" 1e-4; done
    $MPI -np $np "$X" grad bidir.safetensors $G --target g.npy --context-target gc.npy --out-dir td$np >td.out 2>&1 ||
        fail "grad --target on $np ranks"
    same "td$np/grads.safetensors" tref/grads.safetensors 1e-4
    a=$(grep '^loss' tref.out | cut -d' ' -f2)
    b=$(grep '^loss' td.out | cut -d' ' -f2)
    if python3 -c "import sys; a,b=float('$a'),float('$b'); sys.exit(abs(a-b) > 2e-5*(1+abs(a)))"; then
        pass
    else
        fail "grad loss $b on $np ranks, $a in one process"
    fi
done

# training: data- and sequence-parallel against one process on the same global batch
$MK xb.npy f4 5,7,8 21
$MK cb.npy f4 5,5,6 22
$MK tb.npy f4 5,7,8 23
$MK tcb.npy f4 5,5,6 24
T="train bidir.safetensors --x xb.npy --context cb.npy --target tb.npy --context-target tcb.npy --steps 4 --batch-size 3 --shuffle --grad-clip 1.0"
"$X" $T --out w1.safetensors --log l1.jsonl >/dev/null
for mode in sequence data; do
    for np in 2 4; do
        $MPI -np $np "$X" $T --parallel $mode --out "w_$mode$np.safetensors" --log "l_$mode$np.jsonl" >/dev/null 2>&1 ||
            fail "train --parallel $mode on $np ranks"
        same "w_$mode$np.safetensors" w1.safetensors 1e-4
        if python3 - "l1.jsonl" "l_$mode$np.jsonl" <<'EOF'; then pass; else fail "train --parallel $mode on $np ranks: losses differ"; fi
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
sys.exit(len(a) != len(b) or any(abs(x - y) > 2e-5 * (1 + abs(x)) for x, y in zip(a, b)))
EOF
    done
done

# data-parallel reads: each rank reads only the samples it uses (offset reads): with the whole
# batch in order (B = N = 6) rank r of R reads its share of the 6 samples of each of the four
# files (172 floats per sample), with --batch-size 2 --steps 1 only its sample of the first two
$MK xd.npy f4 6,7,8 41
$MK cd.npy f4 6,5,6 42
$MK td.npy f4 6,7,8 43
$MK tcd.npy f4 6,5,6 44
for spec in "3 6 4" "4 6 4" "3 2 1"; do
    set -- $spec
    np=$1 bs=$2 steps=$3
    TD="train bidir.safetensors --x xd.npy --context cd.npy --target td.npy --context-target tcd.npy --steps $steps --batch-size $bs"
    "$X" $TD --out wd1.safetensors --log ld1.jsonl >/dev/null
    XATTN_TEST_READ_BYTES=1 $MPI -np $np -x XATTN_TEST_READ_BYTES "$X" $TD --parallel data \
        --out "wd$np.safetensors" --log "ld$np.jsonl" >/dev/null 2>reads.txt || fail "train --parallel data ($spec): $(tail -2 reads.txt)"
    same "wd$np.safetensors" wd1.safetensors 1e-4
    if python3 - ld1.jsonl "ld$np.jsonl" <<'EOF'; then pass; else fail "data reads ($spec): losses differ"; fi
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
sys.exit(len(a) != len(b) or any(abs(x - y) > 2e-5 * (1 + abs(x)) for x, y in zip(a, b)))
EOF
    for r in $(seq 0 $((np - 1))); do
        want=$(( (bs * (r + 1) / np - bs * r / np) * 172 * 4 ))
        [ "$want" -eq 0 ] && want=$((172 * 4)) # a rank without samples reads one (no empty shape)
        got=$(sed -n "s/.*rank $r read \([0-9]*\) bytes.*/\1/p" reads.txt)
        if [ "$got" = "$want" ]; then pass; else fail "data reads ($spec): rank $r read '$got' bytes, not $want"; fi
    done
done

# ---- faults ----
# bad_run NAME NEEDLE NP ARGS...: every rank exits non-zero within the timeout, stderr names the
# cause, no output file (nor .part) is left
bad_run() {
    local name=$1 needle=$2 np=$3
    shift 3
    rm -rf out_bad
    local t0=$SECONDS
    $MPI -np "$np" "$X" "$@" --out-dir out_bad >/dev/null 2>err.txt
    local rc=$?
    if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then fail "$name: exit $rc"; return; fi
    if [ $((SECONDS - t0)) -gt 30 ]; then fail "$name: took $((SECONDS - t0)) s"; fi
    if ! grep -q -- "$needle" err.txt; then fail "$name: stderr lacks '$needle': $(head -3 err.txt)"; return; fi
    if [ -e out_bad ] && [ -n "$(ls -A out_bad)" ]; then fail "$name: left $(ls out_bad)"; return; fi
    pass
}
$MK amw.npy b1 7,4 38
bad_run "attn_mask of the wrong width" "dim 1 must be J = 5" 2 run mha.safetensors --query x.npy --key c.npy --value c.npy --attn-mask amw.npy
$MK bw.npy f4 7,4 35
bad_run "rel_pos_bias of the wrong width" "must be J = 5" 2 run bidir.safetensors --x x.npy --context c.npy --rel-pos-bias bw.npy
python3 - <<'EOF'
import struct
d = bytearray(open("x.npy", "rb").read())
off = len(d) - 4 * (2 * 7 * 8) + 4 * ((1 * 7 + 6) * 8 + 3)  # x[1, 6, 3]: rank 3 of 4 reads row 6
d[off:off + 4] = struct.pack("<f", float("nan"))
open("xnan.npy", "wb").write(d)
EOF
bad_run "NaN in rank 3's rows" "rank 3 failed: xnan.npy: holds a non-finite value (nan) at index \[1, 6, 3\]" 4 \
    run bidir.safetensors --x xnan.npy --context c.npy
if [ "$(grep -c 'rank 3' err.txt)" -ge 4 ]; then pass; else fail "NaN: not every rank named rank 3: $(cat err.txt)"; fi
$MK x12.npy f4 2,7,12 14
"$X" init interlaced --embed-dim 12 --depth 1 --num-classes 2 --out il.safetensors >/dev/null
bad_run "a kind that cannot run sharded" "interlaced cannot run sharded" 2 run il.safetensors --x x12.npy --context x12.npy
bad_run "a command that does not run across ranks" "not available under mpirun" 2 bench bidir.safetensors

# out of memory on one rank (the real mechanism: rank 1 runs under `ulimit -v`, mpirun's MPMD
# syntax): at each limit the run either succeeds (the whole output, checked) or every rank exits
# non-zero within 30 s naming rank 1 and the cause, with no output left; the limits are chosen so
# that rank 1 fails while reading its rows, in a projection or in the ring, and at least two of
# them must fail. Not under ASan (its shadow memory needs more address space than any limit).
if ! ldd "$X" 2>/dev/null | grep -q libasan; then
    "$X" init bidir --dim 64 --context-dim 64 --heads 4 --dim-head 16 --out oom.safetensors >/dev/null
    $MK xo.npy f4 2,100000,64 51
    $MK co.npy f4 2,4000,64 52
    oom_failed=0
    for v in 150000 250000 330000 2000000; do
        rm -rf out_oom
        t0=$SECONDS
        timeout 120 mpirun --oversubscribe -np 1 "$X" run oom.safetensors --x xo.npy --context co.npy --out-dir out_oom : \
            -np 1 sh -c "ulimit -v $v; exec '$X' run oom.safetensors --x xo.npy --context co.npy --out-dir out_oom" >/dev/null 2>err.txt
        rc=$?
        if [ $rc -eq 0 ]; then
            if [ -s out_oom/out.npy ] && [ -s out_oom/context_out.npy ]; then pass; else fail "ulimit -v $v: exit 0 without the outputs"; fi
            continue
        fi
        oom_failed=$((oom_failed + 1))
        if [ $rc -eq 124 ] || [ $((SECONDS - t0)) -gt 30 ]; then fail "ulimit -v $v: exit $rc after $((SECONDS - t0)) s"; continue; fi
        if grep -q "rank 0: stopped: rank 1 failed: .*out of memory" err.txt ||
            [ "$(grep -c "rank 1: .*out of memory" err.txt)" -ge 2 ]; then pass; else fail "ulimit -v $v: not every rank names rank 1 and the cause: $(head -3 err.txt)"; fi
        if [ -e out_oom ] && [ -n "$(ls -A out_oom)" ]; then fail "ulimit -v $v: left $(ls out_oom)"; else pass; fi
    done
    if [ "$oom_failed" -ge 2 ]; then pass; else fail "out of memory: only $oom_failed of the limits made rank 1 fail"; fi
fi

# a rank that dies mid-training: the job ends within seconds, the last checkpoint resumes to the
# uninterrupted result
T6="train bidir.safetensors --x xb.npy --context cb.npy --target tb.npy --context-target tcb.npy --steps 6 --batch-size 3 --shuffle"
"$X" $T6 --out full.safetensors >/dev/null
for mode in sequence data; do
    rm -f k.safetensors k.ckpt.safetensors
    t0=$SECONDS
    $MPI -np 3 -x XATTN_TEST_EXIT=1:3 "$X" $T6 --parallel $mode --checkpoint-every 2 --out k.safetensors >/dev/null 2>&1
    rc=$?
    if [ $rc -eq 0 ] || [ $rc -eq 124 ] || [ $((SECONDS - t0)) -gt 30 ]; then
        fail "dead rank ($mode): exit $rc after $((SECONDS - t0)) s"
    elif [ -e k.safetensors ] || [ ! -e k.ckpt.safetensors ]; then
        fail "dead rank ($mode): $(ls k.* 2>&1)"
    else
        pass
    fi
    $MPI -np 3 "$X" $T6 --parallel $mode --checkpoint-every 2 --resume k.ckpt.safetensors --out k.safetensors >/dev/null 2>&1 ||
        fail "resume after a dead rank ($mode)"
    same k.safetensors full.safetensors 1e-4
done

echo "test_mpi_cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
