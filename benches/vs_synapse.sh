#!/usr/bin/env bash
# Hearth and Synapse side by side in one run, one suite at a time:
#   rooms: sending into one room with 1, 10 and 50 concurrent senders (mxbench send); across
#          100 rooms with 50 senders (benches/rooms_load.rs); /messages back-pagination over a
#          5,000-event room (mxbench history); joins of a public room, 10 at a time (mxbench join)
#   media: upload and download MB/s for 1 MB and 50 MB files, thumbnail latency, RSS while 1 GB
#          is uploaded (benches/media.rs pointed at each server)
#   team:  send throughput with 3 pushers and 20 room members against sends without pushers, and
#          push delivery to a gateway inside the load tool; /search latency over 100,000 messages;
#          /user_directory/search over 10,000 users (benches/team_load.rs). Both servers push to
#          loopback and search all users; password hashing is made cheap for the setup only.
#   elementx: simplified sliding sync as Element X uses it: the first response for a user in
#          200 rooms with a 20-room window, and delivery to 20 long-polling connections
#          (benches/team_load.rs sliding)
#   sync:  initial sync of a user in 50 rooms x 100 events, plain and lazy-loading (mxbench
#          initial-sync); no-op incremental syncs (mxbench incremental); delivery from a send to
#          20 and to 100 long-polling receivers, with lost/duplicate checks (mxbench fanout)
#   bigroom: one public room grown by joins to 1,000, 4,000, 16,000 and 32,000 members (Synapse
#          to 4,000 by default: SYNAPSE_SIZES; Hearth: HEARTH_SIZES), per size the join latency
#          (200 joins one at a time), the fill rate, and a member's initial sync, lazy-loading and
#          full; then a second room of 1,000 members (benches/big_room.rs grow). After a clean
#          stop of each server: its data directory (Hearth: without the WAL, and per column
#          family). Registration is made cheap on both sides (not measured).
# Like ../shared/tools/bench/run.sh, each server is pinned to CPU 0 and the load to CPU 1, both
# servers run durable defaults (Hearth syncs the WAL before answering; Synapse SQLite fsyncs
# each commit), and each scenario runs against Hearth then Synapse. Loopback only.
#
# Usage: benches/vs_synapse.sh rooms|sync|media|team|elementx|bigroom [OUT.md]   (QUICK=1 for small sizes)
# Needs the shared tools (BENCH_TOOLS, default ../shared/tools/bench): synapse.sh and mxbench.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SUITE=${1:?usage: benches/vs_synapse.sh rooms|sync|media|team|elementx|bigroom [OUT.md]}
TOOLS=${BENCH_TOOLS:-$ROOT/../shared/tools/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}
WORK=${BENCH_WORK:-$HOME/.cache/hearth-bench/$SUITE-$(date +%Y%m%d-%H%M%S)}
OUT=${2:-$ROOT/benches/results/$(date +%Y-%m-%d)-$SUITE-vs-synapse.md}
HPORT=${BENCH_PORT_A:-18310}; SPORT=${BENCH_PORT_B:-18320}
mkdir -p "$WORK/hearth" "$WORK/synapse"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

log "building hearth (release), mxbench and the rooms load tool"
(cd "$ROOT" && cargo build --release --locked --bin hearth -q)
HEARTH=$CARGO_TARGET_DIR/release/hearth
MX=${MXBENCH_BIN:-$CARGO_TARGET_DIR/release/mxbench}
[ -x "$MX" ] || cargo build --release -q --manifest-path "$TOOLS/mxbench/Cargo.toml"
bench_bin() {  # the executable of benches/$1.rs
    (cd "$ROOT" && cargo bench --locked --bench "$1" --no-run --message-format=json 2>/dev/null |
        jq -r 'select(.executable != null and (.target.kind | index("bench"))) | .executable' | tail -n1)
}
LOAD=$(bench_bin rooms_load); MEDIA=$(bench_bin media); TEAM=$(bench_bin team_load); BIG=$(bench_bin big_room)
[ -x "$LOAD" ] && [ -x "$MEDIA" ] && [ -x "$TEAM" ] && [ -x "$BIG" ] || { log "could not build the load tools in benches/"; exit 1; }
# HEARTH_BIN measures another build of Hearth (e.g. the one before a change).
HEARTH=${HEARTH_BIN:-$HEARTH}

