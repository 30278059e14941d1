#!/bin/sh
# What the SIMD kernels' rounding of x to int16 (kernels_impl.h) costs in model outputs: for each quantized
# format, the scalar kernels (f32 x, FLASHMOE_KERNELS=scalar) give the reference logits, and the level in use
# (or LEVEL) is compared with them by flashmoe perplexity --kld. The chunks are prompts, so every product of
# a chunk goes through the prompt-chunk GEMMs; decode-time matvecs are not exercised here.
#   sh bench/kernel_quality.sh [FIXTURE] [N_TOKENS]        (BUILD=dir picks the binary, LEVEL=avx2|...)
# With FLASHMOE_F32_X=1 the SIMD kernels keep x in f32, and only the summation order differs.
set -e
. "$(dirname "$0")/fixture_text.sh"
$BIN convert "$FX" "$T/bf16" --experts bf16 --quiet
sample_text "$T/bf16"
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
