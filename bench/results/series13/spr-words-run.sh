#!/bin/sh
# Series 13 on the SPR host: tests of the words-panel build (amx level is the default there; avx512 level
# forced too), then 512-token prompts, base (59a9aaf) against the new build, amx and avx512 levels, ABBA.
C=$PWD/.devcarry
export LD_LIBRARY_PATH=$C/lib
TF=$OUT/spr-words-tests.txt
for lv in amx avx512; do for t in test_kernels test_model; do
  echo "== $lv $t" >> $TF; FLASHMOE_KERNELS=$lv $C/$t > /tmp/$t.log 2>&1; echo "rc=$?" >> $TF
  grep -E "not ok|levels|largest|check failed" /tmp/$t.log | head -8 >> $TF; grep -c "^ok" /tmp/$t.log >> $TF
done; done
lscpu | grep -E "Model name|^CPU\(s\)" >> $TF
[ -d /tmp/q35b ] || $C/flashmoe synth --like qwen3.5-35b-a3b --experts q4 --dense q4 -o /tmp/q35b > /dev/null 2>&1
cat /tmp/q35b/* > /dev/null
P=$OUT/spr-words-prefill.txt
for lv in avx512 amx; do for r in 1 2; do for v in base new new base; do
  b=$C/flashmoe; [ $v = base ] && b=$C/flashmoe_base
  printf "%s threads 2 round %s %s: " $lv $r $v >> $P
  FLASHMOE_KERNELS=$lv $b run -m /tmp/q35b --prompt-ids $(cat $C/ids512) -n 1 --timing --io mmap -t 2 2>&1 | grep -E "^  all" >> $P
done; done; done
cat $TF $P
