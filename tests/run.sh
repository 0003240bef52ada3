#!/usr/bin/env bash
# Runs every test: unit tests, the integration suite (real server over HTTP on temporary
# RocksDB directories), the real-client acceptance tests (matrix-nio from PyPI, matrix-js-sdk
# from npm, matrix-rust-sdk from crates.io) and, when an Element Web bundle is at hand, the real-browser test (tests/browser/:
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
