#!/bin/sh
# The quality table of BENCHMARKS.md: experts per token x expert bits, against the bf16 model at its
# native top-k, measured with flashmoe perplexity --kld on a fixture model (random weights).
#   sh bench/quality_table.sh [FIXTURE] [N_TOKENS]
# The text is sampled from the bf16 model itself (temperature 1, fixed seed), so that its perplexity is
# that of the model's own distribution rather than of arbitrary ids.
set -e
. "$(dirname "$0")/fixture_text.sh"
native=$(tr -d ' \n' <"$FX/config.json" | sed -n 's/.*"num_experts_per_tok":\([0-9]*\).*/\1/p')
for bits in bf16 q8 q4 q3 q2; do
    $BIN convert "$FX" "$T/$bits" --experts $bits --group 32 --quiet 2>"$T/conv.err"
    if grep -q "kept in bf16" "$T/conv.err"; then echo "expert shapes do not divide into groups of 32" >&2; exit 1; fi
done
sample_text "$T/bf16"
$BIN perplexity -m "$T/bf16" -f "$T/text.ids" --ids-file --ctx $CTX --save-logits "$T/ref.bin" --json >"$T/ref.json"
echo "Model: $FX (random weights), native top-k $native; $(field "$T/ref.json" scored) positions scored"
echo "(ctx $CTX, second half of each chunk); reference: bf16 experts at top-k $native, PPL $(field "$T/ref.json" ppl)."
echo
echo "| experts/token | expert bits | PPL | mean KLD | KLD p99 | top-1 agreement | mean Δp(true token) |"
echo "|---|---|---|---|---|---|---|"
n_experts=$(tr -d ' \n' <"$FX/config.json" | sed -n 's/.*"num_experts":\([0-9]*\).*/\1/p')
ks=$native; for k in 8 6 4 3; do [ $k -ne $native ] && [ $k -le $n_experts ] && ks="$ks $k"; done
for k in $ks; do
    for bits in bf16 q8 q4 q3 q2; do
        $BIN perplexity -m "$T/$bits" -f "$T/text.ids" --ids-file --ctx $CTX --kld "$T/ref.bin" \
            --experts-per-token $k --json >"$T/r.json"
        printf '| %s%s | %s | %.3f | %.5f | %.4f | %.2f%% | %+.5f |\n' "$k" "$([ $k = $native ] && echo ' (native)')" \
            $bits "$(field "$T/r.json" ppl)" "$(field "$T/r.json" kl_mean)" "$(field "$T/r.json" kl_p99)" \
            "$(echo "$(field "$T/r.json" top1_agreement) * 100" | bc -l)" "$(field "$T/r.json" delta_p_mean)"
    done
done
