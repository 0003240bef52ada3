#!/usr/bin/env bash
# Runs every test: unit tests, the integration suite (real server over HTTP on temporary
# RocksDB directories), the real-client acceptance tests (matrix-nio from PyPI, matrix-js-sdk
# from npm, matrix-rust-sdk from crates.io), federation against a real Synapse (from PyPI) and, when an Element Web bundle is at hand, the real-browser test (tests/browser/:
# Element Web in headless Chromium). The bundle comes from ELEMENT_WEB_DIR, else from
# $HOME/.cache/element-web/webapp where tests/browser/build-element-web.sh puts it; without
# one only the browser flows that need no bundle run (Hearth's own OAuth 2.0 pages).
# Builds go to $CARGO_TARGET_DIR, by default a cache outside the checkout.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}
"$here/packaging/deps.sh" --tests
# deps.sh installed coturn: its test must run, not skip.
export HEARTH_TEST_REQUIRE_COTURN=1
# The federation tests against a real Synapse (tests/it/federation_synapse.rs) use Synapse
# 1.163.2 from PyPI in a virtualenv, created here when missing; they must run, not skip.
export HEARTH_SYNAPSE_VENV=${HEARTH_SYNAPSE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth-bench/synapse-venv}
if ! "$HEARTH_SYNAPSE_VENV/bin/python" -c "import synapse" 2>/dev/null; then
    echo "installing Synapse 1.163.2 from PyPI into $HEARTH_SYNAPSE_VENV" >&2
    rm -rf "$HEARTH_SYNAPSE_VENV"
    if ! python3 -m venv "$HEARTH_SYNAPSE_VENV" >/dev/null 2>&1; then
        # Debian ships venv/ensurepip separately.
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt-get install -y -qq python3-venv >/dev/null 2>&1 || apt-get install -y -qq "python${pyver}-venv" >/dev/null
        rm -rf "$HEARTH_SYNAPSE_VENV"
        python3 -m venv "$HEARTH_SYNAPSE_VENV"
    fi
    "$HEARTH_SYNAPSE_VENV/bin/pip" install -q --disable-pip-version-check "matrix-synapse==1.163.2"
fi
export HEARTH_TEST_REQUIRE_SYNAPSE=1
cd "$here"
cargo build --locked --bin hearth --tests
cargo test --locked --lib --test it
# The matrix-rust-sdk client (tests/rust-sdk, its own crate and lock file) builds into a cache of
# its own: about 20 minutes the first time on 2 cores, seconds after that.
rust_sdk_target=${HEARTH_RUST_SDK_TARGET:-$HOME/.cache/hearth-rust-sdk-target}
CARGO_TARGET_DIR="$rust_sdk_target" cargo build --locked --manifest-path "$here/tests/rust-sdk/Cargo.toml"
HEARTH_RUST_SDK_BIN="$rust_sdk_target/debug/hearth-rust-sdk-test" \
    HEARTH_BIN="$CARGO_TARGET_DIR/debug/hearth" "$here/tests/clients/run.sh"

bundle=${ELEMENT_WEB_DIR:-$HOME/.cache/element-web/webapp}
if [ -f "$bundle/index.html" ]; then
    ELEMENT_WEB_DIR="$bundle" HEARTH_BIN="$CARGO_TARGET_DIR/debug/hearth" "$here/tests/browser/run.sh"
else
    echo "browser: no Element Web bundle at $bundle (see tests/browser/build-element-web.sh): standalone flows only"
    env -u ELEMENT_WEB_DIR HEARTH_BIN="$CARGO_TARGET_DIR/debug/hearth" "$here/tests/browser/run.sh"
fi
