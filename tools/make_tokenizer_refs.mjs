#!/usr/bin/env node
// Writes reference token ids for the tokenizer test corpus with @lenml/tokenizers (a JavaScript
// port of the transformers.js tokenizers), in the format tools/make_tokenizer_refs.py writes with
// Hugging Face `tokenizers`; tests/test_tokenizer.c compares src/tokenizer.c against the result.
//
//   npm install --prefix build/node @lenml/tokenizers@3.7.2   (LENML_PREFIX=DIR to use another)
//   node tools/make_tokenizer_refs.mjs build/qwen3-tokenizer/tokenizer.json \
//        tests/data/tokenizer/corpus.txt tests/data/tokenizer/invalid_utf8.bin \
//        > tests/data/tokenizer/qwen3_refs.txt
//
// Corpus: one JSON string per line (lines starting with '#' and blank lines are skipped); case N
// is the N-th string. Every other argument after the corpus is a binary case named by its file
// name; its bytes are decoded as UTF-8 with U+FFFD for invalid sequences (what Python's
// bytes.decode("utf-8", errors="replace") gives) before encoding.
//
// Output: one line per case and mode, "CASE<TAB>MODE<TAB>ids separated by spaces", MODE "text"
// (special tokens are plain text, HF's encode_special_tokens=True) or "special" (added special
// tokens recognised, HF's default). @lenml/tokenizers has no encode_special_tokens switch, so
// "text" mode loads a second copy of the tokenizer without the added tokens marked special:
// they are not in the model vocabulary, so nothing else changes.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, resolve } from "node:path";
import { createHash } from "node:crypto";

const [tokPath, corpusPath, ...binPaths] = process.argv.slice(2);
if (!tokPath || !corpusPath) {
  console.error("usage: node tools/make_tokenizer_refs.mjs TOKENIZER_JSON CORPUS [BINARY_CASE...]");
  process.exit(2);
}
const prefix = process.env.LENML_PREFIX ?? "build/node";
const require = createRequire(resolve(prefix, "node_modules") + "/");
const lenml = require("@lenml/tokenizers");
const pkgDir = resolve(prefix, "node_modules/@lenml/tokenizers");
const version = JSON.parse(readFileSync(resolve(pkgDir, "package.json"), "utf8")).version;

const raw = readFileSync(tokPath);
const json = JSON.parse(raw.toString("utf8"));
const plain = structuredClone(json);
plain.added_tokens = plain.added_tokens.filter((t) => !t.special);

const quiet = console.warn;
console.warn = () => {};
const load = (tokenizerJSON) => lenml.TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig: {} });
const tokSpecial = load(json);
const tokText = load(plain);
console.warn = quiet;

const cases = [];
readFileSync(corpusPath, "utf8").split("\n").forEach((line) => {
  if (line === "" || line.startsWith("#")) return;
  cases.push([String(cases.length), JSON.parse(line)]);
});
const decoder = new TextDecoder("utf-8", { fatal: false });
for (const p of binPaths) cases.push([basename(p), decoder.decode(readFileSync(p))]);

const out = [
  `# Reference token ids: tools/make_tokenizer_refs.mjs, @lenml/tokenizers ${version}`,
  `# tokenizer.json sha256 ${createHash("sha256").update(raw).digest("hex")}`,
  "# CASE<TAB>MODE<TAB>IDS (CASE: corpus string index or binary file name; MODE: text|special)",
];
for (const [name, text] of cases) {
  for (const [mode, tok] of [["text", tokText], ["special", tokSpecial]]) {
    const ids = tok.encode(text, { add_special_tokens: false });
    out.push(`${name}\t${mode}\t${ids.join(" ")}`);
  }
}
process.stdout.write(out.join("\n") + "\n");
