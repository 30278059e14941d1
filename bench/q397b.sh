#!/bin/sh
# The Qwen3.5-397B-A17B geometry, 4 of its 60 layers (1 attention + 3 delta-net: the model's own ratio),
# experts at q4 and q2, made with flashmoe synth. Per-layer time from `flashmoe run --timing`, decode
# tokens/s from `flashmoe bench`; tokens/s for 60 layers is extrapolated (labelled as such in
# BENCHMARKS.md): t_60 = t_head + 15 x (t_token - t_head). Root (cgroup cap).
#   sh bench/q397b.sh [MODELS_DIR] [OUT_DIR]
set -e
BIN=${BUILD:-build}/flashmoe
D=${1:-/work/models}
OUT=${2:-bench/results}
mkdir -p "$OUT"
for q in q4 q2; do
    M=$D/q397b-l4-$q
    [ -f "$M/flashmoe.json" ] || $BIN synth --like qwen3.5-397b-a17b --layers 4 --experts $q --dense q4 -o "$M"
    f=$OUT/q397b-l4-$q.txt
    echo "== $M: in RAM (--io mmap)" >"$f"
    cat "$M"/* >/dev/null # the whole model in the page cache before the first repetition
    $BIN bench -m "$M" -p 16 -n 32 -r 2 --threads 2 --io mmap 2>/dev/null >>"$f"
    $BIN run -m "$M" --prompt-ids 1,2,3,4 -n 16 --ids --threads 2 --io mmap --timing 2>&1 >/dev/null | tail -8 >>"$f"
    echo "== $M: 4 GiB cap, --io direct --cache-mb 1024" >>"$f"
    $BIN bench -m "$M" -p 16 -n 32 -r 2 --threads 2 --io direct --cache-mb 1024 --cap-mb 4096 2>/dev/null >>"$f"
    sh tools/run_capped.sh 4096 $BIN run -m "$M" --prompt-ids 1,2,3,4 -n 16 --ids --threads 2 --io direct \
        --cache-mb 1024 --timing 2>&1 >/dev/null | tail -9 >>"$f"
    cat "$f"
done
