#!/usr/bin/env bash
# Real-browser test: Element Web (a prebuilt bundle) in headless Chromium against Hearth.
#
#   ELEMENT_WEB_DIR=$HOME/.cache/element-web/webapp tests/browser/run.sh   # all flows
#   BROWSER_TESTS=dm,verify ELEMENT_WEB_DIR=... tests/browser/run.sh       # some of them
#
# ELEMENT_WEB_DIR: the Element Web bundle (build it with tests/browser/build-element-web.sh).
# Unset, only the standalone flows run (those that need no bundle: `oauth`, Hearth's own OAuth
# 2.0 sign-up and consent pages).
# HEARTH_BIN: the server (default ${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth);
# nothing is built here.
# Installs what it lacks: playwright-core (tests/browser/package.json) into
# ${HEARTH_BROWSER_JS:-$HOME/.cache/hearth-browser-js}, and Debian's chromium with apt-get.
#
# Starts hearth on a free loopback port with a temp data dir, then runner.mjs serves a copy
# of the bundle's files (config.json overlaid to point at that hearth) on another loopback
# port and runs the flows of flows.mjs, each in fresh browser contexts. The browser may reach
# only those two origins. Bounds: BROWSER_TEST_TIMEOUT_S per flow (300), BROWSER_RUN_TIMEOUT_S
# for the whole run (1500). The hearth log, and on failure screenshots, console logs and the
# 4xx/5xx that hearth answered, are kept in the artifacts dir printed at the start.
# Always stops the server; ends with `browser: N passed, N failed`; exit 0 only if all passed.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
JSDIR="${HEARTH_BROWSER_JS:-$HOME/.cache/hearth-browser-js}"
HEARTH_BIN="${HEARTH_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
TEST_TIMEOUT_S="${BROWSER_TEST_TIMEOUT_S:-300}"
RUN_TIMEOUT_S="${BROWSER_RUN_TIMEOUT_S:-1500}"
READY_TIMEOUT_S=30

if [ -z "${ELEMENT_WEB_DIR:-}" ]; then
    echo "browser: ELEMENT_WEB_DIR is not set: only the flows that need no Element Web bundle run" \
        "(build the bundle with tests/browser/build-element-web.sh, then ELEMENT_WEB_DIR=\$HOME/.cache/element-web/webapp $0)"
fi

SERVER_PID=""
WORK=""
ARTIFACTS=""
RESULTS=""
NTESTS=4 # until runner.mjs --list says

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

finish() { # finish PASSED FAILED: stop everything, print the closing line, exit
    cleanup
    echo "browser: $1 passed, $2 failed"
    [ "$2" -eq 0 ] && [ "$1" -gt 0 ] && exit 0
    exit 1
}
die() { # setup failed: every flow counts as failed
    echo "browser setup: $*" >&2
    finish 0 "$NTESTS"
}

# --- bundle, node, playwright-core, chromium ----------------------------------------
if [ -n "${ELEMENT_WEB_DIR:-}" ]; then
    [ -f "$ELEMENT_WEB_DIR/index.html" ] || die "ELEMENT_WEB_DIR=$ELEMENT_WEB_DIR has no index.html"
    ELEMENT_WEB_DIR="$(cd "$ELEMENT_WEB_DIR" && pwd)"
fi
ELEMENT_WEB_DIR="${ELEMENT_WEB_DIR:-}"

command -v node >/dev/null || die "node not found (need Node.js >= 18)"
node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' \
    || die "node $(node --version) is too old (need >= 18)"
if [ -n "$ELEMENT_WEB_DIR" ]; then
    NTESTS="$(BROWSER_TESTS= node "$HERE/runner.mjs" --list | wc -w)"
else
    NTESTS="$(BROWSER_TESTS= node "$HERE/runner.mjs" --list-standalone | wc -w)"
fi
if [ -n "${BROWSER_TESTS:-}" ]; then
    NTESTS="$(echo "$BROWSER_TESTS" | tr ',' '\n' | grep -c .)"
fi

if ! cmp -s "$HERE/package.json" "$JSDIR/package.json" \
    || [ ! -f "$JSDIR/node_modules/playwright-core/package.json" ]; then
    echo "browser: installing playwright-core into $JSDIR"
    mkdir -p "$JSDIR" && cp "$HERE/package.json" "$JSDIR/package.json" && rm -f "$JSDIR/package-lock.json" \
        && (cd "$JSDIR" && npm install --no-audit --no-fund --silent --no-progress >/dev/null) \
        || { rm -f "$JSDIR/package.json"; die "npm install of tests/browser/package.json in $JSDIR failed"; }
