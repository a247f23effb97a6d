#!/bin/bash
# Record one kvmlab run into OUT.dat + OUT.txt.gz (+ OUT.counts.txt) the way the project's notes
# prescribe for this host: tracefs set up by hand (trace-cmd record cannot enable ftrace here),
# the kernel's text saved first, then `trace-cmd extract`, then tracefs restored as found.
#
#   lab/record.sh [--buffer-kb N] OUT -- SCENARIO [kvmlab options]
#
# Holds /run/kvmtrace-rec.lock (flock) for the whole recording: one recording at a time per
# machine. A caller that already holds that lock itself sets KVMLAB_LOCK_HELD=1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
T=/sys/kernel/tracing
buffer_kb=16384
if [ "${1:-}" = --buffer-kb ]; then buffer_kb=$2; shift 2; fi
[ $# -ge 3 ] && [ "$2" = -- ] || { echo "usage: $0 [--buffer-kb N] OUT -- SCENARIO [kvmlab options]" >&2; exit 2; }
out=$1; shift 2
[ -w "$T/trace_marker" ] || { echo "record.sh: $T is not writable (root and a mounted tracefs needed)" >&2; exit 2; }
[ -x "$here/build/kvmlab" ] || "$here/build.sh" >/dev/null
mkdir -p "$(dirname "$out")"

if [ "${KVMLAB_LOCK_HELD:-}" != 1 ]; then
    exec 9>/run/kvmtrace-rec.lock
    flock 9
fi

saved_on=$(cat $T/tracing_on)
saved_kb=$(cat $T/buffer_size_kb | sed 's/ .*//')
saved_clock=$(sed 's/.*\[\(.*\)\].*/\1/' $T/trace_clock)
saved_mmu=$(cat $T/events/kvmmmu/enable)
saved_kvm=$(cat $T/events/kvm/enable)
restore() {
    echo 0 > $T/tracing_on
    echo "$([ "$saved_mmu" = 1 ] && echo 1 || echo 0)" > $T/events/kvmmmu/enable
    echo "$([ "$saved_kvm" = 1 ] && echo 1 || echo 0)" > $T/events/kvm/enable
    echo "$saved_clock" > $T/trace_clock
    echo "$saved_kb" > $T/buffer_size_kb
    echo "$saved_on" > $T/tracing_on
}
trap restore EXIT

echo 0 > $T/tracing_on
echo "$buffer_kb" > $T/buffer_size_kb
echo global > $T/trace_clock
echo > $T/trace
echo 1 > $T/events/kvmmmu/enable
echo 1 > $T/events/kvm/enable
echo 1 > $T/tracing_on
status=0
"$here/build/kvmlab" "$@" || status=$?
echo 0 > $T/tracing_on
[ $status = 0 ] || { echo "record.sh: kvmlab failed ($status)" >&2; exit 1; }

cat $T/trace > "$out.txt"
for s in $T/per_cpu/cpu*/stats; do echo "$(basename "$(dirname "$s")") $(tr '\n' ' ' < "$s")"; done > "$out.stats"
rm -f "$out.dat"
trace-cmd extract -o "$out.dat" >/dev/null 2>"$out.extract.log" || { cat "$out.extract.log" >&2; exit 1; }
rm -f "$out.extract.log"
python3 "$here/counts.py" "$out.dat" "$out.txt" "$out.stats" > "$out.counts.txt"
rm -f "$out.stats"
gzip -9f "$out.txt"
echo "$out.dat $(stat -c %s "$out.dat") bytes; $(head -3 "$out.counts.txt" | tr '\n' ' ')"
