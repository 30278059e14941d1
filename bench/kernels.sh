#!/bin/sh
# Builds and runs the kernel benchmarks (not part of `make`): bench/kernels.c (matvec/matmat GB/s per
# dtype, SIMD level and thread count) and bench/kernels_quant.c (RMSE of optimised vs min/max
# quantization). Same flags as the Makefile, plain x86-64 base build.
#   sh bench/kernels.sh [args for the kernels benchmark, e.g. -m 256 -t 0.2 -l avx2]
# Set STATIC=1 to link statically (to run the binaries on another machine).
set -e
cd "$(dirname "$0")/.."
out=${BUILD:-build}/bench
mkdir -p "$out"
CC=${CC:-cc}
CFLAGS="-O2 -g -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -Isrc"
[ -n "$STATIC" ] && CFLAGS="$CFLAGS -static"
SRC="$(echo src/kernels*.c) src/threadpool.c src/quant.c src/util.c"
$CC $CFLAGS bench/kernels.c $SRC -o "$out/kernels" -lm
$CC $CFLAGS bench/kernels_quant.c $SRC -o "$out/kernels_quant" -lm
[ -n "$BUILD_ONLY" ] && exit 0
echo "== quantization error"
"$out/kernels_quant"
echo "== kernel throughput"
"$out/kernels" "$@"