fi

if [ ! -x "$CHROMIUM" ]; then
    if [ "$CHROMIUM" = /usr/bin/chromium ] && command -v apt-get >/dev/null; then
        echo "browser: installing Debian's chromium with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null 2>&1 \
            || die "apt-get install chromium failed"
    fi
    [ -x "$CHROMIUM" ] || die "no browser at $CHROMIUM"
fi

# --- hearth --------------------------------------------------------------------------
[ -x "$HEARTH_BIN" ] || die "hearth binary not found at $HEARTH_BIN (set HEARTH_BIN or build it)"
ARTIFACTS="$(mktemp -d "${TMPDIR:-/tmp}/hearth-browser.XXXXXX")" || die "mktemp failed"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/hearth-browser-data.XXXXXX")" || die "mktemp failed"
RESULTS="$ARTIFACTS/results.json"
echo "browser: artifacts (hearth log; on failure screenshots, console logs, HTTP errors) in $ARTIFACTS"

free_port() {
    node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
wait_ready() { # wait_ready URL: 0 once /versions answers 200; 1 if the server died or timed out
    node - "$1" "$SERVER_PID" "$READY_TIMEOUT_S" <<'EOF'
const [url, pid, limit] = process.argv.slice(2);
const deadline = Date.now() + 1000 * Number(limit);
(async () => {
    while (Date.now() < deadline) {
        try { process.kill(Number(pid), 0); } catch { process.exit(1); }
        try {
            const r = await fetch(url + "/_matrix/client/versions", { signal: AbortSignal.timeout(2000) });
            if (r.status === 200) process.exit(0);
        } catch {}
        await new Promise((r) => setTimeout(r, 200));
    }
    process.exit(2);
})();
EOF
}

HS=""
for attempt in 1 2 3; do
    PORT="$(free_port)" || die "could not pick a free port"
    LOG="$ARTIFACTS/hearth.log"
    mkdir -p "$WORK/data$attempt"
    # hearth reads every HEARTH_* variable as config and refuses unknown keys: this script's
    # own HEARTH_BIN / HEARTH_BROWSER_JS must not reach it.
    env -u HEARTH_BIN -u HEARTH_BROWSER_JS \
        HEARTH_RATE_LIMITS__ENABLED=false \
        HEARTH_PASSWORDS__MEMORY_KIB=64 \
        HEARTH_PASSWORDS__ITERATIONS=1 \
        "$HEARTH_BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data$attempt" \
        --server-name localhost >"$LOG" 2>&1 </dev/null &
    SERVER_PID=$!
    if wait_ready "http://127.0.0.1:$PORT"; then
        HS="http://127.0.0.1:$PORT"
        break
    fi
    echo "browser setup: hearth did not become ready on port $PORT (attempt $attempt); log tail:" >&2
    tail -n 20 "$LOG" >&2
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
    grep -qiE 'address (already )?in use|AddrInUse' "$LOG" || break
done
[ -n "$HS" ] || die "hearth failed to start"
echo "browser: hearth $("$HEARTH_BIN" --version 2>/dev/null | head -n1) at $HS (pid $SERVER_PID), log $ARTIFACTS/hearth.log"

# --- the flows -----------------------------------------------------------------------
HS_URL="$HS" HS_SERVER_NAME=localhost ELEMENT_WEB_DIR="$ELEMENT_WEB_DIR" ARTIFACTS_DIR="$ARTIFACTS" \
    RESULTS_FILE="$RESULTS" HEARTH_BROWSER_JS="$JSDIR" CHROMIUM="$CHROMIUM" \
    BROWSER_TEST_TIMEOUT_S="$TEST_TIMEOUT_S" BROWSER_RUN_TIMEOUT_S="$RUN_TIMEOUT_S" \
    PW_EXPERIMENTAL_SERVICE_WORKER_NETWORK_EVENTS=1 \
    timeout -k 10 "$((RUN_TIMEOUT_S + 60))" node "$HERE/runner.mjs"
rc=$?
[ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "browser: the run hit its time bound and was stopped"

# Counts from the results file; a flow that never reported counts as failed.
read -r PASSED TOTAL < <(node -e '
let r = { passed: 0, total: 0 };
try { r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); } catch {}
console.log(r.passed || 0, r.total || 0);
' "$RESULTS")
[ "$TOTAL" -gt 0 ] || TOTAL="$NTESTS"
FAILED=$((TOTAL - PASSED))
[ "$rc" -eq 0 ] || [ "$FAILED" -gt 0 ] || FAILED=1 # runner failed without saying which test
finish "$PASSED" "$FAILED"
