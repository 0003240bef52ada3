#!/usr/bin/env bash
# Rooms benchmark, Hearth and Synapse side by side in one run (issue "Rooms"):
#   - sending into one room with 1, 10 and 50 concurrent senders   (mxbench send)
#   - sending across 100 rooms with 50 concurrent senders          (benches/rooms_load.rs)
#   - /messages back-pagination over a 5,000-event room            (mxbench history)
#   - joins of a public room, 10 at a time                          (mxbench join, no big room)
# Like ../shared/tools/bench/run.sh, each server is pinned to CPU 0 and the load to CPU 1, both
# servers run durable defaults (Hearth syncs the WAL before answering; Synapse SQLite fsyncs
# each commit), and each scenario runs against Hearth then Synapse. Loopback only.
#
# Usage: benches/rooms_vs_synapse.sh [OUT.md]   (QUICK=1 for small sizes)
# Needs the shared tools (BENCH_TOOLS, default ../shared/tools/bench): synapse.sh and mxbench.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${BENCH_TOOLS:-$ROOT/../shared/tools/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}
WORK=${BENCH_WORK:-$HOME/.cache/hearth-bench/rooms-$(date +%Y%m%d-%H%M%S)}
OUT=${1:-$ROOT/benches/results/$(date +%Y-%m-%d)-rooms-vs-synapse.md}
HPORT=${BENCH_PORT_A:-18310}; SPORT=${BENCH_PORT_B:-18320}
mkdir -p "$WORK/hearth" "$WORK/synapse"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

log "building hearth (release), mxbench and the rooms load tool"
(cd "$ROOT" && cargo build --release --locked --bin hearth -q)
HEARTH=$CARGO_TARGET_DIR/release/hearth
MX=${MXBENCH_BIN:-$CARGO_TARGET_DIR/release/mxbench}
[ -x "$MX" ] || cargo build --release -q --manifest-path "$TOOLS/mxbench/Cargo.toml"
LOAD=$(cd "$ROOT" && cargo bench --locked --bench rooms_load --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.executable != null and (.target.kind | index("bench"))) | .executable' | tail -n1)
[ -x "$LOAD" ] || { log "could not build benches/rooms_load.rs"; exit 1; }

HPID=""
cleanup() {
    [ -n "$HPID" ] && kill "$HPID" 2>/dev/null || true
    "$TOOLS/synapse.sh" stop "$WORK/synapse" "$SPORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "starting hearth on $HPORT and synapse on $SPORT, both on CPU 0"
(cd "$WORK/hearth" && exec taskset -c 0 env HEARTH_RATE_LIMITS__ENABLED=false HEARTH_REGISTRATION__MODE=open \
    HEARTH_LOGGING__LEVEL=warn "$HEARTH" serve --listen "127.0.0.1:$HPORT" --data-dir "$WORK/hearth/data" \
    --server-name bench.local >"$WORK/hearth/hearth.log" 2>&1) &
HPID=$!
taskset -c 0 "$TOOLS/synapse.sh" start "$WORK/synapse" "$SPORT" >"$WORK/synapse.log" 2>&1
for port in "$HPORT" "$SPORT"; do
    for i in $(seq 1 600); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/_matrix/client/versions" && break
        [ "$i" = 600 ] && { log "server on $port not answering"; exit 1; }
        sleep 0.5
    done
done
for p in $("$TOOLS/synapse.sh" pids "$WORK/synapse" "$SPORT"); do taskset -a -p -c 0 "$p" >/dev/null 2>&1 || true; done
taskset -a -p -c 0 "$HPID" >/dev/null

RESULTS=$WORK/results.jsonl
: >"$RESULTS"
# run LABEL COMMAND...: the command once per server with HS_URL set; its last stdout line (JSON)
# is tagged with the label and the server.
run() {
    local label=$1; shift
    for target in hearth synapse; do
        local port=$HPORT; [ "$target" = synapse ] && port=$SPORT
        log "$label on $target"
        local line
        line=$(HS_URL="http://127.0.0.1:$port" timeout 1200 taskset -c 1 "$@" 2>>"$WORK/load.log" | tail -n1) || true
        [ -n "$line" ] || line='{"metrics":{}}'
        echo "$line" | jq -c --arg l "$label" --arg t "$target" '. + {label: $l, target: $t}' >>"$RESULTS"
    done
}
if [ "${QUICK:-0}" = 1 ]; then S1=20 S10=10 S50=4 HIST=500 JOIN=10 RMSG=4; else S1=200 S10=50 S50=20 HIST=5000 JOIN=50 RMSG=20; fi
run "send, 1 sender" "$MX" send --users 1 --messages "$S1" --concurrency 1
run "send, 10 senders" "$MX" send --users 10 --messages "$S10" --concurrency 10
run "send, 50 senders" "$MX" send --users 50 --messages "$S50" --concurrency 50
run "send, 50 senders over 100 rooms" "$LOAD" --rooms 100 --senders 50 --messages "$RMSG"
run "history, /messages over $HIST events" "$MX" history --events "$HIST" --runs 3
run "join, $JOIN joiners" "$MX" join --joiners "$JOIN" --concurrency 10 --big-members 0

log "writing $OUT"
python3 - "$RESULTS" "$OUT" <<'PY'
import json, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
order = []
for r in rows:
    if r["label"] not in by:
        order.append(r["label"])
    by.setdefault(r["label"], {})[r["target"]] = r.get("metrics", {})
lower_better = lambda m: m.endswith("_ms")
wanted = ["events_per_s", "joins_per_s", "paginate_total_p50_ms", "send_p50_ms", "send_p99_ms", "join_p50_ms", "page_p50_ms"]
out = ["# Rooms: Hearth vs Synapse (SQLite), side by side", "",
       f"Run {datetime.datetime.now():%Y-%m-%d %H:%M}; each server pinned to one core (CPU 0), load on CPU 1; durable writes on both.", "",
       "| scenario | metric | Hearth | Synapse | Hearth/Synapse (better ×) |", "|---|---|---:|---:|---:|"]
for label in order:
    h, s = by[label].get("hearth", {}), by[label].get("synapse", {})
    for m in wanted:
        if m in h or m in s:
            hv, sv = h.get(m), s.get(m)
            if isinstance(hv, (int, float)) and isinstance(sv, (int, float)) and hv and sv:
                better = (sv / hv) if lower_better(m) else (hv / sv)
                ratio = f"{better:.1f}×"
            else:
                ratio = "n/a"
            fmt = lambda v: f"{v:,.1f}" if isinstance(v, (int, float)) else "failed"
            out.append(f"| {label} | {m} | {fmt(hv)} | {fmt(sv)} | {ratio} |")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
