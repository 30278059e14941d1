#!/bin/sh
# flashmoe convert on MLX (mlx-community) checkpoints through the command line. The checkpoints are
# synthetic, written by the C test binary (test_convert_mlx --write-fixture DIR KIND) from tiny-a-f32:
# DIR/mlx is the MLX checkpoint, DIR/ref an HF checkpoint holding exactly the values it stands for.
BIN=${BUILD:-build}/flashmoe
GEN=${BUILD:-build}/tests/test_convert_mlx
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
pass() { echo "ok $1"; }
fail() { echo "not ok $1"; }
TOK=5,17,200,33,90,1,250,64,7,300,12,45

# FIXTURE KIND
fixture() { "$GEN" --write-fixture "$T/$1" "$1" >/dev/null 2>&1 || { echo "  cannot write fixture $1"; return 1; }; }

# same_logits NAME DIR: scalar kernels read q * scale + bias exactly as the reference stores it
same_logits() {
    FLASHMOE_KERNELS=scalar $BIN logits -m "$2" --tokens $TOK -o "$T/a.f32" &&
        FLASHMOE_KERNELS=scalar $BIN logits -m "$3" --tokens $TOK -o "$T/b.f32" && cmp -s "$T/a.f32" "$T/b.f32"
}

# 4-bit MLX at its own bits and group: a progress summary and the MLX line, logits identical to the
# dequantized reference, and it generates
if fixture q4; then
    if $BIN convert "$T/q4/mlx" "$T/p4" --experts q4 --dense q4 --group 32 2>"$T/err" &&
        grep -q "MLX checkpoint, 4-bit experts; conv1d in MLX \[C, K, 1\] layout" "$T/err" &&
        grep -q "layer 4/4" "$T/err"; then pass mlx_q4_converts; else cat "$T/err"; fail mlx_q4_converts; fi
    if same_logits x "$T/p4" "$T/q4/ref"; then pass mlx_q4_logits_identical; else fail mlx_q4_logits_identical; fi
    if $BIN run -m "$T/p4" --prompt-ids 1,2,3 -n 8 --temp 0 --ids >"$T/out" && [ "$(wc -w <"$T/out")" -eq 8 ]
    then pass mlx_q4_runs; else fail mlx_q4_runs; fi
    # requantized to 2 bits: converts and runs
    if $BIN convert "$T/q4/mlx" "$T/p2" --experts q2 --dense q4 --group 32 --quiet &&
        $BIN run -m "$T/p2" --prompt-ids 1,2,3 -n 8 --temp 0 --ids >"$T/out" && [ "$(wc -w <"$T/out")" -eq 8 ]
    then pass mlx_q4_to_q2_runs; else fail mlx_q4_to_q2_runs; fi
    # the engine refuses the MLX directory itself, saying what to do
    $BIN run -m "$T/q4/mlx" --prompt-ids 1,2,3 -n 2 --ids >/dev/null 2>"$T/err"
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q "MLX checkpoint.*flashmoe convert" "$T/err"
    then pass engine_refuses_mlx_dir; else cat "$T/err"; fail engine_refuses_mlx_dir; fi
fi

# 6-bit MLX to q8 at the same group: the same codes, so again identical logits
if fixture q6; then
    if $BIN convert "$T/q6/mlx" "$T/p6" --experts q8 --dense q8 --group 32 --quiet && same_logits x "$T/p6" "$T/q6/ref"
    then pass mlx_q6_to_q8_logits_identical; else fail mlx_q6_to_q8_logits_identical; fi
fi

# bad input: one line on stderr naming the file and the tensor, exit status 1, no manifest
bad() {
    name=$1; file=$2; pat=$3
    fixture "$name" || { fail "bad_$name"; return; }
    $BIN convert "$T/$name/mlx" "$T/$name/out" --experts q4 --dense q4 --group 32 >"$T/out" 2>"$T/err"
    rc=$?
    if [ $rc -eq 1 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q "$file" "$T/err" && grep -q -- "$pat" "$T/err" &&
        [ ! -e "$T/$name/out/flashmoe.json" ]; then pass "bad_$name"; else echo "  rc $rc: $(cat "$T/err")"; fail "bad_$name"; fi
}
bad missing-scales "mlx/model.safetensors" "'language_model.model.layers.2.mlp.shared_expert.up_proj.weight' has no"
bad wrong-scales "mlx/model.safetensors" "switch_mlp.gate_proj.scales' has shape"
bad bad-bits "mlx/config.json" "gives 7 bits"

if $BIN convert --help | grep -q "mlx-community"; then pass convert_help_mentions_mlx; else fail convert_help_mentions_mlx; fi
