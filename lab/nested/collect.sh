#!/bin/bash
# collect.sh RESULTS_DIR DEST NAME...   copy recordings made by run_l1.sh into the repository:
# NAME.dat as recorded, the kernel text gzipped (NAME.txt.gz, rec_direct only), the QEMU log if the
# run wrote one (NAME.qemu.log), and NAME.counts.txt from ../counts.py (trace-cmd report vs text).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$1; dest=$2; shift 2
for name in "$@"; do
	cp "$src/$name.dat" "$dest/"
	[ -f "$src/$name.qemu.log" ] && cp "$src/$name.qemu.log" "$dest/"
	if [ -f "$src/$name.txt" ]; then
		gzip -9 -n -c "$src/$name.txt" > "$dest/$name.txt.gz"
		python3 "$here/../counts.py" "$dest/$name.dat" "$dest/$name.txt.gz" > "$dest/$name.counts.txt"
	fi
	grep -h "overrun\|dropped" "$src/$name.stats.txt" 2>/dev/null | sort | uniq -c | sed "s/^/$name: /"
	head -4 "$dest/$name.counts.txt"
done
