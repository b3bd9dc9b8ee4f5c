#!/usr/bin/env bash
# xattn grad against torch.autograd in float64 (tests/reference/gen_cli_grad.py) and xattn
# compare on safetensors: bash tests/test_cli_grad.sh PATH/TO/xattn FIXTURES_DIR
# A vector-Jacobian product (--grad-out) of a bidirectional block with prenorm, talking heads and
# a per-head rel_pos_bias; an MSE loss (--target, --context-target) of a depth-2 transformer with
# a mask; the files written, the loss printed; usage and shape errors on one line.
set -u
export LC_ALL=C
HARNESS_NAME=xattn_cli_grad
. "$(dirname "$0")/cli_harness.sh"

ok "grad vjp" "$X" grad "$F/grad_bca.safetensors" --x "$F/grad_bx.npy" --context "$F/grad_bctx.npy" \
    --rel-pos-bias "$F/grad_bias.npy" --grad-out "$F/grad_dout.npy" --out-dir g &&
    has "grad vjp writes" "$D.out" "wrote g/grads.safetensors (12 parameter gradients)" &&
    same "vjp params" "$D/g/grads.safetensors" "$F/grad_vjp.safetensors" 1e-4 &&
    same "vjp d_x" "$D/g/d_x.npy" "$F/grad_vjp_dx.npy" 1e-4 &&
    same "vjp d_context" "$D/g/d_context.npy" "$F/grad_vjp_dctx.npy" 1e-4 &&
    same "vjp d_rel_pos_bias" "$D/g/d_rel_pos_bias.npy" "$F/grad_vjp_dbias.npy" 1e-4

ok "grad vjp --kernels scalar" "$X" grad "$F/grad_bca.safetensors" --x "$F/grad_bx.npy" \
    --context "$F/grad_bctx.npy" --rel-pos-bias "$F/grad_bias.npy" --grad-out "$F/grad_dout.npy" \
    --kernels scalar --out-dir gs &&
    same "vjp params on the scalar kernels" "$D/gs/grads.safetensors" "$F/grad_vjp.safetensors" 1e-4 &&
    same "vjp d_x on the scalar kernels" "$D/gs/d_x.npy" "$F/grad_vjp_dx.npy" 1e-4
bad "grad --kernels sse9" 1 "unknown kernel set 'sse9'" "$X" grad "$F/grad_bca.safetensors" \
    --x "$F/grad_bx.npy" --context "$F/grad_bctx.npy" --grad-out "$F/grad_dout.npy" --kernels sse9

bad "grad --weights bf16" 2 "--weights bf16: gradients need float32 weights" "$X" grad \
    "$F/grad_bca.safetensors" --x "$F/grad_bx.npy" --context "$F/grad_bctx.npy" \
    --grad-out "$F/grad_dout.npy" --weights bf16

bad "grad --compute bf16" 2 "--compute bf16: gradients are computed in float32" "$X" grad \
    "$F/grad_bca.safetensors" --x "$F/grad_bx.npy" --context "$F/grad_bctx.npy" \
    --grad-out "$F/grad_dout.npy" --compute bf16

ok "grad mse" "$X" grad "$F/grad_tf.safetensors" --x "$F/grad_x.npy" --context "$F/grad_ctx.npy" \
    --mask "$F/grad_mask.npy" --target "$F/grad_t.npy" --context-target "$F/grad_ct.npy" &&
    same "mse params" "$D/grads.safetensors" "$F/grad_mse.safetensors" 1e-4 &&
    same "mse d_x" "$D/d_x.npy" "$F/grad_mse_dx.npy" 1e-4 &&
    same "mse d_context" "$D/d_context.npy" "$F/grad_mse_dctx.npy" 1e-4 &&
    has "mse loss kind" "$D.out" "(F.mse_loss, mean)" &&
    near "mse loss" "$D.out" "loss" "$(cat "$F/grad_mse_loss.txt")" &&
    if [ -e "$D/d_mask.npy" ]; then fail "a mask has no gradient"; else pass; fi

