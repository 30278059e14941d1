#!/bin/sh
# bench/io.sh [FILE_GiB] [READ_MiB] [ROUNDS]: GB/s of random 4 MiB expert-sized reads, 8 per batch
# (one MoE layer), through the expert I/O engine in both modes and back-ends, against fio and dd on
# the same file in the same run. The disk is noisy, so the configurations alternate over ROUNDS
# rounds and the summary gives each one's median. Every measurement starts from a cold page cache
# (sync; drop_caches: needs root, and disturbs anyone else's benchmark on the machine: keep it short).
# Defaults: a 4 GiB file, 1024 MiB read per measurement, 3 rounds. The file and the binary live in a
# temporary directory, removed at exit. GB/s is 10^9 bytes per second throughout.
set -eu
cd "$(dirname "$0")/.."
gib=${1:-4}
read_mib=${2:-1024}
rounds=${3:-3}
command -v fio >/dev/null || { echo "bench/io.sh: fio not found (apt-get install fio)" >&2; exit 1; }
dir=$(mktemp -d /tmp/flashmoe_iobench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
file=$dir/experts.bin
results=$dir/results

${CC:-cc} -O2 -std=c11 -Wall -Wextra -D_GNU_SOURCE -pthread -Isrc bench/io_bench.c src/expert_io.c src/util.c \
    src/expert_cache.c -o "$dir/io_bench" -luring
echo "writing a $gib GiB file of random bytes in $dir ..." >&2
"$dir/io_bench" create "$file" $((gib * 1024))

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
record() { # LABEL GBPS [DETAIL]
    printf '%-58s %5s GB/s  %s\n' "$1" "$2" "${3:-}"
    printf '%s\t%s\n' "$1" "$2" >>"$results"
}
engine() { # LABEL ARGS...
    label=$1; shift
    cold
    line=$("$dir/io_bench" read "$file" --bytes "$read_mib" --record 4 --k 8 --seed "$seed" "$@")
    record "$label" "$(echo "$line" | sed 's/.*GB\/s=\([0-9.]*\).*/\1/')" "$(echo "$line" | sed 's/.*\(wait=.*\)/\1/')"
}
fio_run() { # LABEL DIRECT IODEPTH [FIO OPTIONS...]
    label=$1 direct=$2 depth=$3; shift 3
    cold
    bw=$(fio --name=randread --filename="$file" --rw=randread --bs=4M --direct="$direct" --ioengine=io_uring \
        --iodepth="$depth" --io_size="${read_mib}M" --randrepeat=0 --output-format=json "$@" 2>/dev/null |
        grep -m1 '"bw_bytes"' | tr -dc 0-9)
    record "$label" "$(awk -v b="$bw" 'BEGIN { printf "%.2f", b / 1e9 }')"
}
dd_run() {
    cold
    line=$(dd if="$file" of=/dev/null bs=4M count=$((read_mib / 4)) iflag=direct 2>&1 | tail -n 1)
    bytes=$(echo "$line" | sed 's/^\([0-9]*\) bytes.*/\1/')
    secs=$(echo "$line" | sed 's/.*copied, \([0-9.]*\) s.*/\1/')
    record "dd sequential 4 MiB O_DIRECT" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.2f", b / s / 1e9 }')"
}

echo "random 4 MiB reads, batches of 8, $read_mib MiB per measurement, cold cache, file $gib GiB"
seed=1
for r in $(seq 1 "$rounds"); do
    echo "-- round $r"
    seed=$((seed + 1))
    fio_run "fio direct io_uring iodepth 8" 1 8
    fio_run "fio direct io_uring iodepth 8, in batches of 8" 1 8 --iodepth_batch_submit=8 \
        --iodepth_batch_complete_min=8
    engine "engine direct io_uring" --mode direct --backend uring
    engine "engine direct threads" --mode direct --backend threads
    engine "engine direct io_uring, 4 KiB-page buffers" --mode direct --backend uring --small-pages 1
    engine "engine direct io_uring via expert_cache (budget 0)" --mode direct --backend uring --budget 0
    engine "engine direct io_uring via expert_cache (budget 256 MiB)" --mode direct --backend uring --budget 256
    fio_run "fio buffered io_uring iodepth 8" 0 8
    engine "engine cached io_uring" --mode cached --backend uring
    engine "engine cached threads" --mode cached --backend threads
    dd_run
done

echo "-- median over $rounds rounds"
awk -F '\t' '{ n[$1]++; v[$1, n[$1]] = $2; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
    END {
        for (i = 1; i <= k; i++) {
            l = order[i]; m = n[l]
            for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++)
                if (v[l, b] + 0 < v[l, a] + 0) { t = v[l, a]; v[l, a] = v[l, b]; v[l, b] = t }
            med = m % 2 ? v[l, (m + 1) / 2] : (v[l, m / 2] + v[l, m / 2 + 1]) / 2
            printf "%-58s %5.2f GB/s  (min %.2f, max %.2f)\n", l, med, v[l, 1], v[l, m]
        }
    }' "$results"
