#!/usr/bin/env bash
# Store mode, side by side with Nix in one run (medians of interleaved rounds, ratios):
#   1. one-file edit -> new valid /nix/store/<h>-source: `srcstore path --store` against
#      `nix-store --add` of the same tree, with the edit at the start, the middle and the end of
#      the NAR; how much the store grows per edit (the edited file and the farm's directories);
#   2. one-file edit -> `nix build "path:$(srcstore path --store)"` of a flake that walks the
#      corpus, against stock `nix build` of the same flake in the same dirty tree (`path:` and
#      `git+file:`) and against hook mode (`nix-build` with `src` a snapshot of the view);
#   3. the NAR re-hash alone after a one-file edit, p50 and worst, on a 100,000-file tree.
# Usage: benches/store.sh [ROUNDS]   (root; needs scripts/setup-machine; builds the release binary)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd); shared=$(cd "$repo/../shared" && pwd)
N=${1:-5}
(cd "$repo" && cargo build --release --locked --quiet)
B=$repo/target/release/srcstore
NIX=(nix --extra-experimental-features "nix-command flakes")
T=$(mktemp -d /var/tmp/storebench.XXXX)
daemons=()
trap 'for d in "${daemons[@]}"; do kill "$d" 2>/dev/null; wait "$d" 2>/dev/null; done; rm -rf "$T"' EXIT
ms() { local s=$EPOCHREALTIME; "$@" >/dev/null 2>&1; local e=$EPOCHREALTIME; echo $(( (${e/./} - ${s/./}) / 1000 )); }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
worst() { printf '%s\n' "$@" | sort -n | tail -1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
serve() { # serve DIR LOG: a store-mode daemon, up and done with its first publication
  SRCSTORE_LOG=debug,fuser=error "$B" mount --store --allow-other --mountpoint "$1.mnt" "$1" 2>"$2" & daemons+=($!)
  for _ in $(seq 600); do "$B" path "$1" >/dev/null 2>&1 && break; sleep 0.1; done
  "$B" path --store "$1" >/dev/null
}

C=$T/corpus
python3 "$shared/gen-corpus-synth.py" "$C" >/dev/null
sync
serve "$C" "$T/corpus.log"
files=$(cd "$C" && find . -type f | LC_ALL=C sort)
at() { echo "$C/$(echo "$files" | sed -n "$1p")"; }
echo "## 1. one-file edit -> new valid store path (ms, median of $N interleaved rounds)"
echo "| edit in the NAR | srcstore path --store | nix-store --add | ratio | store growth per edit |"
echo "|---|---:|---:|---:|---:|"
for where in start:12 middle:10000 end:20000; do
  f=$(at "${where#*:}"); ss=(); add=(); grow=()
  for i in $(seq 1 "$N"); do
    printf z >>"$f"; ss+=("$(ms "$B" path --store "$C")")
    p=$("$B" path --store "$C")
    # The farm's own blocks (its directories) and the one file copied.
    grow+=($(( $(find "$p" -type d -printf '%b\n' | awk '{s+=$1} END{print s*512}') + $(stat -c %s "$f") )))
    printf y >>"$f"; add+=("$(ms nix-store --add "$C")")
  done
  echo "| ${where%%:*} | $(med "${ss[@]}") | $(med "${add[@]}") | $(ratio "$(med "${add[@]}")" "$(med "${ss[@]}")")x faster | $(( $(med "${grow[@]}") / 1024 )) KiB |"
done
echo
echo "The floor of one publication: the farm's links and directories (files made, from the log)"
echo "beside the NAR re-hash from the first edit on (NAR hashed), the two run at once:"
grep -E "files made in|NAR hashed in|published in" "$T/corpus.log" | tail -"$((3 * N))" |
  awk '{t=$NF; v=t+0; if (t ~ /ms$/) v=v; else if (t ~ /µs$/) v=v/1000; else v=v*1000; k=$2" "$3;
        a[k]=a[k]" "v} END{for (k in a) print "- "k": "a[k]" ms"}' | sort

