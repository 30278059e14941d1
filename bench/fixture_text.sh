# Sourced by bench/quality_table.sh and bench/kernel_quality.sh (after `set -e`, with their arguments
# [FIXTURE] [N_TOKENS]): the binary, the fixture, the text length, the context, a temporary directory, and
# the two steps both tables share, so that they score the same text the same way.
BIN=${BUILD:-build}/flashmoe
FX=${1:-tests/fixtures/tiny-a-f32}
N=${2:-4096}
CTX=128
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
# sample_text MODEL_DIR: N ids sampled from the model itself (temperature 1, seed 7) into $T/text.ids
sample_text() {
    { printf '1 '; $BIN run -m "$1" --prompt-ids 1 -n $((N - 1)) --temp 1 --seed 7 --ids --ignore-eos; } >"$T/text.ids"
}
# field FILE NAME: the number NAME holds in the JSON object in FILE
field() { tr -d ' \n' <"$1" | sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p"; }