HPID=""
cleanup() {
    [ -n "$HPID" ] && kill "$HPID" 2>/dev/null || true
    "$TOOLS/synapse.sh" stop "$WORK/synapse" "$SPORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "starting hearth on $HPORT and synapse on $SPORT, both on CPU 0"
HEARTH_EXTRA=()
if [ "$SUITE" = bigroom ]; then
    # Setup registers up to 32,000 users (Synapse registers them as guests): cheap hashing.
    HEARTH_EXTRA=(HEARTH_PASSWORDS__ITERATIONS=1 HEARTH_PASSWORDS__MEMORY_KIB=1024)
    export SYNAPSE_BCRYPT_ROUNDS=4
fi
if [ "$SUITE" = team ]; then
    # Setup registers 10,000 users: cheap password hashing on both sides (not measured).
    HEARTH_EXTRA=(HEARTH_PASSWORDS__ITERATIONS=1 HEARTH_PASSWORDS__MEMORY_KIB=1024
        HEARTH_USER_DIRECTORY__SEARCH_ALL_USERS=true 'HEARTH_PUSH__GATEWAY_IP_ALLOW=["127.0.0.1/32"]')
    export SYNAPSE_BCRYPT_ROUNDS=4
fi
(cd "$WORK/hearth" && exec taskset -c 0 env "${HEARTH_EXTRA[@]}" HEARTH_RATE_LIMITS__ENABLED=false HEARTH_REGISTRATION__MODE=open \
    HEARTH_LOGGING__LEVEL=warn "$HEARTH" serve --listen "127.0.0.1:$HPORT" --data-dir "$WORK/hearth/data" \
    --server-name bench.local >"$WORK/hearth/hearth.log" 2>&1) &
HPID=$!
taskset -c 0 "$TOOLS/synapse.sh" start "$WORK/synapse" "$SPORT" >"$WORK/synapse.log" 2>&1
if [ "$SUITE" = media ]; then
    # Synapse's defaults cap uploads at 50 MiB and serve only pre-generated thumbnail sizes;
    # give it Hearth's limit and on-demand thumbnails so both do the same work.
    "$TOOLS/synapse.sh" stop "$WORK/synapse" "$SPORT" >>"$WORK/synapse.log" 2>&1
    printf '\nmax_upload_size: 200M\ndynamic_thumbnails: true\n' >>"$WORK/synapse/homeserver.yaml"
    taskset -c 0 "$TOOLS/synapse.sh" start "$WORK/synapse" "$SPORT" >>"$WORK/synapse.log" 2>&1
fi
if [ "$SUITE" = team ]; then
    # Pushers on loopback (Synapse refuses private gateway addresses by default), and the user
    # directory over all users, as Hearth is configured above.
    "$TOOLS/synapse.sh" stop "$WORK/synapse" "$SPORT" >>"$WORK/synapse.log" 2>&1
    printf '\nip_range_whitelist: ["127.0.0.1"]\nuser_directory:\n  search_all_users: true\n' >>"$WORK/synapse/homeserver.yaml"
    taskset -c 0 "$TOOLS/synapse.sh" start "$WORK/synapse" "$SPORT" >>"$WORK/synapse.log" 2>&1
fi
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
        local port=$HPORT pid=$HPID
        [ "$target" = synapse ] && port=$SPORT pid=$("$TOOLS/synapse.sh" pid "$WORK/synapse" "$SPORT")
        log "$label on $target"
        local line
        line=$(HS_URL="http://127.0.0.1:$port" BENCH_SERVER_PID=$pid timeout ${BENCH_TIMEOUT:-3600} taskset -c 1 "$@" 2>>"$WORK/load.log" | tail -n1) || true
        [ -n "$line" ] || line='{"metrics":{}}'
        echo "$line" | jq -c --arg l "$label" --arg t "$target" '. + {label: $l, target: $t}' >>"$RESULTS"
    done
}
case "$SUITE" in
rooms)
    if [ "${QUICK:-0}" = 1 ]; then S1=20 S10=10 S50=4 HIST=500 JOIN=10 RMSG=4; else S1=200 S10=50 S50=20 HIST=5000 JOIN=50 RMSG=20; fi
    run "send, 1 sender" "$MX" send --users 1 --messages "$S1" --concurrency 1
    run "send, 10 senders" "$MX" send --users 10 --messages "$S10" --concurrency 10
    run "send, 50 senders" "$MX" send --users 50 --messages "$S50" --concurrency 50
    run "send, 50 senders over 100 rooms" "$LOAD" --rooms 100 --senders 50 --messages "$RMSG"
    run "history, /messages over $HIST events" "$MX" history --events "$HIST" --runs 3
    run "join, $JOIN joiners" "$MX" join --joiners "$JOIN" --concurrency 10 --big-members 0
    ;;
