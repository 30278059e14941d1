#!/bin/sh
# Command-line tests of `flashmoe tokenize` and `flashmoe detokenize`; prints "ok NAME" or
# "not ok NAME" per check. The Qwen3 checks need build/qwen3-tokenizer/tokenizer.json
# (tools/fetch_qwen3_tokenizer.sh) and fail without it.
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
bin=$BUILD/flashmoe
qwen=build/qwen3-tokenizer
data=tests/data/tokenizer
tiny=$data/tiny.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

check() { # NAME CONDITION-RESULT(0 = pass) [DETAIL]
    if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "not ok $1${3:+: $3}"; failed=1; fi
}

# Runs the command, keeping stdout, stderr and the exit status in $tmp.
run() {
    "$@" >"$tmp/out" 2>"$tmp/err"
    echo $? >"$tmp/rc"
}

# NAME EXPECTED-STDOUT COMMAND...: exit 0, exactly this output, nothing on stderr.
expect_out() {
    name=$1 want=$2
    shift 2
    run "$@"
    got=$(cat "$tmp/out")
    [ "$(cat "$tmp/rc")" = 0 ] && [ "$got" = "$want" ] && [ ! -s "$tmp/err" ]
    check "$name" $? "rc $(cat "$tmp/rc"), got '$got', want '$want', stderr '$(cat "$tmp/err")'"
}

# NAME TEXT-IN-MESSAGE COMMAND...: a non-zero exit (not a crash), one line on stderr containing
# the text, nothing on stdout.
expect_error() {
    name=$1 want=$2
    shift 2
    run "$@"
    rc=$(cat "$tmp/rc")
    [ "$rc" != 0 ] && [ "$rc" -lt 128 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] &&
        grep -qF -- "$want" "$tmp/err" && [ ! -s "$tmp/out" ]
    check "$name" $? "rc $rc, stderr '$(cat "$tmp/err")'"
}

if [ ! -x "$bin" ]; then
    echo "not ok tokenize_cli: $bin is missing"
    exit 1
fi

# help
run "$bin" tokenize --help
[ "$(cat "$tmp/rc")" = 0 ] && grep -q '^usage: flashmoe tokenize' "$tmp/out"
check tokenize_help $?
run "$bin" detokenize --help
[ "$(cat "$tmp/rc")" = 0 ] && grep -q '^usage: flashmoe detokenize' "$tmp/out"
check detokenize_help $?

# the hand-made tokenizer (ids worked out in tests/test_tokenizer.c)
expect_out tokenize_tiny "259 264" "$bin" tokenize -t "$tiny" "hello world"
# <s> gets id 270, the first after the 270-entry vocab, as HF assigns it (the file declares 300)
expect_out tokenize_tiny_special "270 120" "$bin" tokenize -t "$tiny" --special "<s>x"
expect_out tokenize_tiny_special_off "60 115 62 120" "$bin" tokenize -t "$tiny" "<s>x"
expect_out tokenize_empty "" "$bin" tokenize -t "$tiny" ""
expect_out detokenize_tiny "hello world" "$bin" detokenize -t "$tiny" 259,264
mkdir -p "$tmp/model" && cp "$tiny" "$tmp/model/tokenizer.json"
expect_out tokenize_model_dir "259 264" "$bin" tokenize -m "$tmp/model" "hello world"

# Qwen3
expect_out qwen3_tokenize "9707 1879" "$bin" tokenize -m "$qwen" "Hello world"
expect_out qwen3_tokenize_special "151644 872 198" "$bin" tokenize -m "$qwen" --special "<|im_start|>user
"
expect_out qwen3_tokenize_special_off "27 91 318 4906 91 29" "$bin" tokenize -m "$qwen" "<|im_start|>"
printf 'Hello world' >"$tmp/hello.txt"
expect_out qwen3_tokenize_stdin "9707 1879" sh -c "\"$bin\" tokenize -t $qwen/tokenizer.json -f - <\"$tmp/hello.txt\""
for mode in text special; do
    want=$(awk -F'\t' -v m=$mode '$1 == "invalid_utf8.bin" && $2 == m { print $3 }' $data/qwen3_refs.txt)
    flag=
    [ $mode = special ] && flag=--special
    expect_out "qwen3_tokenize_binary_file_$mode" "$want" "$bin" tokenize -m "$qwen" $flag -f $data/invalid_utf8.bin
done
expect_out qwen3_detokenize_commas "Hello world" "$bin" detokenize -m "$qwen" 9707,1879
expect_out qwen3_detokenize_spaces "Hello world" "$bin" detokenize -m "$qwen" "9707 1879"
expect_out qwen3_detokenize_args "Hello world<|im_end|>" "$bin" detokenize -m "$qwen" 9707 1879 151645
# a file through tokenize and detokenize comes back byte for byte (plus detokenize's newline)
run "$bin" tokenize -m "$qwen" -f src/tokenizer.h
ids=$(cat "$tmp/out")
"$bin" detokenize -m "$qwen" "$ids" >"$tmp/back.txt" 2>"$tmp/err"
{ cat src/tokenizer.h; echo; } | cmp -s - "$tmp/back.txt"
check qwen3_file_round_trip $? "$(cat "$tmp/err")"

# errors: one line naming the file or the problem, non-zero exit, no crash
expect_error missing_tokenizer "$tmp/none.json: cannot open" "$bin" tokenize -t "$tmp/none.json" "x"
expect_error missing_model_dir "$tmp/nodir/tokenizer.json: cannot open" "$bin" tokenize -m "$tmp/nodir" "x"
expect_error malformed_tokenizer "$data/malformed.json: malformed JSON near line 3" "$bin" tokenize -t $data/malformed.json x
expect_error unsupported_model "model type 'WordPiece' is not supported" "$bin" tokenize -t $data/wordpiece.json x
expect_error missing_input_file "$tmp/nofile.txt: cannot read" "$bin" tokenize -t "$tiny" -f "$tmp/nofile.txt"
expect_error no_tokenizer_option "give exactly one of -m DIR or -t" "$bin" tokenize "x"
expect_error two_tokenizer_options "give exactly one of -m DIR or -t" "$bin" tokenize -m "$tmp/model" -t "$tiny" x
expect_error text_and_file "give exactly one TEXT or -f FILE" "$bin" tokenize -t "$tiny" -f "$tmp/hello.txt" x
expect_error no_text "give exactly one TEXT or -f FILE" "$bin" tokenize -t "$tiny"
expect_error unknown_option "unknown option '--bogus'" "$bin" tokenize --bogus -t "$tiny" x
expect_error option_without_value "-t needs a value" "$bin" tokenize -t
expect_error detokenize_no_ids "no token ids given" "$bin" detokenize -t "$tiny"
expect_error detokenize_bad_id "'12x' is not a token id" "$bin" detokenize -t "$tiny" "1,12x,3"
expect_error detokenize_negative_id "'-3' is not a token id" "$bin" detokenize -t "$tiny" -- -3
expect_error detokenize_huge_id "'99999999999' is not a token id" "$bin" detokenize -t "$tiny" 99999999999
expect_error detokenize_out_of_range "id 100000 is not in the vocabulary" "$bin" detokenize -t "$tiny" 1,100000
expect_error detokenize_unassigned "id 290 is not in the vocabulary" "$bin" detokenize -t "$tiny" 290
expect_error qwen3_detokenize_out_of_range "id 151669 is not in the vocabulary (ids go up to 151668)" \
    "$bin" detokenize -m "$qwen" 151669
exit $failed
