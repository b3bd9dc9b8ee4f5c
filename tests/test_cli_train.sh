#!/usr/bin/env bash
# xattn train against PyTorch (tests/reference/gen_train.py: the same 10 steps in float64 with
# torch.optim, clip_grad_norm_ and transformers' cosine schedule): the weights after training and
# the loss of every step, for AdamW and for SGD with Nesterov momentum; checkpoints and --resume
# give the same weights bit for bit as a run that did not stop; the log; the errors.
#   bash tests/test_cli_train.sh PATH/TO/xattn FIXTURES_DIR
set -u
export LC_ALL=C
HARNESS_NAME=xattn_cli_train
. "$(dirname "$0")/cli_harness.sh"

IN=(--x "$F/grad_x.npy" --context "$F/grad_ctx.npy" --mask "$F/grad_mask.npy" --target "$F/grad_t.npy"
    --context-target "$F/grad_ct.npy")
COMMON=(--steps 10 --batch-size 1 --grad-clip 0.5 --schedule cosine --warmup 3)

# losses: every step of LOG.jsonl against one per line of REF, within 1e-5 (1 + |ref|)
losses() {
    if python3 - "$2" "$3" <<'PY'; then pass; else fail "$1: losses differ"; fi
import json, sys
got = [json.loads(l)["loss"] for l in open(sys.argv[1])]
ref = [float(l) for l in open(sys.argv[2])]
assert len(got) == len(ref), (len(got), len(ref))
bad = [(i, g, r) for i, (g, r) in enumerate(zip(got, ref)) if abs(g - r) > 1e-5 * (1 + abs(r))]
assert not bad, bad
PY
}

ok "adamw" "$X" train "$F/grad_tf.safetensors" "${IN[@]}" "${COMMON[@]}" --lr 0.01 --out a.safetensors --log a.jsonl &&
    same "adamw weights" "$D/a.safetensors" "$F/train_adamw.safetensors" 1e-4 &&
    losses "adamw losses" "$D/a.jsonl" "$F/train_adamw_loss.txt" && cp "$D/a.safetensors" "$TMP/trained.safetensors" &&
    has "adamw log fields" "$D/a.jsonl" '{"step": 10, "loss": ' && has "adamw log lr" "$D/a.jsonl" '"lr": ' &&
    has "adamw log norm" "$D/a.jsonl" '"grad_norm": '
ok "sgd" "$X" train "$F/grad_tf.safetensors" "${IN[@]}" "${COMMON[@]}" --optimizer sgd --lr 0.05 --momentum 0.9 \
    --nesterov --weight-decay 0.001 --out s.safetensors --log s.jsonl &&
    same "sgd weights" "$D/s.safetensors" "$F/train_sgd.safetensors" 1e-4 &&
    losses "sgd losses" "$D/s.jsonl" "$F/train_sgd_loss.txt"
ok "trained model runs" "$X" run "$TMP/trained.safetensors" --x "$F/grad_x.npy" --context "$F/grad_ctx.npy"

# a run in two parts equals one run, bit for bit (shuffled mini-batches, schedule, clipping)
R=(--steps 12 --batch-size 1 --shuffle --seed 5 --grad-clip 0.5 --schedule cosine --warmup 2 --lr 0.01 --checkpoint-every 4)
ok "whole run" "$X" train "$F/grad_tf.safetensors" "${IN[@]}" "${R[@]}" --out w.safetensors && cp "$D/w.safetensors" "$TMP/whole.safetensors"
ok "first part" "$X" train "$F/grad_tf.safetensors" "${IN[@]}" "${R[@]}" --out p.safetensors --stop-after 6 &&
    has "first part stops" "$D.out" "6 of 12 steps" && cp "$D/p.ckpt.safetensors" "$TMP/part.ckpt.safetensors"
