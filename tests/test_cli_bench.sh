#!/usr/bin/env bash
# Tests of `xattn bench`: bash tests/test_cli_bench.sh PATH/TO/xattn FIXTURES_DIR
# Timing output, and the peak memory it reports: the process's own (VmHWM), not the peak that
# Linux carries in ru_maxrss across exec from a large parent.
set -u
export LC_ALL=C
HARNESS_NAME=xattn_cli_bench
. "$(dirname "$0")/cli_harness.sh"
M=$FIX/bidir_basic.safetensors

# peak_rss_mb of a --json line on stdin
rss_of() { sed -n 's/.*"peak_rss_mb": \([0-9.]*\).*/\1/p'; }

if ok "bench json" "$X" bench "$M" --len 16 --reps 2 --threads 1 --json; then
    has "json module" "$D.out" '"module": "BidirectionalCrossAttention"'
    has "json peak source" "$D.out" '"peak_rss_source": "VmHWM"'
fi
if ok "bench text" "$X" bench "$M" --len 16 --context-len 8 --reps 1; then
    has "text timing" "$D.out" "median of 1"
    has "text peak" "$D.out" "peak RSS"
    if grep -q ru_maxrss "$D.out"; then fail "text peak: labelled ru_maxrss with /proc present"; else pass; fi
fi
ok "bench out-dir" "$X" bench "$M" --len 4 --reps 1 --out-dir . && has "out.npy written" <(ls "$D") out.npy

# a parent that holds ~300 MB, then execs xattn bench: the reported peak is xattn's own
big_parent() {
    local big
    big=$(head -c 150000000 /dev/zero | tr '\0' x)
    sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/$BASHPID/status >"$TMP/parent_kb"
    exec "$X" bench "$M" --len 16 --reps 1 --threads 1 --json
}
if [ -r /proc/self/status ]; then
    json=$(big_parent)
    parent_kb=$(cat "$TMP/parent_kb")
    parent_mb=$((${parent_kb:-0} / 1024))
    rss=$(printf '%s\n' "$json" | rss_of)
    if [ "$parent_mb" -lt 200 ]; then
        fail "big parent: only $parent_mb MB, the check below would prove nothing"
    elif [ -z "$rss" ] || [ "${rss%.*}" -ge 100 ]; then
        fail "peak after exec from a $parent_mb MB parent: '$rss' MB (the parent's peak?): $json"
    else
        pass
    fi
fi

bad "bench missing model" 2 "MODEL" "$X" bench
bad "bench repeated option" 2 "--len given twice" "$X" bench "$M" --len 4 --len 8

echo "test_cli_bench: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
