#!/bin/sh
# A packed model more than 4 times larger than a cgroup memory cap (page cache included) generates the
# same ids under the cap as without it, in both I/O modes, without being OOM-killed; with the default
# --io auto it is mapped (silently) when it fits and read with O_DIRECT (expert cache sized from the cap) when not.
BIN=${BUILD:-build}/flashmoe
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
CAP_MIB=128
$BIN synth --like qwen3.5-35b-a3b --layers 4 --set num_experts=64 --set vocab_size=8192 --dense q4 --experts q4 \
    -o "$T/m" 2>/dev/null
size=$(du -sb "$T/m" | cut -f1)
if [ "$size" -ge $((4 * CAP_MIB * 1048576)) ]; then echo "ok model_is_4x_the_cap ($((size >> 20)) MiB vs $CAP_MIB MiB)"
else echo "not ok model_is_4x_the_cap ($((size >> 20)) MiB)"; fi
ARGS="--prompt-ids 1,2,3,4,5,6,7,8 -n 8 --ids --ignore-eos --ctx 64"
want=$($BIN run -m "$T/m" $ARGS --io cache)
got=$($BIN run -m "$T/m" $ARGS 2>"$T/err")
if [ -n "$want" ] && [ "$got" = "$want" ] && [ ! -s "$T/err" ]; then
    echo "ok auto_maps_a_model_that_fits"
else echo "  want '$want', got '$got'"; cat "$T/err"; echo "not ok auto_maps_a_model_that_fits"; fi
got=$(sh tools/run_capped.sh -d $CAP_MIB $BIN run -m "$T/m" $ARGS 2>"$T/err")
rc=$?
peak=$(sed -n 's/.*peak_bytes=\([0-9-]*\).*/\1/p' "$T/err")
if [ $rc -eq 0 ] && [ "$got" = "$want" ] && ! grep -q oom_kills "$T/err" && [ -n "$peak" ] &&
    [ "$peak" -le $((CAP_MIB * 1048576)) ] && grep -q "exceeds the $CAP_MIB MiB available (cgroup.*--io direct, expert cache" "$T/err"; then
    echo "ok auto_reads_direct_under_the_cap (peak $((peak >> 20)) MiB of $CAP_MIB MiB)"
else
    echo "  rc $rc, want '$want', got '$got'"; cat "$T/err"; echo "not ok auto_reads_direct_under_the_cap"
fi
for io in cache direct; do
    got=$(sh tools/run_capped.sh -d $CAP_MIB $BIN run -m "$T/m" $ARGS --io $io --cache-mb 8 2>"$T/err")
    rc=$?
    peak=$(sed -n 's/.*peak_bytes=\([0-9-]*\).*/\1/p' "$T/err")
    if [ $rc -eq 0 ] && [ -n "$want" ] && [ "$got" = "$want" ] && ! grep -q oom_kills "$T/err" &&
        [ -n "$peak" ] && [ "$peak" -le $((CAP_MIB * 1048576)) ]; then
        echo "ok capped_run_$io (peak $((peak >> 20)) MiB of $CAP_MIB MiB)"
    else
        echo "  rc $rc, want '$want', got '$got'"; cat "$T/err"; echo "not ok capped_run_$io"
    fi
done
