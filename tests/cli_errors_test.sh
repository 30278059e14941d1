#!/bin/sh
# Bad input through the command line: each case must print exactly one line on stderr that names the
# offending file (or option) and the problem, exit non-zero, and not crash (no signal: status < 128).
# Corrupted checkpoints are made from the committed fixtures in a temporary directory.
BIN=${BUILD:-build}/flashmoe
FX=tests/fixtures
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT

# expect NAME PATTERN... -- CMD...: CMD fails cleanly with one stderr line matching every PATTERN
expect() {
    name=$1; shift
    pats=""
    while [ "$1" != "--" ]; do pats="$pats
$1"; shift; done
    shift
    "$@" >"$T/out" 2>"$T/err"
    rc=$?
    lines=$(wc -l <"$T/err")
    ok=1
    if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then ok=0; echo "  $name: exit status $rc"; fi
    if [ "$lines" -ne 1 ]; then ok=0; echo "  $name: $lines lines on stderr:"; cat "$T/err"; fi
    echo "$pats" | while IFS= read -r p; do
        [ -z "$p" ] && continue
        grep -q -- "$p" "$T/err" || { echo "  $name: stderr lacks '$p': $(cat "$T/err")"; exit 1; }
    done || ok=0
    if [ $ok -eq 1 ]; then echo "ok $name"; else echo "not ok $name"; fi
}

# copy of a fixture to corrupt
fresh() { rm -rf "$T/m"; cp -r "$FX/$1" "$T/m"; }
# byte offset of the first occurrence of a string in a file
offset_of() { grep -obUaF -- "$2" "$1" | head -1 | cut -d: -f1; }
# overwrite bytes at the offset of string $2 with string $3 (same length)
patch() {
    off=$(offset_of "$1" "$2")
    printf '%s' "$3" | dd of="$1" bs=1 seek="$off" conv=notrunc status=none
}
LOGITS="logits --tokens 1,2,3 -o $T/logits.bin -m"

fresh tiny-a-f32; rm "$T/m/config.json"
expect missing_config "$T/m/config.json" "cannot open" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32; sed -i 's/"qwen3_5_moe_text"/"llama"/' "$T/m/config.json"
expect unknown_model_type "config.json" "unknown model_type 'llama'" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32; sed -i 's/"head_dim": 32/"head_dim": 8192/' "$T/m/config.json"
expect rope_dim_too_large "config.json" "RoPE dimension 2048" "exceeds 1024" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32; echo '{"model_type": ' >"$T/m/config.json"
expect malformed_config "config.json" "malformed JSON" -- $BIN $LOGITS "$T/m"

fresh tiny-c-f16-sharded; rm "$T/m/model-00002-of-00002.safetensors"
expect missing_shard "model-00002-of-00002.safetensors" "cannot open" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32; rm "$T/m/model.safetensors"
expect no_weights "no model.safetensors" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32; patch "$T/m/model.safetensors" '"model.norm.weight"' '"model.norX.weight"'
expect missing_tensor "model.norm.weight" "not found" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32; sed -i 's/"moe_intermediate_size": 32/"moe_intermediate_size": 33/' "$T/m/config.json"
expect wrong_shape "model.safetensors" "has shape \[32, 64\], expected \[33, 64\]" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32
off=$(offset_of "$T/m/model.safetensors" '"model.layers.0.mlp.gate.weight":{"dtype":"F32"')
printf 'I32' | dd of="$T/m/model.safetensors" bs=1 seek=$((off + 43)) conv=notrunc status=none
expect wrong_dtype "model.safetensors" "mlp.gate.weight' has dtype I32, expected F32, BF16 or F16" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32; truncate -s 800000 "$T/m/model.safetensors"
expect truncated_file "model.safetensors" "truncated" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32; truncate -s 100 "$T/m/model.safetensors"
expect truncated_header "model.safetensors" "truncated: header says" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32; patch "$T/m/model.safetensors" '"model.norm.weight":{' '"model.norm.weight"::'
expect corrupt_header "model.safetensors" "corrupt header" -- $BIN $LOGITS "$T/m"

fresh tiny-a-f32; patch "$T/m/model.safetensors" '"data_offsets":[0,' '"data_offsets":[9,'
expect inconsistent_offsets "model.safetensors" "corrupt header" -- $BIN $LOGITS "$T/m"

expect token_out_of_range "tiny-a-f32" "token id 384 is out of range (vocabulary of 384)" -- \
    $BIN logits -m $FX/tiny-a-f32 --tokens 1,384 -o "$T/logits.bin"
expect prompt_out_of_range "token id 999 is out of range" -- $BIN run -m $FX/tiny-a-f32 --prompt-ids 999 -n 2 --ids
expect bad_token_syntax "--tokens" "bad id" -- $BIN logits -m $FX/tiny-a-f32 --tokens 1,x -o "$T/logits.bin"
expect negative_token "--prompt-ids" "bad id" -- $BIN run -m $FX/tiny-a-f32 --prompt-ids 1,-2 -n 1
expect missing_model_dir "$T/nonexistent/config.json" -- $BIN $LOGITS "$T/nonexistent"
expect unknown_option "unknown option '--bogus'" -- $BIN run -m $FX/tiny-a-f32 --prompt-ids 1 --bogus
expect too_many_experts "exceeds the model's 8 experts" -- $BIN run -m $FX/tiny-a-f32 --prompt-ids 1 --experts-per-token 9
expect unwritable_output "cannot create" -- $BIN logits -m $FX/tiny-a-f32 --tokens 1 -o "$T/no/such/dir/x.bin"

# and the good paths print what scripts rely on
for cmd in run logits; do
    if $BIN $cmd --help | grep -q "usage: flashmoe $cmd"; then echo "ok help_$cmd"; else echo "not ok help_$cmd"; fi
done
