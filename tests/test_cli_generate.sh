#!/usr/bin/env bash
# Tests of `xattn generate`: bash tests/test_cli_generate.sh PATH/TO/xattn FIXTURES_DIR
#
# tests/fixtures/generate_cli (tests/reference/gen_generate.py): model.safetensors, a tied
# transformers BertLMHeadModel (is_decoder, add_cross_attention) with a video/audio projector,
# its config.json, a vocab.txt, inputs, and the sequences of transformers' generate
# (expected_<case>.npy) with BertTokenizer.decode(skip_special_tokens=True) of each
# (expected_<case>.txt). tests/fixtures/caption (tests/reference/gen_caption.py): a small
# captioning decoder trained on synthetic video/audio patterns. Bad inputs give one stderr
# line and write nothing.
set -u
export LC_ALL=C

HARNESS_NAME=xattn_cli_generate
. "$(dirname "$0")/cli_harness.sh"

J=$FIX/generate_cli
MOD=$J/model.safetensors
MEM=(--memory "$J/memory.npy" --memory-mask "$J/memory_mask.npy" --prompt "$J/prompt.npy" --max-new-tokens 12)
AV=(--video "$J/video.npy" --audio "$J/audio.npy" --max-new-tokens 12)

# text CASE: the printed texts ("b: TEXT" lines) equal expected_CASE.txt
text() {
    sed -n 's/^[0-9]*: //p' "$D.out" >"$D.txt"
    if cmp -s "$D.txt" "$J/expected_$1.txt"; then pass; else fail "$1 text: $(cat "$D.txt")"; fi
}

if ok "greedy" "$X" generate "$MOD" "${MEM[@]}" --vocab "$J/vocab.txt" --out ids.npy; then
    same "greedy ids" "$D/ids.npy" "$J/expected_greedy.npy"
    has "greedy wrote" "$D.out" "wrote ids.npy (3, 14)"
    text greedy
fi
if ok "greedy --kernels scalar" "$X" generate "$MOD" "${MEM[@]}" --kernels scalar --out ids.npy; then
    same "greedy ids on the scalar kernels" "$D/ids.npy" "$J/expected_greedy.npy"
fi
bad "generate --kernels sse9" 1 "unknown kernel set 'sse9'" "$X" generate "$MOD" "${MEM[@]}" \
    --kernels sse9 --out ids.npy
if ok "beam search" "$X" generate "$MOD" "${MEM[@]}" --num-beams 3 --length-penalty 0.6 \
    --early-stopping true --no-repeat-ngram-size 2 --vocab "$J/vocab.txt" --out ids.npy; then
    same "beam ids" "$D/ids.npy" "$J/expected_beam.npy"
    text beam
fi
if ok "video+audio, config.json" "$X" generate "$MOD" "${AV[@]}" --config "$J/config.json" \
    --vocab "$J/vocab.txt" --out ids.npy --threads 1; then
    same "av ids" "$D/ids.npy" "$J/expected_av.npy"
    text av
fi
if ok "video+audio beams never" "$X" generate "$MOD" "${AV[@]}" --num-beams 4 --length-penalty 1.5 \
    --early-stopping never --vocab "$J/vocab.txt" --threads 2 --out res.npy; then
    same "av beam ids" "$D/res.npy" "$J/expected_av_beam.npy"
    text av_beam
fi
# sampling from the top-1 token is greedy search
if ok "sampling top-k 1" "$X" generate "$MOD" "${MEM[@]}" --do-sample --top-k 1 --seed 3 --out ids.npy; then
    same "top-k 1 ids" "$D/ids.npy" "$J/expected_greedy.npy"
fi
if ok "sampling" "$X" generate "$MOD" "${AV[@]}" --do-sample --top-p 0.9 --temperature 0.8 --seed 7 --out a.npy &&
    (cd "$D" && "$X" generate "$MOD" "${AV[@]}" --do-sample --top-p 0.9 --temperature 0.8 --seed 7 --out b.npy >/dev/null); then
    if cmp -s "$D/a.npy" "$D/b.npy"; then pass; else fail "sampling: the same seed gave other ids"; fi
