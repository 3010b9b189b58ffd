#!/usr/bin/env bash
# srcstore with Nix, on the 20,000-file corpus:
#   1. one-file edit -> sandboxed build that walks every file, side by side with stock Nix and
#      the do-it-yourself hash + bindfs + hook (../shared/peer-bench.sh does the interleaving);
#   2. a no-change rebuild (same snapshot path: evaluation only, Nix's cache hit), stock vs srcstore;
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
python3 "$shared/gen-corpus-synth.py" "$T/corpus" >/dev/null
mkdir -p "$T/bb/bin"; cp "$(command -v busybox)" "$T/bb/bin/"
(cd "$T/bb/bin" && for a in $(./busybox --list); do [ "$a" = busybox ] || ln -s busybox "$a"; done)
BB=$(nix-store --add "$T/bb")
cat > "$T/walk.nix" <<NIX
{ src }: let bb = builtins.storePath "$BB"; in derivation { name = "walk"; system = builtins.currentSystem;
  builder = "\${bb}/bin/sh"; PATH = "\${bb}/bin"; inherit src; args = [ "-c" "find \$src/ -type f | wc -l > \$out" ]; }
NIX
cat > "$T/stock.nix" <<NIX
let bb = builtins.storePath "$BB"; in derivation { name = "walk"; system = builtins.currentSystem;
  builder = "\${bb}/bin/sh"; PATH = "\${bb}/bin"; src = $T/corpus; args = [ "-c" "find \$src/ -type f | wc -l > \$out" ]; }
NIX
printf '#!/bin/sh\nexec %s nix hook "$@"\n' "$B" > "$T/hook"; chmod 755 "$T/hook"
"$B" mount --allow-other --mountpoint "$T/m" "$T/corpus" 2>"$T/log" & daemon=$!
for _ in $(seq 300); do "$B" path "$T/corpus" >/dev/null 2>&1 && break; sleep 0.2; done
P=$("$B" path "$T/corpus")
nix-build --no-out-link --option pre-build-hook "$T/hook" "$T/walk.nix" --argstr src "$P" >/dev/null 2>&1
nix-build --no-out-link "$T/stock.nix" >/dev/null 2>&1

echo; echo "## 2. no-change rebuild (everything built already)"
hyperfine -N --warmup 1 --runs "$N" --export-markdown "$T/nochange.md" \
  -n stock "nix-build --no-out-link $T/stock.nix" \
  -n srcstore "sh -c 'nix-build --no-out-link --option pre-build-hook $T/hook $T/walk.nix --argstr src \$($B path $T/corpus)'" >/dev/null
cat "$T/nochange.md"

echo; echo "## 3. the hook's own cost per build"
drv=$(nix-instantiate "$T/walk.nix" --argstr src "$P" 2>/dev/null)
mkdir -p "$T/chroot"
hyperfine -N --warmup 3 --runs 30 --export-markdown "$T/hook.md" -n "srcstore nix hook" "$B nix hook $drv $T/chroot" >/dev/null
cat "$T/hook.md"
