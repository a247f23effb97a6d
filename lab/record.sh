#!/bin/bash
# Record one kvmlab run into OUT.dat + OUT.txt.gz (the kernel's own text of the same records)
# + OUT.counts.txt, with the project's recorder:
#
#   lab/record.sh [--buffer-kb N] OUT -- SCENARIO [kvmlab options]
#
# `kvmtrace record` sets up tracefs (kvmmmu + kvm events, trace_clock=global, per-CPU buffer
# size), saves the text before `trace-cmd extract`, restores tracefs, and holds
# /run/kvmtrace-rec.lock for the whole recording (one recording at a time per machine).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
buffer_kb=16384
if [ "${1:-}" = --buffer-kb ]; then buffer_kb=$2; shift 2; fi
[ $# -ge 3 ] && [ "$2" = -- ] || { echo "usage: $0 [--buffer-kb N] OUT -- SCENARIO [kvmlab options]" >&2; exit 2; }
out=$1; shift 2
[ -x "$here/build/kvmlab" ] || "$here/build.sh" >/dev/null
mkdir -p "$(dirname "$out")"
rm -f "$out.dat" "$out.txt.gz"

"${KVMTRACE:-kvmtrace}" record -o "$out.dat" --buffer-kb "$buffer_kb" --text -- "$here/build/kvmlab" "$@" >/dev/null
python3 "$here/counts.py" "$out.dat" "$out.txt.gz" > "$out.counts.txt"
echo "$out.dat $(stat -c %s "$out.dat") bytes; $(head -3 "$out.counts.txt" | tr '\n' ' ')"
