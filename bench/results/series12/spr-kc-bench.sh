#!/bin/sh
# bench at the new default (AMX_KC 1024) against KC 256, 512-token prompts, 2 and 8 threads, in RAM.
C=$PWD/.devcarry
export LD_LIBRARY_PATH=$C/lib
[ -d /tmp/q35b ] || $C/flashmoe synth --like qwen3.5-35b-a3b --experts q4 --dense q4 -o /tmp/q35b > /dev/null 2>&1
cat /tmp/q35b/* > /dev/null
P=$OUT/spr-kc-bench.txt
for r in 1 2; do for T in 2 8; do for v in default kc256; do
  b=$C/flashmoe_$v; [ $v = default ] && b=$C/flashmoe
  echo "== round $r threads $T $v" >> $P
  $b bench -m /tmp/q35b -p 512 -n 32 -r 2 --io mmap -t $T >> $P 2>&1
done; done; done
cat $P