sync)
    if [ "${QUICK:-0}" = 1 ]; then R=5 E=10 SEC=3 F1=8 F2=16 K=10; else R=50 E=100 SEC=10 F1=20 F2=100 K=30; fi
    run "initial sync, $R rooms x $E events" "$MX" initial-sync --rooms "$R" --events "$E" --runs 5
    run "incremental no-op syncs, 8 users" "$MX" incremental --users 8 --seconds "$SEC"
    run "delivery to $F1 long-polling receivers" "$MX" fanout --receivers "$F1" --messages "$K"
    run "delivery to $F2 long-polling receivers" "$MX" fanout --receivers "$F2" --messages "$K"
    ;;
media)
    if [ "${QUICK:-0}" = 1 ]; then export BENCH_SMALL_FILES=5 BENCH_LARGE_FILES=1 BENCH_TOTAL_MB=100; fi
    run "media" "$MEDIA"
    ;;
team)
    if [ "${QUICK:-0}" = 1 ]; then PM=5 SM=2000 DU=300; else PM=30 SM=100000 DU=10000; fi
    # TEAM_SCENARIOS picks some of them (default: all three).
    for scenario in ${TEAM_SCENARIOS:-push search directory}; do
        case "$scenario" in
        push) run "send with 3 pushers, 20 members" "$TEAM" push --members 20 --pushers 3 --messages "$PM" ;;
        search) run "search over $SM messages" "$TEAM" search --messages "$SM" --rooms 10 ;;
        directory) run "user directory over $DU users" "$TEAM" directory --users "$DU" ;;
        *) log "unknown team scenario $scenario"; exit 2 ;;
        esac
    done
    ;;
elementx)
    if [ "${QUICK:-0}" = 1 ]; then SR=30 SK=10; else SR=200 SK=30; fi
    run "sliding sync, $SR rooms, 20 receivers" "$TEAM" sliding --rooms "$SR" --receivers 20 --messages "$SK"
    ;;
