#!/usr/bin/env bash
# Durable sends into one room on one core (issue 23 item 4), as benches/results/2026-12-07-send-profile.md
# measured them: a release hearth on a fresh data directory pinned to CPU 0 (every thread), mxbench
# pinned to CPU 1, RUNS rounds of 10 senders then 50 senders. Besides mxbench's events/s and
# latencies it prints the server's CPU time per event over the whole run (setup included, after
# the push worker drained), which a machine shared with other work disturbs much less than wall
# clock figures.
#
# Usage: benches/send_one_core.sh BIN LABEL [RUNS]   (M10/M50: messages per sender; PORT; KEEP=1
# leaves the server running; MX: the mxbench binary)
set -u
BIN=$1; LABEL=$2; RUNS=${3:-3}; PORT=${PORT:-18410}
MX=${MX:-$HOME/.cache/hearth-target/release/mxbench}
D=${BENCH_WORK:-/tmp/send-one-core}/run-$LABEL; rm -rf "$D"; mkdir -p "$D"
taskset -c 0 env HEARTH_RATE_LIMITS__ENABLED=false HEARTH_REGISTRATION__MODE=open HEARTH_LOGGING__LEVEL=warn \
  HEARTH_PASSWORDS__ITERATIONS=1 HEARTH_PASSWORDS__MEMORY_KIB=1024 \
  "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$D/data" --server-name bench.local >"$D/server.log" 2>&1 &
SPID=$!
for i in $(seq 1 200); do curl -sf -o /dev/null http://127.0.0.1:$PORT/_matrix/client/versions && break; sleep 0.2; done
taskset -a -p -c 0 $SPID >/dev/null
echo $SPID > "$D/pid"
for r in $(seq 1 $RUNS); do
  for u in 10 50; do
    if [ $u = 10 ]; then m=${M10:-400}; else m=${M50:-100}; fi
    c0=$(awk '{print $14+$15}' /proc/$SPID/stat)
    line=$(taskset -c 1 $MX send --hs-url http://127.0.0.1:$PORT --users $u --messages $m --concurrency $u --server-pids $SPID 2>>"$D/mx.err" | tail -n1)
    # let the push worker drain, then the server CPU used for the whole run (setup included)
    prev=-1; for k in $(seq 1 30); do sleep 0.5; c=$(awk '{print $14+$15}' /proc/$SPID/stat); [ "$c" = "$prev" ] && break; prev=$c; done
    c1=$(awk '{print $14+$15}' /proc/$SPID/stat); n=$((u*m))
    echo "$LABEL run$r u$u $(echo "$line" | jq -c --argjson us $(( (c1-c0)*10000/n )) '{e:.metrics.events_per_s, p50:.metrics.send_p50_ms, p99:.metrics.send_p99_ms, cpu_us_per_event_total:$us, srv_cpu_pct:.info.server_cpu_pct_measured, wait_pct:.info.server_cpuwait_pct_measured}' 2>/dev/null || echo "$line")"
  done
done
if [ "${KEEP:-0}" = 1 ]; then echo "server left running: $SPID"; else kill $SPID; wait $SPID 2>/dev/null; fi
