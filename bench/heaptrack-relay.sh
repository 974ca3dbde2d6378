#!/bin/bash
# The relay under heaptrack (Debian `heaptrack`), started by relay-bench in
# place of the relay, to see where its heap is at the peak and at rest:
#
#   HT_RELAY=target/release/pyrycode-relay HT_OUT=/tmp/ht \
#     target/release/relay-bench churn --relay bench/heaptrack-relay.sh --duration 20s --binaries 16
#   heaptrack_print -f /tmp/ht.zst --print-peaks 1 --print-leaks 1 -a 0 -T 0 | less
#
# "PEAK MEMORY CONSUMERS" are the allocation sites at the heap's peak;
# "MEMORY LEAKS" what the relay held at the end of the trace: relay-bench's
# SIGTERM (after the churn's rest) is turned into SIGKILL here, so the
# trace ends with the relay at rest instead of after a clean shutdown.
# relay-bench's own RSS and CPU figures for such a run are this script's,
# not the relay's: read heaptrack's.
set -u
out=${HT_OUT:-/tmp/heaptrack-relay}
relay=${HT_RELAY:?HT_RELAY=path of the relay binary}
pipe=$out.fifo
rm -f "$pipe"
mkfifo "$pipe"
/usr/lib/heaptrack/libexec/heaptrack_interpret < "$pipe" | zstd -q -c > "$out.zst" &
interpreter=$!
LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so DUMP_HEAPTRACK_OUTPUT="$pipe" "$relay" "$@" &
child=$!
trap 'kill -KILL $child' TERM
wait $child
wait $child
wait $interpreter
rm -f "$pipe"
