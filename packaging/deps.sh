#!/usr/bin/env bash
# Installs what building Hearth needs on Debian/Ubuntu: a C/C++ compiler for RocksDB, and
# clang/libclang for its bindings. With --tests (tests/run.sh), also what the tests run: coturn
# for the TURN test. Needs a Rust toolchain (>= 1.89) already (https://rustup.rs).
set -euo pipefail
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v clang >/dev/null 2>&1 || missing+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# coturn: the TURN test (tests/it/people.rs) runs a real turnserver and turnutils_uclient.
if [ "${1:-}" = "--tests" ]; then
  command -v turnserver >/dev/null 2>&1 && command -v turnutils_uclient >/dev/null 2>&1 || missing+=(coturn)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing build dependencies: ${missing[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust 1.89 or newer (https://rustup.rs), then run this again" >&2
  exit 1
fi
