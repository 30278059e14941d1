#!/usr/bin/env bash
# Encoding speed of the tokenizer on English text, on one core: CPU time of
# `flashmoe tokenize -t build/qwen3-tokenizer/tokenizer.json -f TEXT` minus that of an empty file
# (which is the time to load the tokenizer), best of three runs each. The CPU time (user + sys)
# does not count time lost to other processes on a shared machine; the ids are printed to
# /dev/null, so their formatting is included.
#
#   bench/tokenizer.sh [TEXT_FILE]
# Without TEXT_FILE: up to 16 MB of Debian's licence texts and package copyright files
# (/usr/share/common-licenses, /usr/share/doc/*/copyright), English prose that every Debian system has.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
bin=$BUILD/flashmoe
tok=build/qwen3-tokenizer/tokenizer.json
[ -x "$bin" ] || { echo "bench/tokenizer.sh: $bin is missing (make BUILD=$BUILD)" >&2; exit 1; }
sh tools/fetch_qwen3_tokenizer.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

text=${1:-}
if [ -z "$text" ]; then
    text=$tmp/english.txt
    { cat /usr/share/common-licenses/* /usr/share/doc/*/copyright 2>/dev/null || true; } | head -c 16000000 >"$text"
fi
: >"$tmp/empty.txt"

# best_cpu FILE: the lowest user+sys seconds of three runs
best_cpu() {
    local best=
    for _ in 1 2 3; do
        local t
        t=$( { TIMEFORMAT='%3U %3S'; time "$bin" tokenize -t "$tok" -f "$1" >/dev/null; } 2>&1 | awk '{ print $1 + $2 }')
        best=$(awk -v a="$t" -v b="${best:-$t}" 'BEGIN { print (a < b ? a : b) }')
    done
    echo "$best"
}

bytes=$(wc -c <"$text")
tokens=$("$bin" tokenize -t "$tok" -f "$text" | wc -w)
load=$(best_cpu "$tmp/empty.txt")
total=$(best_cpu "$text")
awk -v b="$bytes" -v n="$tokens" -v l="$load" -v t="$total" 'BEGIN {
    e = t - l
    printf "tokenizer: %d bytes -> %d tokens; load %.2f s, encode %.2f s CPU: %.1f MB/s\n", b, n, l, e, b / e / 1e6
}'