echo; echo "## 2. one-file edit -> nix build of the project's flake (ms, median of $N rounds)"
BB=$(mkdir -p "$T/bb/bin" && cp "$(command -v busybox)" "$T/bb/bin/" &&
  (cd "$T/bb/bin" && for a in $(./busybox --list); do [ "$a" = busybox ] || ln -s busybox "$a"; done) &&
  nix-store --add "$T/bb")
nix-store --add-root "$T/bb.root" --indirect -r "$BB" >/dev/null
cat >"$C/flake.nix" <<NIX
{
  inputs.bb = { url = "path:$BB"; flake = false; };
  outputs = { self, bb }: {
    packages.x86_64-linux.default = derivation {
      name = "walk"; system = "x86_64-linux"; builder = "\${bb}/bin/sh"; PATH = "\${bb}/bin";
      args = [ "-c" "find \${self}/ -type f | wc -l > \$out" ];
    };
  };
}
NIX
"${NIX[@]}" flake lock "$C" >/dev/null 2>&1
(cd "$C" && git init -q && git add -A >/dev/null && git -c user.name=b -c user.email=b@b commit -qm c)
cat >"$T/walk.nix" <<NIX
{ src }: let bb = builtins.storePath "$BB"; in derivation { name = "walk"; system = builtins.currentSystem;
  builder = "\${bb}/bin/sh"; PATH = "\${bb}/bin"; inherit src; args = [ "-c" "find \$src/ -type f | wc -l > \$out" ]; }
NIX
printf '#!/bin/sh\nexec %s nix hook "$@"\n' "$B" >"$T/hook"; chmod 755 "$T/hook"
f=$(at 10000); st=(); sg=(); ss=(); hk=()
# Each timed from the edit on: asking for the path is part of the build.
build() { "${NIX[@]}" build --no-link "$@"; }
store_build() { build "path:$("$B" path --store "$C")"; }
hook_build() { nix-build --no-out-link --option pre-build-hook "$T/hook" "$T/walk.nix" --argstr src "$("$B" path "$C")"; }
for i in $(seq 1 "$N"); do
  printf a >>"$f"; ss+=("$(ms store_build)")
  printf b >>"$f"; st+=("$(ms build "path:$C")")
  printf c >>"$f"; sg+=("$(ms build "git+file://$C")")
  printf d >>"$f"; hk+=("$(ms hook_build)")
done
echo "| build | median | ratio to store mode |"
echo "|---|---:|---:|"
echo "| srcstore store mode: nix build path:\$(srcstore path --store) | $(med "${ss[@]}") | 1.00 |"
echo "| stock: nix build path:DIR (dirty tree) | $(med "${st[@]}") | $(ratio "$(med "${st[@]}")" "$(med "${ss[@]}")") |"
echo "| stock: nix build git+file://DIR (dirty tree) | $(med "${sg[@]}") | $(ratio "$(med "${sg[@]}")" "$(med "${ss[@]}")") |"
echo "| srcstore hook mode: nix-build, src a snapshot of the view | $(med "${hk[@]}") | $(ratio "$(med "${hk[@]}")" "$(med "${ss[@]}")") |"

echo; echo "## 3. NAR re-hash after a one-file edit, 100,000 files ($N edits at random places)"
M=$T/many
python3 "$here/gen-many-files.py" "$M" 100000 >/dev/null
sync
serve "$M" "$T/many.log"
mfiles=$(cd "$M" && find . -type f | LC_ALL=C sort)
for i in $(seq 1 "$N"); do
  g="$M/$(echo "$mfiles" | shuf -n 1)"; printf z >>"$g"; "$B" path --store "$M" >/dev/null
done
hs=($(grep "NAR hashed in" "$T/many.log" | tail -"$N" | awk '{t=$NF; v=t+0; if (t ~ /µs$/) v=v/1000; else if (t !~ /ms$/) v=v*1000; printf "%d\n", v}'))
echo "| p50 | worst | all (ms) |"
echo "|---:|---:|---|"
echo "| $(med "${hs[@]}") | $(worst "${hs[@]}") | ${hs[*]} |"
