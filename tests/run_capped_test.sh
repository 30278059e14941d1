#!/bin/sh
# tools/run_capped.sh: CMD runs inside a fresh memory cgroup, a process touching more than the cap is
# stopped, reading a file larger than the cap completes with its page cache kept under the cap, the
# exit status comes through and the cgroup is removed afterwards. Prints "ok NAME" / "not ok NAME".
# Needs root and a memory cgroup controller (v1 or v2), like the tool itself.
cd "$(dirname "$0")/.." || exit 1
tool=tools/run_capped.sh
dir=$(mktemp -d /tmp/run_capped_test.XXXXXX) || exit 1
trap 'rm -rf "$dir"' EXIT
failed=0

report() { # NAME CONDITION-STATUS DETAIL
    if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "not ok $1: $3"; failed=1; fi
}
field() { # KEY FILE: value of KEY=N from the run_capped line
    sed -n "s/^run_capped: .*$1=\(-\{0,1\}[0-9]*\).*/\1/p" "$2" | head -n 1
}
mib=$((1024 * 1024))

# exit status, cgroup membership, cgroup removed
sh $tool -v 64 sh -c 'cat /proc/self/cgroup; exit 7' >"$dir/out" 2>"$dir/err"
rc=$?
cg=$(sed -n 's/^run_capped: cgroup=//p' "$dir/err")
report run_capped_exit_status $([ $rc -eq 7 ]; echo $?) "status $rc, expected 7; $(cat "$dir/err")"
report run_capped_joins_cgroup $([ -n "$cg" ] && grep -q "$(basename "$cg")" "$dir/out"; echo $?) \
    "CMD's /proc/self/cgroup does not name ${cg:-the cgroup}: $(cat "$dir/out")"
report run_capped_removes_cgroup $([ -n "$cg" ] && [ ! -e "$cg" ]; echo $?) "${cg:-cgroup} still exists"
report run_capped_prints_peak $([ -n "$(field peak_bytes "$dir/err")" ] && [ "$(field limit_bytes "$dir/err")" = $((64 * mib)) ]; echo $?) \
    "no parseable peak/limit line: $(cat "$dir/err")"

# dd's buffer of bs bytes is filled (touched) by reading /dev/zero: 32 MiB fits under 64, 256 does not
sh $tool 64 dd if=/dev/zero of=/dev/null bs=32M count=1 2>"$dir/err"
rc=$?
peak=$(field peak_bytes "$dir/err")
report run_capped_within_cap $([ $rc -eq 0 ] && [ "${peak:-0}" -ge $((32 * mib)) ] && [ "$peak" -le $((64 * mib)) ]; echo $?) \
    "status $rc, peak ${peak:-?} (expected 32..64 MiB): $(cat "$dir/err")"

sh $tool 64 dd if=/dev/zero of=/dev/null bs=256M count=1 2>"$dir/err"
rc=$?
peak=$(field peak_bytes "$dir/err")
report run_capped_stops_excess $([ $rc -ne 0 ] && [ "${peak:-0}" -gt 0 ] && [ "$peak" -le $((64 * mib)) ] && grep -q oom_kills "$dir/err"; echo $?) \
    "status $rc, peak ${peak:-?} (cap 64 MiB): $(cat "$dir/err")"

# a 256 MiB file written with O_DIRECT (so none of it is in the page cache), read with cat under a
# 64 MiB cap: completes, and its page cache counts towards the cap but stays under it
if dd if=/dev/zero of="$dir/big" bs=1M count=256 oflag=direct 2>"$dir/err"; then
    sh $tool 64 cat "$dir/big" >/dev/null 2>"$dir/err"
    rc=$?
    peak=$(field peak_bytes "$dir/err")
    report run_capped_cat_large_file $([ $rc -eq 0 ] && [ "${peak:-0}" -ge $((16 * mib)) ] && [ "$peak" -le $((64 * mib)) ]; echo $?) \
        "status $rc, peak ${peak:-?} (expected 16..64 MiB: page cache charged, capped): $(cat "$dir/err")"
else
    report run_capped_cat_large_file 1 "cannot write the 256 MiB test file: $(cat "$dir/err")"
fi
rm -f "$dir/big"

sh $tool 0 true 2>/dev/null
rc1=$?
sh $tool 64 2>/dev/null
rc2=$?
report run_capped_usage_errors $([ $rc1 -eq 2 ] && [ $rc2 -eq 2 ]; echo $?) "status $rc1 for MiB 0, $rc2 without CMD"

exit $failed
