#!/bin/sh
# The Qwen3.5-35B-A3B geometry at q4 (experts and dense), made with flashmoe synth (about 20 GB), in RAM
# and under a 4 GiB cgroup memory cap (page cache included), cold and warm. Root (cgroups, drop_caches).
#   sh bench/q35b.sh [MODEL_DIR] [OUT_DIR]
set -e
BIN=${BUILD:-build}/flashmoe
M=${1:-/work/models/q35b-q4}
OUT=${2:-bench/results}
mkdir -p "$OUT"
[ -f "$M/flashmoe.json" ] || $BIN synth --like qwen3.5-35b-a3b --experts q4 --dense q4 -o "$M"
run() { name=$1; shift; echo "== $name: flashmoe bench -m $M $*" | tee "$OUT/$name.txt"; $BIN bench -m "$M" "$@" 2>/dev/null | tee -a "$OUT/$name.txt"; }
cat "$M"/* >/dev/null # in RAM: the whole model in the page cache before the first repetition
run q35b-q4-ram-mmap -p 512 -n 64 -r 3 --threads 2 --io mmap
sync; echo 3 >/proc/sys/vm/drop_caches
run q35b-q4-cap4g-direct-cold -p 512 -n 32 -r 2 --threads 2 --io direct --cache-mb 2048 --cap-mb 4096 --cold
run q35b-q4-cap4g-direct-warm -p 512 -n 32 -r 2 --threads 2 --io direct --cache-mb 2048 --cap-mb 4096
run q35b-q4-cap4g-cache-warm -p 32 -n 32 -r 2 --threads 2 --io cache --cap-mb 4096
