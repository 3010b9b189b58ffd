#!/usr/bin/env bash
# srcstore with Nix, on the 20,000-file corpus:
#   1. one-file edit -> sandboxed build that walks every file, side by side with stock Nix and
#      the do-it-yourself hash + bindfs + hook (../shared/peer-bench.sh does the interleaving);
#   2. the same against the floor: the corpus bind-mounted natively into the sandbox by a hook
#      (no copy, no FUSE, no hash), and a no-change rebuild (Nix's cache hit), stock vs srcstore,
#      in interleaved rounds, medians;
#   3. the hook's own cost per build (`srcstore nix hook DRV CHROOT` on the build's .drv).
# Usage: benches/nix.sh [ROUNDS]   (needs scripts/setup-machine; builds the release binary)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd); shared=$(cd "$repo/../shared" && pwd)
N=${1:-5}
(cd "$repo" && cargo build --release --locked --quiet)
B=$repo/target/release/srcstore
command -v hyperfine >/dev/null || { apt-get install -y -qq hyperfine >/dev/null; }

echo "## 1. one-file edit -> sandboxed build (peer-bench.sh, $N rounds)"
bash "$shared/peer-bench.sh" "$N" "$B"

T=$(mktemp -d /var/tmp/nixbench.XXXX); trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$T"' EXIT
C=$T/corpus
python3 "$shared/gen-corpus-synth.py" "$C" >/dev/null
mkdir -p "$T/bb/bin"; cp "$(command -v busybox)" "$T/bb/bin/"
(cd "$T/bb/bin" && for a in $(./busybox --list); do [ "$a" = busybox ] || ln -s busybox "$a"; done)
BB=$(nix-store --add "$T/bb")
# `salt` makes the floor's derivation new for every round, as a new snapshot path does.
cat > "$T/walk.nix" <<NIX
{ src, salt ? "" }: let bb = builtins.storePath "$BB"; in derivation { name = "walk"; system = builtins.currentSystem;
  builder = "\${bb}/bin/sh"; PATH = "\${bb}/bin"; inherit src salt; args = [ "-c" "find \$src/ -type f | wc -l > \$out" ]; }
NIX
cat > "$T/stock.nix" <<NIX
let bb = builtins.storePath "$BB"; in derivation { name = "walk"; system = builtins.currentSystem;
  builder = "\${bb}/bin/sh"; PATH = "\${bb}/bin"; src = $C; args = [ "-c" "find \$src/ -type f | wc -l > \$out" ]; }
NIX
printf '#!/bin/sh\nexec %s nix hook "$@"\n' "$B" > "$T/hook"; chmod 755 "$T/hook"
printf '#!/bin/sh\nprintf "extra-sandbox-paths\\n%%s\\n\\n" %s\n' "$C" > "$T/floorhook"; chmod 755 "$T/floorhook"
"$B" mount --allow-other --mountpoint "$T/m" "$C" 2>"$T/log" & daemon=$!
for _ in $(seq 300); do "$B" path "$C" >/dev/null 2>&1 && break; sleep 0.2; done
P=$("$B" path "$C")
nix-build --no-out-link --option pre-build-hook "$T/hook" "$T/walk.nix" --argstr src "$P" >/dev/null 2>&1
nix-build --no-out-link "$T/stock.nix" >/dev/null 2>&1

check() { [ "$(cat "$1" 2>/dev/null)" = 20000 ] || { echo "$2: the build did not see 20000 files" >&2; exit 1; }; }
floor() { check "$(nix-build --no-out-link --option pre-build-hook "$T/floorhook" "$T/walk.nix" \
  --argstr src "$C" --argstr salt "$1" 2>"$T/err")" floor; }
srcstore() { check "$(nix-build --no-out-link --option pre-build-hook "$T/hook" "$T/walk.nix" \
  --argstr src "$("$B" path "$C")" 2>"$T/err")" srcstore; }
stock() { check "$(nix-build --no-out-link "$T/stock.nix" 2>"$T/err")" stock; }
ms() { local s=$EPOCHREALTIME; "$@"; local e=$EPOCHREALTIME; echo $(( (${e/./} - ${s/./}) / 1000 )); }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
f=$(find "$C" -name '*.bin' | sort | sed -n 11p)
fl=(); ss=(); st0=(); ss0=()
for i in $(seq 1 "$N"); do
  fl+=("$(ms floor "$i.$RANDOM")")
  printf 'z' >> "$f"; ss+=("$(ms srcstore)")
  st0+=("$(ms stock)")
  ss0+=("$(ms srcstore)")
done
echo; echo "## 2. against the floor, and a no-change rebuild (ms, median of $N interleaved rounds)"
echo "| build | median | rounds |"
echo "|---|---:|---|"
echo "| floor: corpus bind-mounted natively by a hook, new derivation | $(med "${fl[@]}") | ${fl[*]} |"
echo "| srcstore: one-file edit, new snapshot | $(med "${ss[@]}") | ${ss[*]} |"
echo "| stock, nothing changed (copies and hashes the tree, cache hit) | $(med "${st0[@]}") | ${st0[*]} |"
echo "| srcstore, nothing changed (same snapshot path, cache hit) | $(med "${ss0[@]}") | ${ss0[*]} |"
awk -v a="$(med "${ss[@]}")" -v b="$(med "${fl[@]}")" 'BEGIN{printf "\nsrcstore / floor: %.2f\n", a/b}'

echo; echo "## 3. the hook's own cost per build"
drv=$(nix-instantiate "$T/walk.nix" --argstr src "$("$B" path "$C")" 2>/dev/null)
mkdir -p "$T/chroot"
hyperfine -N --warmup 3 --runs 30 --export-markdown "$T/hook.md" -n "srcstore nix hook" "$B nix hook $drv $T/chroot" >/dev/null
cat "$T/hook.md"