ok "grad help" "$X" grad --help && has "help kinds" "$D.out" "Kinds with a backward: bidir bidir-transformer mha attention mutual joint interlaced multiview hallo-audio bert-decoder conv2d-cross"

B=("$X" grad "$F/grad_tf.safetensors" --x "$F/grad_x.npy" --context "$F/grad_ctx.npy")
bad "no gradient asked" 2 "missing --grad-out G.npy or --target T.npy" "${B[@]}"
bad "both kinds" 2 "not both" "${B[@]}" --grad-out "$F/grad_t.npy" --context-target "$F/grad_ct.npy"
bad "one output twice" 2 "are both about the output 'out'" "${B[@]}" --grad-out "$F/grad_t.npy" --target "$F/grad_t.npy"
bad "unknown output" 2 "has no such output (outputs: out, context_out)" "${B[@]}" --grad-nope "$F/grad_t.npy"
bad "wrong shape" 1 "the output 'out' has shape (2, 5, 16)" "${B[@]}" --grad-out "$F/grad_ctx.npy"
bad "missing file" 1 "nope.npy" "${B[@]}" --target nope.npy

# the other kinds through the same command: both streams of the interlaced decoder, HALLO's
# optional regions output (its gradient needs the output asked for), the BERT decoder's
# memory and masks, and its incremental mode, which has no backward
IL=$FIX/interlaced_cli
ok "interlaced" "$X" grad "$IL/model.safetensors" --first x --x "$IL/x.npy" --context "$IL/context.npy" \
    --grad-out "$IL/expected_out.npy" --grad-context-out "$IL/expected_context_out.npy" --out-dir il &&
    for f in grads.safetensors d_x.npy d_context.npy; do
        if [ -s "$D/il/$f" ]; then pass; else fail "interlaced wrote $f"; fi
    done
HI=(--x "$FIX/hallo_cli_x.npy" --context "$FIX/hallo_cli_audio.npy" --region-masks "$FIX/hallo_cli_masks.npy" --latent-hw 8,6)
bad "hallo regions not asked" 2 "add --regions to compute it" "$X" grad "$FIX/hallo_fullres.safetensors" "${HI[@]}" \
    --grad-regions "$FIX/hallo_cli_regions.npy"
ok "hallo regions" "$X" grad "$FIX/hallo_fullres.safetensors" "${HI[@]}" --regions \
    --grad-out "$FIX/hallo_cli_out.npy" --grad-regions "$FIX/hallo_cli_regions.npy" --out-dir ha &&
    if [ -s "$D/ha/d_hidden_states.npy" ] && [ -s "$D/ha/d_encoder_hidden_states.npy" ] &&
        [ -s "$D/ha/d_region_masks.npy" ]; then pass; else fail "hallo d_hidden_states, d_encoder_hidden_states, d_region_masks"; fi
DC=$FIX/decoder_cli
DI=(--x "$DC/x.npy" --memory "$DC/memory.npy" --attention-mask "$DC/attention_mask.npy" --memory-mask "$DC/memory_mask.npy")
ok "decoder mse" "$X" grad "$DC/model.safetensors" "${DI[@]}" --target "$DC/x.npy" --out-dir de &&
    has "decoder loss" "$D.out" "loss " &&
    if [ -s "$D/de/d_hidden_states.npy" ] && [ -s "$D/de/d_encoder_hidden_states.npy" ]; then pass; else fail "decoder d_hidden_states, d_encoder_hidden_states"; fi
bad "decoder incremental" 1 "has no backward" "$X" grad "$DC/model.safetensors" "${DI[@]}" --incremental \
    --target "$DC/x.npy"

# compare on safetensors
ok "compare same" "$X" compare "$F/grad_vjp.safetensors" "$F/grad_vjp.safetensors" && has "compare lines" "$D.out" "12 tensors: ok"
bad "compare names differ" 1 "is not in" "$X" compare "$F/grad_vjp.safetensors" "$F/grad_mse.safetensors"
bad "compare mixed" 2 "two .npy files or two .safetensors files" "$X" compare "$F/grad_vjp.safetensors" "$F/grad_x.npy"

echo "test_cli_grad: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
