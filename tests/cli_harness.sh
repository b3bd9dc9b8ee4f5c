# Shared by the CLI test scripts (sourced): arguments, a temporary directory, counters and
# the checks ok / bad / same / has. Usage in a script: HARNESS_NAME=name; . cli_harness.sh
if [ $# -ne 2 ]; then
    echo "usage: bash $0 PATH/TO/xattn FIXTURES_DIR" >&2
    exit 2
fi
X=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
FIX=$(cd "$2" && pwd)
F=$FIX/cli
TMP=$(mktemp -d "${TMPDIR:-/tmp}/${HARNESS_NAME:-xattn_cli}.XXXXXX")
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

# warns NAME CMD...: as ok, but stderr holds warnings (lines "xattn CMD: FILE: warning: ...", at
# least one) and nothing else; leaves stderr in $D.err for `has` checks of the warnings.
warns() {
    local name=$1
    shift
    n=$((n + 1))
    D="$TMP/ok$n"
    mkdir -p "$D"
    (cd "$D" && "$@") >"$D.out" 2>"$D.err"
    local rc=$?
    if [ $rc -ne 0 ] || [ ! -s "$D.err" ] || grep -qv '^xattn [a-z-]*: .*: warning: ' "$D.err"; then
        fail "$name: exit $rc, expected warnings only on stderr: $(head -c 400 "$D.err")"
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
    BAD_ERR="$d.err"
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
# near NAME FILE PREFIX REF: FILE has a line "PREFIX <number> ..." with the number within
# 2e-5 (1 + |REF|) of REF (a printed float32 result, whose last digits depend on the kernel set)
near() {
    local got
    got=$(sed -n "s/^$3 \([-+0-9.eE]*\).*/\1/p" "$2" | head -n 1)
    if [ -n "$got" ] && awk -v g="$got" -v r="$4" \
        'BEGIN { d = g - r; if (d < 0) d = -d; a = r < 0 ? -r : r; exit !(d <= 2e-5 * (1 + a)) }'
    then pass; else fail "$1: '$3 $4' (within 2e-5) not in: $(head -c 600 "$2")"; fi
}

has() {
    if grep -qF -- "$3" "$2"; then pass; else fail "$1: '$3' not in: $(head -c 600 "$2")"; fi
}