fi
# a comma-separated prompt is every item's: item 0's prompt gives item 0's sequence
p0=$(od -An -td8 -j128 -N16 "$J/prompt.npy" | awk '{print $1 "," $2}')
if ok "comma prompt" "$X" generate "$MOD" --memory "$J/memory.npy" --memory-mask "$J/memory_mask.npy" \
    --prompt "$p0" --max-new-tokens 12 --vocab "$J/vocab.txt" --out ids.npy; then
    has "comma prompt text" "$D.out" "0: $(head -n 1 "$J/expected_greedy.txt")"
fi
# the model's end token named explicitly changes nothing; none runs every row to the end
eos=$(sed -n 's/.*"eos_token_id": *\([0-9]*\).*/\1/p' "$J/config.json")
if ok "eos given" "$X" generate "$MOD" "${MEM[@]}" --eos-token-id "$eos" --pad-token-id 0 --out ids.npy; then
    same "eos given ids" "$D/ids.npy" "$J/expected_greedy.npy"
fi
ok "eos none" "$X" generate "$MOD" "${MEM[@]}" --eos-token-id none --out ids.npy && has "full length" "$D.out" "(3, 14)"
ok "bos given" "$X" generate "$MOD" "${AV[@]:0:4}" --bos-token-id 4 --max-new-tokens 3 --out ids.npy &&
    has "bos length" "$D.out" "(3, 4)"
ok "default length" "$X" generate "$MOD" "${AV[@]:0:4}" --out ids.npy && has "20 tokens" "$D.out" "(3, 20)"
ok "help" "$X" generate --help && has "help usage" "$D.out" "usage: xattn generate MODEL.safetensors"
ok "listed" "$X" --help && has "listed in --help" "$D.out" "generate "

