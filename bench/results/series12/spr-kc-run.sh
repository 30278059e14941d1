#!/bin/sh
# AMX column block: tests at KC 1024 (default) and 2048, then 512-token prefill, alternating builds.
C=$PWD/.devcarry
export LD_LIBRARY_PATH=$C/lib
lscpu | grep -E "Model name|^CPU\(s\)" > $OUT/spr-kc-tests.txt
for t in test_kernels test_kernels_kc2048 test_model test_model_kc2048; do
  echo "== $t" >> $OUT/spr-kc-tests.txt
  $C/$t > /tmp/$t.log 2>&1; echo "rc=$?" >> $OUT/spr-kc-tests.txt
  grep -c "^ok" /tmp/$t.log >> $OUT/spr-kc-tests.txt
  grep -E "not ok|passed|amx" /tmp/$t.log | head -20 >> $OUT/spr-kc-tests.txt
done
$C/flashmoe synth --like qwen3.5-35b-a3b --experts q4 --dense q4 -o /tmp/q35b > $OUT/synth.txt 2>&1
cat /tmp/q35b/* > /dev/null
P=$OUT/spr-kc-prefill.txt
for r in 1 2 3; do for T in 2 8; do for v in kc256 default kc2048; do
  b=$C/flashmoe_$v; [ $v = default ] && b=$C/flashmoe
  printf "round %s threads %s %s: " $r $T $v >> $P
  $b run -m /tmp/q35b --prompt-ids $(cat $C/ids512) -n 1 --timing --io mmap -t $T 2>&1 | grep -E "^  all" >> $P
done; done; done
cat $OUT/spr-kc-tests.txt $P
