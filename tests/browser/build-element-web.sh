#!/usr/bin/env bash
# Builds Element Web 1.11.88 into a cache outside the checkout, for tests/browser/run.sh.
#
# Element Web is in no package registry, so its source comes from a git snapshot of a fork
# that carries upstream's release commits: github.com/verji/element-web-v2 (a plain
# `git clone` of it, or the git directory an agent's `fetch github:verji/element-web-v2`
# returns). Pass that git directory as the first argument or as ELEMENT_WEB_SNAPSHOT:
#
#   tests/browser/build-element-web.sh /path/to/element-web-v2/.git
#   ELEMENT_WEB_DIR=$HOME/.cache/element-web/webapp tests/browser/run.sh
#
# What it does, all under ${ELEMENT_WEB_CACHE:-$HOME/.cache/element-web}:
#   src/     the tree of the commit titled "v1.11.88" (blobs absent from a partial snapshot,
#            such as a >4 MiB test fixture, are left out: the build does not need them)
#   tools/   Node.js 22 and yarn 1 from npm (the `node` npm package ships the binary)
#   webapp/  the build output (`yarn build`, unminified: CI_PACKAGE=1 skips Terser)
# package.json gets a yarn resolution pointing the npm placeholder package `fs` (gone from
# the registry, pulled in by webpack-version-file-plugin) at an empty local package.
# Takes 5-15 minutes on 2 cores; re-running starts from a fresh src/.
set -euo pipefail

VERSION_TAG=v1.11.88
SNAP="${1:-${ELEMENT_WEB_SNAPSHOT:-}}"
CACHE="${ELEMENT_WEB_CACHE:-$HOME/.cache/element-web}"

if [ -z "$SNAP" ]; then
    echo "usage: $0 GIT_DIR_OF_verji/element-web-v2   (or set ELEMENT_WEB_SNAPSHOT)" >&2
    exit 2
fi
git -C "$SNAP" rev-parse --git-dir >/dev/null 2>&1 || { echo "not a git repository: $SNAP" >&2; exit 2; }

# --- 1. the release commit's tree --------------------------------------------------
COMMIT="$(git -C "$SNAP" log --all --format='%H %s' | awk -v t="$VERSION_TAG" '$2 == t && NF == 2 && !found { print $1; found = 1 }')"
[ -n "$COMMIT" ] || { echo "no commit titled $VERSION_TAG in $SNAP" >&2; exit 1; }
echo "element-web: $VERSION_TAG is commit $COMMIT"

rm -rf "$CACHE/src"
mkdir -p "$CACHE/src"
# Paths whose blob the snapshot lacks are excluded from the archive.
excludes=()
while read -r path; do
    excludes+=(":(exclude)$path")
done < <(git -C "$SNAP" ls-tree -r "$COMMIT" | awk '$2 == "blob"' >"$CACHE/tree.txt"
    cut -f1 "$CACHE/tree.txt" | awk '{ print $3 }' | git -C "$SNAP" cat-file --batch-check \
        | awk '$2 == "missing" { print $1 }' >"$CACHE/missing.txt"
    awk -F'\t' 'NR == FNR { miss[$1] = 1; next } { split($1, a, " "); if (a[3] in miss) print $2 }' \
        "$CACHE/missing.txt" "$CACHE/tree.txt"
    rm -f "$CACHE/tree.txt" "$CACHE/missing.txt")
[ "${#excludes[@]}" -eq 0 ] || echo "element-web: leaving out ${#excludes[@]} file(s) missing from the snapshot"
git -C "$SNAP" archive "$COMMIT" -- . "${excludes[@]}" 2>/dev/null | tar -x -C "$CACHE/src"
[ -f "$CACHE/src/package.json" ] || { echo "export of $COMMIT failed" >&2; exit 1; }

# --- 2. Node.js 22 and yarn 1, from npm, only for this build -----------------------
TOOLS="$CACHE/tools"
if [ ! -x "$TOOLS/node_modules/.bin/node" ] || [ ! -e "$TOOLS/node_modules/.bin/yarn" ] \
    || ! "$TOOLS/node_modules/.bin/node" -e 'process.exit(process.versions.node.startsWith("22.") ? 0 : 1)'; then
    mkdir -p "$TOOLS"
    npm install --no-audit --no-fund --prefix "$TOOLS" node@22 yarn@1
fi
export PATH="$TOOLS/node_modules/.bin:$PATH"
echo "element-web: node $(node --version), yarn $(yarn --version)"

# --- 3. the `fs` placeholder -------------------------------------------------------
cd "$CACHE/src"
mkdir -p empty-fs
printf '{\n  "name": "fs",\n  "version": "0.0.1-security",\n  "description": "empty stand-in for the npm placeholder package fs"\n}\n' >empty-fs/package.json
echo 'module.exports = {};' >empty-fs/index.js
node -e '
const fs = require("fs");
const p = JSON.parse(fs.readFileSync("package.json", "utf8"));
p.resolutions = Object.assign({}, p.resolutions, { fs: "file:./empty-fs" });
fs.writeFileSync("package.json", JSON.stringify(p, null, 4) + "\n");
'

# --- 4. install and build ----------------------------------------------------------
export NODE_OPTIONS="${NODE_OPTIONS:---max-old-space-size=8192}"
yarn install --non-interactive --network-timeout 600000
CI_PACKAGE="${CI_PACKAGE-1}" yarn build
[ -f webapp/index.html ] || { echo "yarn build produced no webapp/index.html" >&2; exit 1; }

rm -rf "$CACHE/webapp"
mv webapp "$CACHE/webapp"
echo "element-web: built $CACHE/webapp"
echo "run the browser tests with: ELEMENT_WEB_DIR=$CACHE/webapp tests/browser/run.sh"
