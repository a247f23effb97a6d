#!/bin/bash
# Re-record every sample trace in sample_traces/ (one line per sample; lab/README.md lists the
# same commands).  `lab/record-samples.sh NAME...` re-records only those samples;
# `lab/record-samples.sh bench` makes the large benchmark recording in bench/out/ (not in git);
# `lab/record-samples.sh long` the long ones (10 M and 56 M events, zap-slot, native recorder:
# no text twin, the buffer is drained during the run) for bench/bench_scale.py --trace;
# `lab/record-samples.sh long-qlog` the 50 M one with its memslot lines in a QEMU log instead;
# `lab/record-samples.sh churn-long` two memslot-dense ones (churn-1000, churn-2500: 20 M, 52 M events).
set -euo pipefail
cd "$(dirname "$0")/.."
S=sample_traces
"lab/build.sh" >/dev/null

sample() {  # NAME BUFFER_KB -- kvmlab args
    local name=$1 kb=$2; shift 3
    if [ ${#wanted[@]} -eq 0 ] || [[ " ${wanted[*]} " == *" $name "* ]]; then
        lab/record.sh --buffer-kb "$kb" "$S/$name" -- "$@"
    fi
}
wanted=("$@")
if [ "${1:-}" = bench ]; then
    lab/record.sh --buffer-kb 262144 bench/out/bench-multi -- multi --vcpus 2 --ram-mb 64 --pages 4096 --rounds 96
    exit
fi
if [ "${1:-}" = long-qlog ]; then  # long-50m's workload, its memslot lines only in a QEMU log
    mkdir -p bench/out
    "${KVMTRACE:-kvmtrace}" record --backend native -o bench/out/long-50m-qlog.dat -- \
        lab/build/kvmlab multi --vcpus 2 --ram-mb 64 --pages 4096 --rounds 8500 --no-zap-all-quirk \
        --qemu-log bench/out/long-50m-qlog.qemu.log
    exit
fi
if [ "${1:-}" = churn-long ]; then  # memslot-dense: a BAR-like slot deleted and re-created every round, zap-all
    mkdir -p bench/out
    for rounds in 1000 2500; do  # 20 M and 52 M events
        "${KVMTRACE:-kvmtrace}" record --backend native -o "bench/out/churn-$rounds.dat" -- \
            lab/build/kvmlab churn --rounds "$rounds"
    done
    exit
fi
if [ "${1:-}" = long ]; then
    mkdir -p bench/out
    for spec in "10m 1550" "50m 8500"; do
        set -- $spec
        "${KVMTRACE:-kvmtrace}" record --backend native -o "bench/out/long-$1.dat" -- \
            lab/build/kvmlab multi --vcpus 2 --ram-mb 64 --pages 4096 --rounds "$2" --no-zap-all-quirk
    done
    exit
fi

sample boot-zapall          16384 -- boot --pages 2048 --huge 2
sample churn-zapall         16384 -- churn --rounds 3
sample churn-zapslot        16384 -- churn --rounds 3 --no-zap-all-quirk
sample mmio-zapall          16384 -- mmio --rounds 2
sample mmio-zapslot         16384 -- mmio --rounds 2 --no-zap-all-quirk
sample dirty-zapall         16384 -- dirty --rounds 4
sample dirty-zapslot        16384 -- dirty --rounds 4 --no-zap-all-quirk
sample multi-zapall         16384 -- multi --vcpus 3 --rounds 3
sample multi-zapslot        16384 -- multi --vcpus 3 --rounds 3 --no-zap-all-quirk
sample rom-zapall           16384 -- rom --rounds 2
sample rom-zapslot          16384 -- rom --rounds 2 --no-zap-all-quirk
sample ptslot-zapall        16384 -- ptslot --pages 512 --rounds 2
sample ptslot-zapslot       16384 -- ptslot --pages 512 --rounds 2 --no-zap-all-quirk
sample churn-thp-zapall     16384 -- churn --rounds 3 --thp
sample churn-thp-zapslot    16384 -- churn --rounds 3 --thp --no-zap-all-quirk
sample churn-lost-zapall       64 -- churn --rounds 3