bigroom)
    if [ "${QUICK:-0}" = 1 ]; then HS=200,400; SS=200; PROBE=20; SECOND=100; else
        HS=${HEARTH_SIZES:-1000,4000,16000,32000}; SS=${SYNAPSE_SIZES:-1000,4000}; PROBE=200; SECOND=1000; fi
    for target in hearth synapse; do
        port=$HPORT pid=$HPID sizes=$HS
        [ "$target" = synapse ] && port=$SPORT pid=$("$TOOLS/synapse.sh" pid "$WORK/synapse" "$SPORT") sizes=$SS
        log "big room to $sizes members on $target"
        line=$(HS_URL="http://127.0.0.1:$port" BENCH_SERVER_PID=$pid timeout ${BENCH_TIMEOUT:-7200} taskset -c 1 \
            "$BIG" grow --sizes "$sizes" --probe "$PROBE" --second-room "$SECOND" 2>>"$WORK/load.log" | tail -n1) || true
        [ -n "$line" ] || line='{"metrics":{}}'
        echo "$line" | jq -c --arg t "$target" '. + {label: "big room", target: $t}' >>"$RESULTS"
    done
    # Clean stops, then the data directories. Hearth's WAL (*.log) is left out: what remains is
    # what its column families hold once flushed. Stopping may take a while when background
    # work (push evaluation) is behind; after BIGROOM_STOP_WAIT seconds it is killed (noted).
    DISK=$WORK/disk.txt
    log "stopping hearth"
    kill -TERM "$HPID"
    stopped=killed
    for _ in $(seq 1 "${BIGROOM_STOP_WAIT:-600}"); do kill -0 "$HPID" 2>/dev/null || { stopped=clean; break; }; sleep 1; done
    [ "$stopped" = clean ] || kill -KILL "$HPID" 2>/dev/null || true
    wait "$HPID" 2>/dev/null || true
    HPID=""
    {
        echo "hearth_stop $stopped"
        echo "hearth_total_bytes $(du -sb "$WORK/hearth/data" | cut -f1)"
        echo "hearth_without_wal_bytes $(du -sb --exclude='*.log' "$WORK/hearth/data" | cut -f1)"
        # Per column family: each SST file names its column family in its properties block.
        python3 - "$WORK/hearth/data" <<'PY'
import collections, glob, os, sys
sizes = collections.Counter()
for f in glob.glob(os.path.join(sys.argv[1], "*.sst")):
    b = open(f, "rb").read()
    i = b.rfind(b"column.family.id")
    j = b.find(b"name", i) if i >= 0 else -1
    sizes[b[j + 4:j + 4 + b[j - 1]].decode(errors="replace") if j > 0 else "?"] += os.path.getsize(f)
for name, n in sizes.most_common():
    print(f"cf {name} {n}")
PY
    } >>"$DISK"
    "$TOOLS/synapse.sh" stop "$WORK/synapse" "$SPORT" >>"$WORK/synapse.log" 2>&1 || true
    echo "synapse_db_bytes $(cat "$WORK"/synapse/homeserver.db* 2>/dev/null | wc -c)" >>"$DISK"
    log "writing $OUT"
    python3 - "$RESULTS" "$OUT" "$DISK" <<'PY'
import json, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
disk = [l.split() for l in open(sys.argv[3]) if l.strip()]
out = ["# Big rooms: Hearth vs Synapse (SQLite), side by side", "",
       f"Run {datetime.datetime.now():%Y-%m-%d %H:%M}; each server pinned to one core (CPU 0), load on CPU 1; durable writes on both.",
       "Joins of the fill run 10 at a time; `join p50/p99`: further joins one at a time (200; 20 with QUICK=1); initial syncs: p50 of 5.",
       "Hearth's size without the WAL counts what RocksDB has flushed to SST files (and its small metadata files); per column family: SST files only.", ""]
cols = [("members", "members"), ("fill_joins_per_s", "fill joins/s"), ("join_p50_ms", "join p50 ms"),
        ("join_p99_ms", "join p99 ms"), ("isync_lazy_p50_ms", "lazy sync p50 ms"), ("isync_lazy_bytes", "lazy bytes"),
        ("isync_full_p50_ms", "full sync p50 ms"), ("isync_full_bytes", "full bytes"), ("peak_rss_mb", "peak RSS MB")]
