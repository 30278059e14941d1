#!/bin/sh
# Panel prefetch into L2 (_MM_HINT_T1, flashmoe) against L1 (T0, flashmoe_t0) on the SPR host: amx level
# (default) and avx512 level, 512-token prompts, 2 and 8 threads, ABBA rounds; tests of the T1 build.
C=$PWD/.devcarry
export LD_LIBRARY_PATH=$C/lib
TF=$OUT/spr-hint-tests.txt
for t in test_kernels test_model; do
  echo "== $t" >> $TF; $C/$t > /tmp/$t.log 2>&1; echo "rc=$?" >> $TF
  grep -E "not ok|levels|largest" /tmp/$t.log | head -8 >> $TF; grep -c "^ok" /tmp/$t.log >> $TF
done
[ -d /tmp/q35b ] || $C/flashmoe synth --like qwen3.5-35b-a3b --experts q4 --dense q4 -o /tmp/q35b > /dev/null 2>&1
cat /tmp/q35b/* > /dev/null
P=$OUT/spr-hint-prefill.txt
for lv in amx avx512; do for th in 2 8; do for r in 1 2; do for v in t1 t0 t0 t1; do
  b=$C/flashmoe; [ $v = t0 ] && b=$C/flashmoe_t0
  printf "%s threads %s round %s %s: " $lv $th $r $v >> $P
  FLASHMOE_KERNELS=$lv $b run -m /tmp/q35b --prompt-ids $(cat $C/ids512) -n 1 --timing --io mmap -t $th 2>&1 | grep -E "^  all" >> $P
done; done; done; done
cat $TF $P
