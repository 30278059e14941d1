#!/bin/sh
# Prefetch (read the next layer's predicted experts ahead; on by default with --io direct when the cache
# has room) changes only what the expert cache holds:
# ids and logits are identical with and without it, and a failed prefetch read is harmless (the expert
# is read again when asked for) while a failed real read is still reported, naming the file.
BIN=${BUILD:-build}/flashmoe
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
pass() { echo "ok $1"; }
fail() { echo "not ok $1"; }

$BIN convert tests/fixtures/tiny-b-bf16-vl "$T/m" --experts bf16 --quiet || fail convert
RUN="$BIN run -m $T/m --prompt-ids 1,2,3,4 -n 24 --ids --temp 0 --ignore-eos --io direct"

# greedy ids, with a cache too small to hold a layer (every hit comes from prefetch) and a larger one
for mb in 0 1; do
    $RUN --cache-mb $mb --no-prefetch >"$T/ids0" 2>"$T/err0"
    $RUN --cache-mb $mb --prefetch --timing >"$T/ids1" 2>"$T/err1"
    if [ -s "$T/ids0" ] && cmp -s "$T/ids0" "$T/ids1"; then pass prefetch_same_ids_cache_$mb
    else cat "$T/err0" "$T/err1"; fail prefetch_same_ids_cache_$mb; fi
done
# --timing reports the prediction hit rate, and with a cache of 0 the prefetched experts give hits
if grep -q "prefetch: next-layer prediction hit rate" "$T/err1" &&
    ! grep -q "cache hits 0 of" "$T/err1"; then pass prefetch_timing_reports_hit_rate
else cat "$T/err1"; fail prefetch_timing_reports_hit_rate; fi

# the default: prefetch with --io direct when the cache has room for its batch (1 MiB holds this model's
# experts many times over; 0 holds none), never with --no-prefetch
$RUN --cache-mb 1 --timing >"$T/idsd" 2>"$T/errd"
if cmp -s "$T/ids0" "$T/idsd" && grep -q "prefetch: next-layer prediction hit rate" "$T/errd"; then pass prefetch_default_on
else cat "$T/errd"; fail prefetch_default_on; fi
for args in "--cache-mb 0" "--cache-mb 1 --no-prefetch"; do
    $RUN $args --timing >"$T/idsd" 2>"$T/errd"
    if cmp -s "$T/ids0" "$T/idsd" && grep -q "cache hits" "$T/errd" && ! grep -q "prefetch:" "$T/errd"
    then pass "prefetch_off_$(echo $args | tr -d ' -')"; else cat "$T/errd"; fail "prefetch_off_$(echo $args | tr -d ' -')"; fi
done

# logits of every position, one position at a time (prefetch works while decoding: chunks of 1)
LOG="$BIN logits -m $T/m --tokens 1,2,3,4,5,6,7,8,9,10,11,12 --io direct --cache-mb 0 --prefill-chunk 1"
$LOG -o "$T/l0" --no-prefetch && $LOG -o "$T/l1" --prefetch
if [ -s "$T/l0" ] && cmp -s "$T/l0" "$T/l1"; then pass prefetch_same_logits; else fail prefetch_same_logits; fi

# a prefetch read that fails (injected into the prefetch engine alone): a notice naming the file, and the
# same ids, since the real read fetches the expert again
for n in 1 3 7; do
    FLASHMOE_PREFETCH_FAIL_AFTER=$n $RUN --cache-mb 0 --prefetch >"$T/idsf" 2>"$T/errf"
    rc=$?
    if [ $rc -eq 0 ] && cmp -s "$T/ids0" "$T/idsf" && grep -q "prefetch: .*experts-0.*\.bin.*FLASHMOE_PREFETCH_FAIL_AFTER" "$T/errf"
    then pass prefetch_failure_harmless_$n; else echo "  rc $rc"; cat "$T/errf"; fail prefetch_failure_harmless_$n; fi
done

# a real read that fails with --prefetch on: reported cleanly (status 1, the file named), no ids
for n in 2 10 40; do
    FLASHMOE_IO_FAIL_AFTER=$n $RUN --cache-mb 0 --prefetch >"$T/idsf" 2>"$T/errf"
    rc=$?
    if [ $rc -ne 0 ] && [ ! -s "$T/idsf" ] && grep -q "experts-0.*\.bin.*FLASHMOE_IO_FAIL_AFTER" "$T/errf"
    then pass prefetch_real_failure_reported_$n; else echo "  rc $rc"; cat "$T/errf"; fail prefetch_real_failure_reported_$n; fi
done

# --prefetch is for --io direct only: refused with another mode, and --io auto (the default) picks direct
for io in cache mmap; do
    if ! $BIN run -m "$T/m" --prompt-ids 1,2 -n 2 --ids --prefetch --io $io >/dev/null 2>"$T/err" &&
        grep -q "prefetch needs --io direct" "$T/err"; then pass prefetch_needs_direct_$io
    else cat "$T/err"; fail prefetch_needs_direct_$io; fi
done
if $BIN run -m "$T/m" --prompt-ids 1,2 -n 2 --ids --prefetch >/dev/null 2>"$T/err" &&
    grep -q "prefetch wants direct.*--io direct" "$T/err"; then pass prefetch_auto_direct
else cat "$T/err"; fail prefetch_auto_direct; fi
