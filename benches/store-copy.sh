#!/usr/bin/env bash
# `nix copy` of a path store mode published (a hard-link farm) to a local file binary cache,
# side by side with the same for a path `nix-store --add` made of the same tree with one byte
# changed, in one run: medians of interleaved rounds, a fresh cache each time on tmpfs
# (/dev/shm), no compression: the figure is Nix reading the path, not xz or the disk's writeback.
# Usage: benches/store-copy.sh [ROUNDS]   (root; needs scripts/setup-machine)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd); shared=$(cd "$repo/../shared" && pwd)
N=${1:-7}
(cd "$repo" && cargo build --release --locked --quiet)
B=$repo/target/release/srcstore
T=$(mktemp -d /var/tmp/storecopy.XXXX)
S=$(mktemp -d /dev/shm/storecopy.XXXX)
daemon=
trap '[ -n "$daemon" ] && kill $daemon 2>/dev/null && wait $daemon 2>/dev/null; rm -rf "$T" "$S"' EXIT
ms() { local s=$EPOCHREALTIME; "$@" >/dev/null 2>&1; local e=$EPOCHREALTIME; echo $(( (${e/./} - ${s/./}) / 1000 )); }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
copy() { nix --extra-experimental-features nix-command copy --to "file://$1?compression=none" "$2"; }

python3 "$shared/gen-corpus-synth.py" "$T/corpus" >/dev/null
cp -a "$T/corpus" "$T/copied"
printf x >>"$(find "$T/copied" -type f | LC_ALL=C sort | head -1)"
copied=$(nix-store --add "$T/copied")
"$B" mount --store --mountpoint "$T/mnt" "$T/corpus" 2>"$T/daemon.log" & daemon=$!
for _ in $(seq 600); do "$B" path "$T/corpus" >/dev/null 2>&1 && break; sleep 0.1; done
published=$("$B" path --store "$T/corpus")
sync
a=(); b=()
for i in $(seq 0 "$N"); do
  if (( i % 2 )); then
    tb=$(ms copy "$S/cb" "$copied"); rm -rf "$S/cb"; ta=$(ms copy "$S/ca" "$published"); rm -rf "$S/ca"
  else
    ta=$(ms copy "$S/ca" "$published"); rm -rf "$S/ca"; tb=$(ms copy "$S/cb" "$copied"); rm -rf "$S/cb"
  fi
  [ "$i" = 0 ] && continue # warm-up
  a+=("$ta"); b+=("$tb")
done
echo "| nix copy to file:// (ms, median of $N) | published (farm) | nix-store --add | ratio |"
echo "|---|---:|---:|---:|"
echo "| 20,000-file corpus | $(med "${a[@]}") | $(med "${b[@]}") | $(ratio "$(med "${a[@]}")" "$(med "${b[@]}")") |"
nix-store --delete "$copied" >/dev/null 2>&1 || true