for r in rows:
    out += [f"## {r['target'].capitalize()}", "", "| " + " | ".join(c[1] for c in cols) + " |", "|" + "---:|" * len(cols)]
    for step in r.get("steps", []):
        out.append("| " + " | ".join(f"{step.get(k, ''):,}" if isinstance(step.get(k), (int, float)) else "" for k, _ in cols) + " |")
    if r.get("second_room"):
        out.append("")
        out.append(f"Second room: {r['second_room']}")
    out.append("")
out += ["## Data directories after the run", "", "| what | bytes |", "|---|---:|"]
for d in disk:
    value = "{:,}".format(int(d[-1])) if d[-1].isdigit() else d[-1]
    out.append("| " + " ".join(d[:-1]) + " | " + value + " |")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
    exit 0
    ;;
*) echo "unknown suite $SUITE (rooms, sync, media, team, elementx or bigroom)" >&2; exit 2 ;;
esac

log "writing $OUT"
python3 - "$RESULTS" "$OUT" "$SUITE" <<'PY'
import json, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
order = []
for r in rows:
    if r["label"] not in by:
        order.append(r["label"])
    metrics = dict(r.get("metrics", {}))
    for k, v in r.get("checks", {}).items():
        if k in ("lost", "duplicates"):
            metrics["check_" + k] = v
    by.setdefault(r["label"], {})[r["target"]] = metrics
lower_better = lambda m: m.endswith("_ms") or m.endswith("_bytes") or m.endswith("_mb") or m.endswith("_pct")
wanted = ["events_per_s", "joins_per_s", "paginate_total_p50_ms", "send_p50_ms", "send_p99_ms", "join_p50_ms",
          "page_p50_ms", "isync_full_p50_ms", "isync_full_bytes", "isync_lazy_p50_ms", "isync_lazy_bytes",
          "req_per_s", "sync_p50_ms", "sync_p99_ms", "deliver_p50_ms", "deliver_p99_ms", "check_lost",
          "check_duplicates", "upload_1mb_mb_per_s", "download_1mb_mb_per_s", "upload_50mb_mb_per_s",
          "download_50mb_mb_per_s", "thumbnail_on_demand_ms", "thumbnail_cached_ms", "rss_idle_mb",
          "rss_peak_above_idle_during_1gb_mb", "events_per_s_without_pushers", "events_per_s_with_pushers",
          "push_cost_pct", "push_delivery_p50_ms", "push_delivery_p99_ms", "pushes_expected", "pushes_received",
          "search_p50_ms", "search_p99_ms", "search_rare_p50_ms", "search_medium_p50_ms", "search_common_p50_ms",
          "search_pair_p50_ms", "search_recent_common_p50_ms", "directory_search_p50_ms", "directory_search_p99_ms",
          "ss_first_p50_ms", "ss_first_bytes", "ss_deliver_p50_ms", "ss_deliver_p99_ms"]
suite = sys.argv[3]
out = [f"# {suite.capitalize()}: Hearth vs Synapse (SQLite), side by side", "",
       f"Run {datetime.datetime.now():%Y-%m-%d %H:%M}; each server pinned to one core (CPU 0), load on CPU 1; durable writes on both.", "",
       "| scenario | metric | Hearth | Synapse | Hearth/Synapse (better ×) |", "|---|---|---:|---:|---:|"]
for label in order:
    h, s = by[label].get("hearth", {}), by[label].get("synapse", {})
    for m in wanted:
        if m in h or m in s:
            hv, sv = h.get(m), s.get(m)
            if m.startswith("check_") or m.startswith("pushes_"):
                ratio = "(check)"
            elif isinstance(hv, (int, float)) and isinstance(sv, (int, float)) and hv and sv:
                better = (sv / hv) if lower_better(m) else (hv / sv)
                ratio = f"{better:.1f}×"
            else:
                ratio = "n/a"
            fmt = lambda v: f"{v:,.1f}" if isinstance(v, (int, float)) else "failed"
            out.append(f"| {label} | {m} | {fmt(hv)} | {fmt(sv)} | {ratio} |")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
