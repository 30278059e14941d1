#!/bin/sh
# flashmoe convert and running packed directories: exactness against the HF directory, quantized
# experts against transformers' greedy ids, and every way a packed directory can be broken.
BIN=${BUILD:-build}/flashmoe
FX=tests/fixtures
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
pass() { echo "ok $1"; }
fail() { echo "not ok $1"; }
json_ids() { tr -d ' \n' <"$1" | sed -n "s/.*\"$2\":\[\([0-9,]*\)\].*/\1/p"; }

# bf16 experts and bf16 dense from a bf16 checkpoint: the same weights, so bit-identical logits
B=$FX/tiny-b-bf16-vl
P=$(json_ids $B/ref/ref.json prompt_ids)
$BIN convert $B "$T/b16" --experts bf16 --quiet
$BIN logits -m $B --tokens "$P" -o "$T/hf.f32" && $BIN logits -m "$T/b16" --tokens "$P" -o "$T/packed.f32"
if cmp -s "$T/hf.f32" "$T/packed.f32"; then pass convert_bf16_logits_identical; else fail convert_bf16_logits_identical; fi
for io in cache direct mmap; do
    $BIN logits -m "$T/b16" --tokens "$P" -o "$T/io.f32" --io $io --cache-mb 1
    if cmp -s "$T/hf.f32" "$T/io.f32"; then pass packed_io_$io; else fail packed_io_$io; fi
done

# q8 experts: greedy ids identical to transformers' on the bf16 fixture (dense weights unchanged, only the
# experts quantized). On the f32 fixture the bf16 conversion of the dense weights alone already moves the
# greedy path after 15 tokens (random weights make the path chaotic); its q8 quality is measured with
# flashmoe perplexity --kld instead.
for f in tiny-b-bf16-vl; do
    P=$(json_ids $FX/$f/ref/ref.json prompt_ids); G=$(json_ids $FX/$f/ref/ref.json greedy_ids | tr , ' ')
    $BIN convert $FX/$f "$T/$f-q8" --experts q8 --group 32 --quiet
    got=$($BIN run -m "$T/$f-q8" --prompt-ids "$P" -n 24 --temp 0 --ids --ignore-eos)
    if [ "$got" = "$G" ]; then pass "q8_experts_greedy_$f"; else echo "  want $G"; echo "  got  $got"; fail "q8_experts_greedy_$f"; fi
done

# q8 dense + q4 experts still runs end to end (quality is measured by flashmoe perplexity, not here)
$BIN convert $FX/tiny-a-f32 "$T/a-q4" --experts q4 --dense q8 --group 32 --quiet
if $BIN run -m "$T/a-q4" --prompt-ids 1,2,3 -n 8 --ids >"$T/out" && [ "$(wc -w <"$T/out")" -ge 1 ]; then
    pass q4_experts_q8_dense_runs; else fail q4_experts_q8_dense_runs; fi

# shapes that do not divide into groups stay bf16, and the converter says so
$BIN convert $FX/tiny-c-f16-sharded "$T/c" --experts q4 --group 32 2>"$T/err" >/dev/null
if grep -q "kept in bf16" "$T/err" && grep -q '"dtype":	"bf16"' "$T/c/flashmoe.json"; then pass indivisible_stays_bf16
else fail indivisible_stays_bf16; fi

# no overwrite without --force
if ! $BIN convert $FX/tiny-a-f32 "$T/a-q4" --quiet 2>"$T/err" && grep -q "already exists (use --force" "$T/err"
then pass refuses_overwrite; else fail refuses_overwrite; fi
if $BIN convert $FX/tiny-a-f32 "$T/a-q4" --force --quiet; then pass force_overwrites; else fail force_overwrites; fi

# broken packed directories: one line naming the file, non-zero exit, no ids printed
broken() {
    name=$1; pat=$2; shift 2
    $BIN run -m "$T/x" --prompt-ids 1,2,3 -n 4 --ids "$@" >"$T/out" 2>"$T/err"
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q -- "$pat" "$T/err" &&
        [ ! -s "$T/out" ]; then pass "$name"; else echo "  rc $rc: $(cat "$T/err")"; fail "$name"; fi
}
fresh() { rm -rf "$T/x"; cp -r "$T/b16" "$T/x"; }
fresh; truncate -s 20000 "$T/x/experts-002.bin"; broken truncated_expert_file "experts-002.bin: truncated"
fresh; printf 'XXXXXXXX' | dd of="$T/x/experts-001.bin" bs=1 conv=notrunc status=none
broken wrong_magic "experts-001.bin: not a flashmoe expert file"
fresh; printf '\011' | dd of="$T/x/experts-001.bin" bs=1 seek=8 conv=notrunc status=none
broken wrong_version "experts-001.bin: expert file version 9"
fresh; sed -i 's/"n_experts":	10/"n_experts":	11/' "$T/x/flashmoe.json"
broken manifest_disagrees "experts-000.bin: header disagrees with flashmoe.json"
fresh; sed -i 's/"version":	1/"version":	2/' "$T/x/flashmoe.json"
broken manifest_version "flashmoe.json: manifest version 2"
fresh; rm "$T/x/experts-004.bin"; broken missing_expert_file "experts-004.bin: cannot open"
fresh; FLASHMOE_IO_FAIL_AFTER=3 broken injected_read_failure "experts-00.*.bin" --io cache
fresh; FLASHMOE_IO_FAIL_AFTER=3 broken injected_read_failure_direct "experts-00.*.bin" --io direct
