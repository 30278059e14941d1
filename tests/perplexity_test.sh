#!/bin/sh
# flashmoe perplexity through the command line: bad input fails with exactly one stderr line naming the file
# and the problem (non-zero status, no signal), and --json prints one JSON object with the documented keys.
BIN=${BUILD:-build}/flashmoe
PPL="$BIN perplexity"
FX=tests/fixtures
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT

# expect NAME PATTERN... -- ARGS...: `perplexity ARGS` fails cleanly with one stderr line matching every PATTERN
expect() {
    name=$1; shift
    pats=""
    while [ "$1" != "--" ]; do pats="$pats
$1"; shift; done
    shift
    $PPL "$@" >"$T/out" 2>"$T/err"
    rc=$?
    lines=$(wc -l <"$T/err")
    ok=1
    if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then ok=0; echo "  $name: exit status $rc"; fi
    if [ "$lines" -ne 1 ]; then ok=0; echo "  $name: $lines lines on stderr:"; cat "$T/err"; fi
    echo "$pats" | while IFS= read -r p; do
        [ -z "$p" ] && continue
        grep -qF -- "$p" "$T/err" || { echo "  $name: stderr lacks '$p': $(cat "$T/err")"; exit 1; }
    done || ok=0
    if [ $ok -eq 1 ]; then echo "ok $name"; else echo "not ok $name"; fi
}

# check NAME CONDITION-COMMAND...: ok if the command succeeds
check() {
    name=$1; shift
    if "$@"; then echo "ok $name"; else echo "not ok $name"; fi
}

# 120 token ids, in the .ids form (recognised by the suffix)
i=0; : >"$T/a.ids"
while [ $i -lt 120 ]; do echo "$(( (i * 37 + 11) % 384 ))," >>"$T/a.ids"; i=$((i + 1)); done
sed 's/,$//' "$T/a.ids" | tr '\n' ' ' >"$T/a.txt"   # the same ids, under a name that is not .ids

A="-m $FX/tiny-a-f32"
expect missing_file "$T/none.txt" "cannot open" -- $A -f "$T/none.txt"
: >"$T/empty.txt"
expect empty_text "$T/empty.txt" "empty text" -- $A -f "$T/empty.txt"
printf '7 8' >"$T/two.ids"
expect too_few_tokens "$T/two.ids" "at least 3" -- $A -f "$T/two.ids"
expect ctx_too_small "--ctx needs an integer from 3" -- $A -f "$T/a.ids" --ctx 1
expect ctx_not_a_number "--ctx needs an integer" -- $A -f "$T/a.ids" --ctx x
printf '1 999 3 4' >"$T/range.ids"
expect id_out_of_range "$T/range.ids" "token id 999 at index 1 is out of range (vocabulary of 384)" -- $A -f "$T/range.ids"
expect missing_model "$T/nomodel/config.json" -- -m "$T/nomodel" -f "$T/a.ids"
expect missing_kld "$T/none.logp" "cannot open" -- $A -f "$T/a.ids" --kld "$T/none.logp"
expect save_and_kld "exclusive" -- $A -f "$T/a.ids" --kld "$T/x" --save-logits "$T/y"

# a reference run, then comparisons that do not fit it
if $PPL $A -f "$T/a.ids" --ctx 40 --save-logits "$T/ref.logp" >"$T/save.out" 2>"$T/save.err"; then
    echo "ok save_logits"
else
    echo "not ok save_logits: $(cat "$T/save.err")"
fi
expect kld_other_ctx "$T/ref.logp" "saved with 3 chunks of 40 tokens, this run has 2 chunks of 60" -- \
    $A -f "$T/a.ids" --ctx 60 --kld "$T/ref.logp"
sed '110s/.*/5,/' "$T/a.ids" >"$T/b.ids"   # id 109: position 29 of chunk 2, a scored target
expect kld_other_tokens "$T/ref.logp" "has token" -- $A -f "$T/b.ids" --ctx 40 --kld "$T/ref.logp"
head -c 5000 "$T/ref.logp" >"$T/short.logp"
expect kld_truncated "$T/short.logp" "truncated" -- $A -f "$T/a.ids" --ctx 40 --kld "$T/short.logp"
expect kld_not_logp "$T/a.ids" "not a flashmoe log-probability file" -- $A -f "$T/a.ids" --ctx 40 --kld "$T/a.ids"

# text needs the tokenizer; ids do not
mkdir "$T/notok"
for f in config.json generation_config.json model.safetensors; do ln -s "$PWD/$FX/tiny-a-f32/$f" "$T/notok/$f"; done
expect text_without_tokenizer "$T/notok/tokenizer.json: not found" "--ids-file" -- \
    -m "$T/notok" -f tests/data/perplexity/sample.txt

# --json: one object on one line, the self-comparison exactly zero; --ids-file reads a file of any name
if $PPL -m "$T/notok" -f "$T/a.txt" --ids-file --ctx 40 --kld "$T/ref.logp" --json >"$T/json" 2>"$T/json.err"; then
    echo "ok json_run"
else
    echo "not ok json_run: $(cat "$T/json.err")"
fi
check json_one_object grep -qx '{.*}' "$T/json"
check json_one_line [ "$(wc -l <"$T/json")" -eq 1 ]
for key in '"ctx":40' '"chunks":3' '"scored":57' '"evaluated":117' '"kl_mean":0' '"kl_max":0' \
    '"top1_agreement":1' '"delta_p_mean":0' '"ppl":' '"ppl_se":' '"ref_ppl":' '"tokens_per_second":'; do
    check "json_has_$(echo "$key" | tr -dc 'a-z_0-9')" grep -qF "$key" "$T/json"
done
# the reference run's perplexity is the comparison's ref_ppl, digit for digit
ppl_json=$($PPL $A -f "$T/a.ids" --ctx 40 --json | sed 's/.*"ppl":\([^,]*\),.*/\1/')
check json_ref_ppl_matches grep -qF "\"ref_ppl\":$ppl_json," "$T/json"

check help_perplexity sh -c "$PPL --help | grep -q 'usage: flashmoe perplexity'"
check summary_perplexity grep -q '^perplexity  [0-9.]* +/- [0-9.]*' "$T/save.out"
