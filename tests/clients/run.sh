#!/usr/bin/env bash
# Acceptance test of Hearth with a real Matrix client library (matrix-nio).
#
# Builds nothing: takes the server binary from $HEARTH_BIN
# (default: ${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth).
# Makes/uses a venv at ${HEARTH_CLIENTS_VENV:-$HOME/.cache/hearth-clients-venv},
# starts hearth on a free loopback port with a temp data dir, runs each client script
# (SCRIPTS below) against it, always stops the server, and ends with
# `nio: N passed, N failed` counting the scripts.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${HEARTH_CLIENTS_VENV:-$HOME/.cache/hearth-clients-venv}"
HEARTH_BIN="${HEARTH_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth}"
READY_TIMEOUT_S=30
# The client scripts, run in this order against the one server (each registers its own
# random users). nio_smoke.py: account basics; nio_sync.py: two users chatting live.
SCRIPTS=(nio_smoke.py nio_sync.py)
SCRIPT_TIMEOUT_S=90  # hard bound per script (each also bounds itself)

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
if ! "$PY" -c 'import nio' >/dev/null 2>&1; then
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
    "$PY" -m pip install -q --disable-pip-version-check matrix-nio \
        || die "pip install matrix-nio failed"
    "$PY" -c 'import nio' || die "matrix-nio not importable after install"
fi

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
    # script's own HEARTH_BIN / HEARTH_CLIENTS_VENV must not reach it.
    env -u HEARTH_BIN -u HEARTH_CLIENTS_VENV \
        HEARTH_RATE_LIMITS__ENABLED=false \
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
echo "nio: hearth at $HS (pid $SERVER_PID), matrix-nio $("$PY" -c 'import importlib.metadata as m; print(m.version("matrix-nio"))')"

# --- Run the client tests ----------------------------------------------------------
for script in "${SCRIPTS[@]}"; do
    echo "nio: --- $script ---"
    if command -v timeout >/dev/null; then
        timeout -k 5 "$SCRIPT_TIMEOUT_S" "$PY" "$HERE/$script" "$HS"
    else
        "$PY" "$HERE/$script" "$HS"
    fi
    rc=$?
    if [ "$rc" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        echo "nio: $script passed"
    else
        FAILED=$((FAILED + 1))
        echo "nio: $script FAILED (exit $rc); hearth log tail:"
        tail -n 30 "$LOG"
    fi
done
cleanup
[ "$FAILED" -eq 0 ]
finish $?
