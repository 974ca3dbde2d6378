#!/bin/sh
# CPU of two relay builds, measured alternately with the same relay-bench:
# churn (CPU µs per connect-echo-close cycle) and echo (CPU µs per
# forwarded message at 1 and 8 in flight, 256 B, and 16 KiB at 4 in
# flight). Each round runs A then B, the next B then A (ABBA), so a drift
# of the machine's load weighs on both alike. Prints one line per run and
# the median of each column per build.
#
#   bench/ab-cpu.sh OLD_RELAY NEW_RELAY [ROUNDS]
#   RELAY_BENCH=path/to/relay-bench bench/ab-cpu.sh ...   (default target/release/relay-bench)
#
# About 35 s per build per round. Run it on a quiet machine (`uptime`):
# pinned processes wait for their CPU when others build, and absolute
# CPU figures move by ±20 % with the VM host (docs/BENCHMARKS.md).
set -eu
[ $# -ge 2 ] || { sed -n '2,14p' "$0"; exit 2; }
A=$1 B=$2 ROUNDS=${3:-3}
RB=${RELAY_BENCH:-target/release/relay-bench}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# The CPU figure of relay-bench's progress line ("... 26.8 CPU µs/cycle").
cpu() { sed -n 's/.* \([0-9.]*\) CPU µs\/\(cycle\|msg\).*/\1/p' | head -n 1; }

measure() { # NAME RELAY
    churn=$("$RB" churn --relay "$2" --quiet --duration 10s --rest 0s 2>&1 | cpu)
    echo1=$("$RB" echo --relay "$2" --quiet --in-flight 1 --duration 5s 2>&1 | cpu)
    echo8=$("$RB" echo --relay "$2" --quiet --in-flight 8 --duration 5s 2>&1 | cpu)
    large=$("$RB" echo --relay "$2" --quiet --phones 100 --in-flight 4 --size 16384 --duration 5s 2>&1 | cpu)
    printf '%-4s %-9s %12s %12s %12s %12s   load %s\n' "$1" "$round" "$churn" "$echo1" "$echo8" "$large" \
        "$(cut -d' ' -f1 /proc/loadavg)"
    echo "$churn $echo1 $echo8 $large" >> "$OUT/$1"
}

printf '%-4s %-9s %12s %12s %12s %12s\n' build round "churn µs/cyc" "echo1 µs/msg" "echo8 µs/msg" "16K µs/msg"
round=1
while [ "$round" -le "$ROUNDS" ]; do
    if [ $((round % 2)) -eq 1 ]; then
        measure A "$A"; measure B "$B"
    else
        measure B "$B"; measure A "$A"
    fi
    round=$((round + 1))
done

median() { # FILE COLUMN
    cut -d' ' -f"$2" "$1" | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'
}
for build in A B; do
    printf '%-4s %-9s %12s %12s %12s %12s\n' "$build" median \
        "$(median "$OUT/$build" 1)" "$(median "$OUT/$build" 2)" \
        "$(median "$OUT/$build" 3)" "$(median "$OUT/$build" 4)"
done
echo "A = $A"
echo "B = $B"
