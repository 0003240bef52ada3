#!/usr/bin/env bash
# Runs every test: unit tests, the integration suite (real server over HTTP on temporary
# RocksDB directories) and the real-client acceptance test (matrix-nio from PyPI).
# Builds go to $CARGO_TARGET_DIR, by default a cache outside the checkout.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}
"$here/packaging/deps.sh"
cd "$here"
cargo build --locked --bin hearth --tests
cargo test --locked --lib --test it
HEARTH_BIN="$CARGO_TARGET_DIR/debug/hearth" "$here/tests/clients/run.sh"