# ---- errors ----------------------------------------------------------------------------------
bad "missing out" 2 "--out" "$X" generate "$MOD" "${MEM[@]}"
bad "missing memory" 2 "--memory" "$X" generate "$MOD" --out ids.npy
bad "memory and video" 2 "--video" "$X" generate "$MOD" "${MEM[@]}" --video "$J/video.npy" --out ids.npy
bad "sampling and beams" 2 "--do-sample" "$X" generate "$MOD" "${MEM[@]}" --do-sample --num-beams 2 --out ids.npy
bad "sampling and length penalty" 2 "--length-penalty" "$X" generate "$MOD" "${MEM[@]}" --do-sample --length-penalty 2 --out ids.npy
bad "top-k without sampling" 2 "--do-sample" "$X" generate "$MOD" "${MEM[@]}" --top-k 5 --out ids.npy
bad "length penalty without beams" 2 "--num-beams" "$X" generate "$MOD" "${MEM[@]}" --length-penalty 2 --out ids.npy
bad "early stopping value" 2 "--early-stopping" "$X" generate "$MOD" "${MEM[@]}" --num-beams 2 --early-stopping maybe --out ids.npy
bad "top-p range" 2 "--top-p" "$X" generate "$MOD" "${MEM[@]}" --do-sample --top-p 1.5 --out ids.npy
bad "eos ids syntax" 2 "--eos-token-id" "$X" generate "$MOD" "${MEM[@]}" --eos-token-id 1,x --out ids.npy
bad "too many eos ids" 2 "--eos-token-id" "$X" generate "$MOD" "${MEM[@]}" --eos-token-id 1,2,3,4,5,6,7,8,9 --out ids.npy
bad "bos none" 2 "--bos-token-id" "$X" generate "$MOD" "${MEM[@]}" --bos-token-id none --out ids.npy
bad "eos out of range" 1 "eos_token_id 40" "$X" generate "$MOD" "${MEM[@]}" --eos-token-id 40 --out ids.npy
bad "weights value" 2 "--weights" "$X" generate "$MOD" "${MEM[@]}" --weights int4 --out ids.npy
bad "prompt syntax" 2 "--prompt" "$X" generate "$MOD" --memory "$J/memory.npy" --prompt 1,x --out ids.npy
bad "missing model" 1 "nope.safetensors" "$X" generate nope.safetensors "${MEM[@]}" --out ids.npy
bad "missing memory file" 1 "nope.npy" "$X" generate "$MOD" --memory nope.npy --out ids.npy
bad "id out of range" 1 "token id 40" "$X" generate "$MOD" --memory "$J/memory.npy" --prompt 1,40 --out ids.npy
cp "$J/prompt.npy" "$TMP/prompt_bad.npy"
printf '\x63\x00\x00\x00\x00\x00\x00\x00' | dd of="$TMP/prompt_bad.npy" bs=1 seek=136 conv=notrunc 2>/dev/null
bad "npy id out of range" 1 "prompt_bad.npy" "$X" generate "$MOD" --memory "$J/memory.npy" --prompt "$TMP/prompt_bad.npy" --out ids.npy
long=$(printf '1%.0s,' $(seq 32))
bad "prompt longer than positions" 1 "max_position_embeddings" "$X" generate "$MOD" --memory "$J/memory.npy" --prompt "${long%,}" --out ids.npy
bad "prompt and new tokens past positions" 1 "positions" "$X" generate "$MOD" "${MEM[@]:0:6}" --max-new-tokens 31 --out ids.npy
head -n 39 "$J/vocab.txt" >"$TMP/vocab39.txt"
bad "vocab size" 1 "vocab39.txt" "$X" generate "$MOD" "${MEM[@]}" --vocab "$TMP/vocab39.txt" --out ids.npy
sed 's/"hidden_size": 32/"hidden_size": 64/' "$J/config.json" >"$TMP/config.json"
bad "config disagrees" 1 "config.json" "$X" generate "$MOD" "${MEM[@]}" --config "$TMP/config.json" --out ids.npy
bad "memory width" 1 "memory.npy" "$X" generate "$MOD" --memory "$FIX/decoder_cli/memory.npy" --out ids.npy
bad "video width" 1 "audio.npy" "$X" generate "$MOD" --video "$J/audio.npy" --out ids.npy
bad "mask shape" 1 "prompt.npy" "$X" generate "$MOD" --memory "$J/memory.npy" --memory-mask "$J/prompt.npy" --out ids.npy
bad "no projector" 1 "video projector" "$X" generate "$FIX/generate_lm_tied.safetensors" --video "$J/video.npy" --out ids.npy
bad "no head" 1 "prediction head" "$X" generate "$FIX/generate_bert.safetensors" --memory "$J/memory.npy" --out ids.npy
bad "out directory missing" 1 "nodir/ids.npy" "$X" generate "$MOD" "${MEM[@]}" --out nodir/ids.npy

# ---- the captioning example ------------------------------------------------------------------
C=$FIX/caption
if [ -f "$C/model.safetensors" ]; then
    for k in 0 1 2 3; do
        if ok "caption $k" "$X" generate "$C/model.safetensors" --video "$C/video_$k.npy" --audio "$C/audio_$k.npy" \
            --vocab "$C/vocab.txt" --out ids.npy; then
            same "caption $k ids" "$D/ids.npy" "$C/expected_ids_$k.npy"
            has "caption $k text" "$D.out" "0: $(cat "$C/expected_$k.txt")"
        fi
        # the trained captioner says the same with its linear layers in int8
        if ok "caption $k int8" "$X" generate "$C/model.safetensors" --video "$C/video_$k.npy" \
            --audio "$C/audio_$k.npy" --weights int8 --vocab "$C/vocab.txt" --out ids.npy; then
            has "caption $k int8 text" "$D.out" "0: $(cat "$C/expected_$k.txt")"
        fi
    done
    if ok "caption beams" "$X" generate "$C/model.safetensors" --video "$C/video_0.npy" --audio "$C/audio_0.npy" \
        --num-beams 4 --vocab "$C/vocab.txt" --out ids.npy; then
        same "caption beam ids" "$D/ids.npy" "$C/expected_beam_ids_0.npy"
    fi
fi

echo "test_cli_generate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
