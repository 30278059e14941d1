#!/bin/sh
# run_capped.sh [-d|--drop-caches] [-v] MiB CMD [ARGS...]
#
# Runs CMD in a fresh memory cgroup limited to MiB mebibytes, page cache included, which is how to
# simulate "a model N times larger than RAM" on one machine (see reference/machines.md). At the end it
# prints to stderr
#     run_capped: peak_bytes=N limit_bytes=N
# (plus "run_capped: oom_kills=N" when the kernel killed something in the cgroup), removes the cgroup
# and exits with CMD's status (128 + signal if CMD was killed).
#
#   -d, --drop-caches   sync and drop the page cache (of the whole machine) first, to start cold
#   -v                  also print "run_capped: cgroup=PATH"
#
# cgroup v1 (memory controller mounted at /sys/fs/cgroup/memory): memory.limit_in_bytes (and
# memory.memsw.limit_in_bytes when present, so swap cannot extend the cap), peak from
# memory.max_usage_in_bytes. cgroup v2: memory.max (and memory.swap.max = 0), peak from memory.peak
# (kernel 5.19+; "peak_bytes=-1" where missing). The cgroup is created under the controller's root,
# or under $RUN_CAPPED_PARENT. Needs root.
set -u

usage() {
    echo "usage: $0 [-d|--drop-caches] [-v] MiB CMD [ARGS...]" >&2
    exit 2
}
die() {
    echo "run_capped: $*" >&2
    exit 2
}

drop=0 verbose=0
while [ $# -gt 0 ]; do
    case "$1" in
        -d|--drop-caches) drop=1; shift ;;
        -v) verbose=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) usage ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || usage
mib=$1; shift
case "$mib" in ''|*[!0-9]*) die "MiB must be a positive integer, not '$mib'" ;; esac
[ "$mib" -gt 0 ] || die "MiB must be positive"
limit=$((mib * 1024 * 1024))

# Pick the cgroup flavour: v1 memory controller if mounted, else a v2 hierarchy with memory.
v1root=$(awk '$3 == "cgroup" && $4 ~ /(^|,)memory(,|$)/ { print $2; exit }' /proc/mounts)
v2root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
if [ -n "$v1root" ] && [ -e "$v1root/memory.limit_in_bytes" ]; then
    version=1 root=$v1root
elif [ -n "$v2root" ] && grep -qw memory "$v2root/cgroup.controllers" 2>/dev/null; then
    version=2 root=$v2root
else
    die "no memory cgroup controller found (neither v1 nor v2 with memory)"
fi
parent=${RUN_CAPPED_PARENT:-$root}
cg="$parent/run_capped.$$"

cleanup() {
    [ -d "$cg" ] || return 0
    # processes CMD left behind keep the cgroup alive; give them a moment to exit
    tries=0
    while [ -s "$cg/cgroup.procs" ] && [ $tries -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
    if [ -s "$cg/cgroup.procs" ]; then
        echo "run_capped: processes still in $cg ($(tr '\n' ' ' <"$cg/cgroup.procs")); cgroup left in place" >&2
        return 0
    fi
    [ $version = 1 ] && echo 0 >"$cg/memory.force_empty" 2>/dev/null # give back its page cache
    rmdir "$cg" 2>/dev/null || echo "run_capped: could not remove $cg" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ $version = 2 ] && ! grep -qw memory "$parent/cgroup.subtree_control" 2>/dev/null; then
    echo +memory >"$parent/cgroup.subtree_control" 2>/dev/null ||
        die "cannot enable the memory controller in $parent/cgroup.subtree_control (root needed)"
fi
mkdir "$cg" 2>/dev/null || { trap - EXIT; die "cannot create $cg (root needed): $(mkdir "$cg" 2>&1)"; }
if [ $version = 1 ]; then
    echo $limit >"$cg/memory.limit_in_bytes" || die "cannot set $cg/memory.limit_in_bytes"
    if [ -e "$cg/memory.memsw.limit_in_bytes" ]; then
        echo $limit >"$cg/memory.memsw.limit_in_bytes" || die "cannot set $cg/memory.memsw.limit_in_bytes"
    fi
    limit_read=$(cat "$cg/memory.limit_in_bytes")
else
    echo $limit >"$cg/memory.max" || die "cannot set $cg/memory.max"
    [ -e "$cg/memory.swap.max" ] && echo 0 >"$cg/memory.swap.max"
    limit_read=$(cat "$cg/memory.max")
fi
[ $verbose = 1 ] && echo "run_capped: cgroup=$cg" >&2

if [ $drop = 1 ]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches || die "cannot drop caches (root needed)"
fi

# The child joins the cgroup before exec'ing CMD, so everything CMD does is charged to it.
sh -c 'echo $$ >"$1/cgroup.procs" || exit 126; shift; exec "$@"' run_capped "$cg" "$@"
status=$?

if [ $version = 1 ]; then
    peak=$(cat "$cg/memory.max_usage_in_bytes")
    ooms=$(awk '$1 == "oom_kill" { print $2 }' "$cg/memory.oom_control" 2>/dev/null)
else
    peak=$(cat "$cg/memory.peak" 2>/dev/null || echo -1)
    ooms=$(awk '$1 == "oom_kill" { print $2 }' "$cg/memory.events" 2>/dev/null)
fi
echo "run_capped: peak_bytes=$peak limit_bytes=$limit_read" >&2
[ "${ooms:-0}" -gt 0 ] && echo "run_capped: oom_kills=$ooms (CMD exceeded the cap)" >&2
exit $status