ok "resumed" "$X" train "$F/grad_tf.safetensors" "${IN[@]}" "${R[@]}" --out p.safetensors --resume "$TMP/part.ckpt.safetensors" &&
    if cmp -s "$D/p.safetensors" "$TMP/whole.safetensors"; then pass; else fail "resumed run differs from the whole run"; fi
bad "resume with other options" 1 "resume with the same options" "$X" train "$F/grad_tf.safetensors" "${IN[@]}" \
    --steps 12 --batch-size 1 --shuffle --seed 6 --grad-clip 0.5 --schedule cosine --warmup 2 --lr 0.01 \
    --checkpoint-every 4 --out q.safetensors --resume "$TMP/part.ckpt.safetensors"
bad "resume a model" 1 "not an xattn train checkpoint" "$X" train "$F/grad_tf.safetensors" "${IN[@]}" "${R[@]}" \
    --out q.safetensors --resume "$F/grad_tf.safetensors"

B=("$X" train "$F/grad_tf.safetensors" "${IN[@]}")
bad "no steps" 2 "missing --steps N" "${B[@]}" --out q.safetensors
bad "train --kernels sse9" 1 "unknown kernel set 'sse9'" "${B[@]}" --steps 2 --out q.safetensors --kernels sse9
ok "train --kernels scalar" "${B[@]}" --steps 2 --out ks.safetensors --kernels scalar &&
    has "train names the set" "$D.out" "[scalar, "
bad "no out" 2 "missing --out" "${B[@]}" --steps 2
bad "bad optimizer" 2 "'adam' is not adamw or sgd" "${B[@]}" --steps 2 --out q.safetensors --optimizer adam
bad "bad lr" 2 "optimizer option 'lr' is \"fast\"" "${B[@]}" --steps 2 --out q.safetensors --lr fast
bad "option of the other optimizer" 2 "adamw has no option 'momentum'" "${B[@]}" --steps 2 --out q.safetensors --momentum 0.9
bad "bad schedule" 2 "not constant or cosine" "${B[@]}" --steps 2 --out q.safetensors --schedule linear
bad "target shape" 1 "the output 'out' has shape (2, 5, 16)" "$X" train "$F/grad_tf.safetensors" --x "$F/grad_x.npy" \
    --context "$F/grad_ctx.npy" --target "$F/grad_ct.npy" --steps 2 --out q.safetensors
IL=$FIX/interlaced_cli
ok "interlaced" "$X" train "$IL/model.safetensors" --first x --x "$IL/x.npy" --context "$IL/context.npy" \
    --target "$IL/expected_out.npy" --context-target "$IL/expected_context_out.npy" --steps 2 --out il.safetensors &&
    has "interlaced steps" "$D.out" "step 2/2" && "$X" run "$D/il.safetensors" --first x --x "$IL/x.npy" --context "$IL/context.npy" --out-dir "$D/ilr" >/dev/null 2>&1 &&
    pass || fail "interlaced: the trained model runs"
ok "help" "$X" train --help && has "help resume" "$D.out" "--resume CKPT"
ok "command list" "$X" --help &&
    if [ "$(grep -c '^  train ' "$D.out")" = 1 ] && [ "$(grep -c '^  grad ' "$D.out")" = 1 ]; then pass; else fail "train and grad listed once each"; fi

# demo --train: a transformer trained from scratch recovers the alignment (exit 0: at least 90%
# of the video frames of unseen pairs attend to their audio frame); its files
ok "demo train" "$X" demo --train --steps 600 --out d.safetensors &&
    has "demo train aligned" "$D.out" "learned alignment: " &&
    has "demo train loss" "$D.out" "step  600  loss" &&
    if [ -s "$D/d.safetensors" ]; then pass; else fail "demo train: no model"; fi &&
    ok "demo model runs" "$X" inspect "$D/d.safetensors"
ok "demo train help" "$X" demo --train --help && has "demo train help" "$D.out" "--attention-png"

echo "test_cli_train: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
