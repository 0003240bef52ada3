#!/usr/bin/env bash
# Builds Hearth in release mode and installs the `hearth` binary (to /usr/local/bin as root,
# ~/.local/bin otherwise). With --run, starts it right away on http://127.0.0.1:8008 with the
# built-in defaults: server name `localhost`, data in ./hearth-data, open registration (loopback only).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/packaging/deps.sh"
target=${CARGO_TARGET_DIR:-$here/target}
(cd "$here" && CARGO_TARGET_DIR="$target" cargo build --release --locked --bin hearth)
if [ "$(id -u)" -eq 0 ]; then dest=/usr/local/bin; else dest=$HOME/.local/bin; mkdir -p "$dest"; fi
install -m 0755 "$target/release/hearth" "$dest/hearth"
echo "installed $dest/hearth" >&2
if [ "${1:-}" = "--run" ]; then
  exec "$dest/hearth" serve
fi
