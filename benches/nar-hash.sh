#!/usr/bin/env bash
# `srcstore hash --nix --no-index` (one reading pass) side by side with `nix hash path` on the
# trees given, in one run: interleaved rounds (the order flips every round), warm page cache,
# medians and the ratio srcstore/nix. Checks first that both give the same NAR hash. Prints a
# Markdown table on stdout, progress on stderr. Nothing here asserts a target.
#
#   benches/nar-hash.sh [ROUNDS] [DIR...]   ROUNDS: default 15; DIR: default the 20,000-file
#                                           corpus of ../../shared/gen-corpus-synth.py
# Environment: SRCSTORE, REV (see binary.sh), BENCH_TMP, KEEP (see daemon.sh).
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=$(cd "$here/../../shared" && pwd)
log() { echo "nar-hash.sh: $*" >&2; }
ROUNDS=${1:-15}
shift || true
source "$here/binary.sh"
source "$here/daemon.sh"
scratch nar-hash
trees=("$@")
if [ ${#trees[@]} = 0 ]; then
  log "creating the corpus under $T"
  python3 "$shared/gen-corpus-synth.py" "$T/corpus" >/dev/null
  trees=("$T/corpus")
fi
ss_nix() { "$B" hash --nix --no-ignore --no-index "$1"; }
nix_hash() { nix --extra-experimental-features nix-command hash path "$1"; }
for d in "${trees[@]}"; do
  ours=$("$B" hash --nix --json --no-ignore --no-index "$d" | sed -E 's/.*"nar_hash":"sha256:([0-9a-z]+)".*/\1/')
  theirs=$(nix --extra-experimental-features nix-command hash path --base32 "$d")
  [ "$ours" = "$theirs" ] || { log "$d: srcstore NAR hash $ours, nix $theirs"; exit 1; }
done
sync
log "1 warm-up + $ROUNDS rounds"
for r in $(seq 0 "$ROUNDS"); do
  if (( r % 2 )); then order=(nix_hash ss_nix); else order=(ss_nix nix_hash); fi
  for d in "${trees[@]}"; do
    for c in "${order[@]}"; do
      if [ "$r" = 0 ]; then "$c" "$d" >/dev/null; else tm "$d:$c" "$c" "$d"; fi
    done
  done
done
echo "$(date -u +%F), srcstore $version, $(nproc) cores, $(nix --version). Medians of $ROUNDS interleaved rounds."
echo
echo "| tree | files | MB | \`hash --nix --no-index\` (ms) | \`nix hash path\` (ms) | ratio |"
echo "|---|---:|---:|---:|---:|---:|"
for d in "${trees[@]}"; do
  j=$("$B" hash --json --no-ignore --no-index "$d")
  files=$(echo "$j" | sed -E 's/.*"files":([0-9]+).*/\1/')
  mb=$(echo "$j" | sed -E 's/.*"bytes":([0-9]+).*/\1/' | awk '{printf "%.0f", $1/1e6}')
  a=$(echo "${S[$d:ss_nix]}" | med); b=$(echo "${S[$d:nix_hash]}" | med)
  echo "| $(basename "$d") | $files | $mb | $(msof "$a") | $(msof "$b") | $(ratio "$a" "$b") |"
done
