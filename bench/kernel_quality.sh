#!/bin/sh
# What the SIMD kernels' rounding of x to int16 (kernels_impl.h) costs in model outputs: for each quantized
# format, the scalar kernels (f32 x, FLASHMOE_KERNELS=scalar) give the reference logits, and the level in use
# (or LEVEL) is compared with them by flashmoe perplexity --kld. The chunks are prompts, so every product of
# a chunk goes through the prompt-chunk GEMMs; decode-time matvecs are not exercised here.
#   sh bench/kernel_quality.sh [FIXTURE] [N_TOKENS]        (BUILD=dir picks the binary, LEVEL=avx2|...)
# With FLASHMOE_F32_X=1 the SIMD kernels keep x in f32, and only the summation order differs.
set -e
BIN=${BUILD:-build}/flashmoe
FX=${1:-tests/fixtures/tiny-a-f32}
N=${2:-4096}
CTX=128
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
$BIN convert "$FX" "$T/bf16" --experts bf16 --quiet
{ printf '1 '; $BIN run -m "$T/bf16" --prompt-ids 1 -n $((N - 1)) --temp 1 --seed 7 --ids --ignore-eos; } >"$T/text.ids"
field() { tr -d ' \n' <"$1" | sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p"; }
echo "Model: $FX (random weights), $N tokens, ctx $CTX; kernel level ${LEVEL:-the best available} against the scalar kernels."
echo
echo "| experts | dense | PPL scalar | PPL SIMD | mean KLD | KLD max | top-1 agreement |"
echo "|---|---|---|---|---|---|---|"
for f in "q8 q8" "q4 q4" "q2 q4"; do
    set -- $f
    $BIN convert "$FX" "$T/m" --experts $1 --dense $2 --group 32 --quiet
    FLASHMOE_KERNELS=scalar $BIN perplexity -m "$T/m" -f "$T/text.ids" --ids-file --ctx $CTX \
        --save-logits "$T/ref.bin" --json >"$T/ref.json"
    ${LEVEL:+env FLASHMOE_KERNELS=$LEVEL} $BIN perplexity -m "$T/m" -f "$T/text.ids" --ids-file --ctx $CTX \
        --kld "$T/ref.bin" --json >"$T/r.json"
    printf '| %s | %s | %.4f | %.4f | %.3g | %.3g | %.2f%% |\n' $1 $2 "$(field "$T/ref.json" ppl)" \
        "$(field "$T/r.json" ppl)" "$(field "$T/r.json" kl_mean)" "$(field "$T/r.json" kl_max)" \
        "$(echo "$(field "$T/r.json" top1_agreement) * 100" | bc -l)"
    rm -rf "$T/m"
done
