#!/bin/sh
# Build the lab workload into lab/build/kvmlab (needs gcc and the kernel's linux/kvm.h header).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/build"
${CC:-gcc} -O2 -g -Wall -Wextra -Wno-unused-parameter -pthread \
    -o "$here/build/kvmlab" "$here"/src/*.c "$here/src/guest.S"
echo "$here/build/kvmlab"
