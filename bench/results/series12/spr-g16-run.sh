#!/bin/sh
# (as run, the tests' file was named $T, which the thread loop reused; renamed TF here)
# int16 GEMM column block on the SPR host at the avx512 level: 512 (default) against 256; tests of this build.
C=$PWD/.devcarry
export LD_LIBRARY_PATH=$C/lib
TF=$OUT/spr-g16-tests.txt
for t in test_kernels test_model; do
  echo "== $t" >> $TF; $C/$t > /tmp/$t.log 2>&1; echo "rc=$?" >> $TF
  grep -E "not ok|levels|largest|passed" /tmp/$t.log | head -8 >> $TF; grep -c "^ok" /tmp/$t.log >> $TF
done
[ -d /tmp/q35b ] || $C/flashmoe synth --like qwen3.5-35b-a3b --experts q4 --dense q4 -o /tmp/q35b > /dev/null 2>&1
cat /tmp/q35b/* > /dev/null
P=$OUT/spr-g16-prefill.txt
for r in 1 2 3; do for T in 2 8; do for v in default g256; do
  b=$C/flashmoe_$v; [ $v = default ] && b=$C/flashmoe
  printf "round %s threads %s %s: " $r $T $v >> $P
  FLASHMOE_KERNELS=avx512 $b run -m /tmp/q35b --prompt-ids $(cat $C/ids512) -n 1 --timing --io mmap -t $T 2>&1 | grep -E "^  all" >> $P
done; done; done
cat $TF $P
