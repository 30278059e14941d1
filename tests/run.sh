#!/bin/sh
# Runs every test binary (build/tests/test_*) and every shell test (tests/*_test.sh), counts the
# "ok NAME" / "not ok NAME" lines they print, and ends with "N passed, N failed".
# A program that exits non-zero without reporting a failure counts as one failure.
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}; export BUILD
pass=0; fail=0
log=$(mktemp); trap 'rm -f "$log"' EXIT
for t in "$BUILD"/tests/test_* tests/*_test.sh; do
    [ -e "$t" ] || continue
    echo "== $t"
    case "$t" in *.sh) sh "$t" >"$log" 2>&1 ;; *) "$t" >"$log" 2>&1 ;; esac
    rc=$?
    cat "$log"
    p=$(grep -c '^ok ' "$log"); f=$(grep -c '^not ok ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "not ok $t exited with status $rc"; f=1; fi
    pass=$((pass + p)); fail=$((fail + f))
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
