#!/usr/bin/env bash
# The compile cache volume, in real sandboxed nix-builds with build users, side by side in one
# run (interleaved rounds, medians):
#   1. Go (a program importing net/http, crypto/tls, encoding/json): a one-line edit ->
#      `srcstore path` -> sandboxed rebuild through srcstore with the volume, the build user
#      changed every round; the same rebuild with a plain native directory as the cache (build
#      users off, so that it works); `go build` outside Nix with a warm cache; and a cold build.
#      Outside Nix also `srcstore gocacheprog` against Go's own GOCACHE directory.
#   2. C with ccache (benches/gen-c-project.py: 200 units of ~300 lines, 20 headers), a one-unit
#      edit, volume vs native directory.
#   3. Zig, a one-line edit, volume vs native directory.
#   4. Writing 20,000 small files (a tar unpacked in the sandbox), volume vs native directory.
# Usage: benches/cache.sh [ROUNDS]   (needs scripts/setup-machine; builds the release binary)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd)
N=${1:-5}
log() { echo "cache.sh: $*" >&2; }
. "$here/daemon.sh"
(cd "$repo" && cargo build --release --locked --quiet)
B=$repo/target/release/srcstore
scratch cache
chmod 755 "$T"

pypkg() { python3 -c "import $1, os; print(os.path.dirname($1.__file__))"; }
GO=$(nix-store --add "$(pypkg go)"); ZIG=$(nix-store --add "$(pypkg ziglang)")
mkdir -p "$T/bb/bin"; cp "$(command -v busybox)" "$T/bb/bin/"
(cd "$T/bb/bin" && for a in $(./busybox --list); do [ "$a" = busybox ] || ln -s busybox "$a"; done)
BB=$(nix-store --add "$T/bb")
printf '#!/bin/sh\nexec %s nix hook "$@"\n' "$B" > "$T/hook"; chmod 755 "$T/hook"
NATIVE=$T/native; mkdir -p "$NATIVE"

# One expression for every language: `cache` names the function of nix/cache.nix; with
# `native`, the derivation asks for no volume and the caller binds a plain directory at
# /srcstore/cache instead. `round` makes every build a new derivation.
cat > "$T/build.nix" <<NIX
{ src, cache, script, round, native ? "", tools ? [] }:
let bb = builtins.storePath "$BB"; lib = (import $repo/nix/cache.nix).\${cache} { };
    tc = map builtins.storePath tools;
in derivation ((if native == "" then lib else builtins.removeAttrs lib [ "srcstoreCache" ]) // {
  name = "bench-\${cache}"; system = builtins.currentSystem; builder = "\${bb}/bin/sh";
  PATH = builtins.concatStringsSep ":" (map (t: "\${t}/bin") (tc ++ [ bb ])) + ":/usr/bin";
  inherit src round native;
  args = [ "-c" ". \$srcstoreCacheSetup; \${script}" ];
})
NIX

# Every build user but $1 held, so that Nix picks $1.
held=()
only_user() {
  local u uid fd
  for u in $(getent group nixbld | cut -d: -f4 | tr , ' '); do
    [ "$u" = "$1" ] && continue
    uid=$(id -u "$u"); exec {fd}>"/nix/var/nix/userpool/$uid"; flock -x "$fd"; held+=("$fd")
  done
}
release() { local fd; for fd in "${held[@]}"; do exec {fd}>&-; done; held=(); }
users=(nixbld1 nixbld7 nixbld3 nixbld9) turn=0

# nb LANG SCRIPT ROUND [native] EXTRA...: one sandboxed build.
nb() {
  local lang=$1 script=$2 round=$3 native=$4; shift 4
  local args=(--no-out-link --option pre-build-hook "$T/hook" "$T/build.nix"
    --argstr src "$SRC" --argstr cache "$lang" --argstr script "$script" --argstr round "$round"
    --arg tools "[ $TOOLS ]" "$@")
  if [ -n "$native" ]; then
    args+=(--argstr native 1 --option build-users-group '' --option extra-sandbox-paths "/srcstore/cache=$NATIVE $HOST")
  elif [ -n "$HOST" ]; then
    args+=(--option extra-sandbox-paths "$HOST")
  fi
  nix-build "${args[@]}"
}
# srcstore_build LANG SCRIPT ROUND: `srcstore path` then the build, as the round's build user.
srcstore_build() {
  SRC=$("$B" path "$PROJECT")
  only_user "${users[$(( turn++ % ${#users[@]} ))]}"
  nb "$1" "$2" "$3" ""; local rc=$?
  release; return $rc
}
native_build() { SRC=$("$B" path "$PROJECT"); nb "$1" "$2" "$3" 1; }
report() { # NAME A B: medians of S[A], S[B] and their ratio
  local a b; a=$(echo "${S[$2]}" | med); b=$(echo "${S[$3]}" | med)
  printf '%-44s %10s ms %10s ms   %s\n' "$1" "$(msof "$a")" "$(msof "$b")" "$(ratio "$a" "$b")"
}
echo "## $N rounds, medians: (A) (B) A/B"

## 1. Go
PROJECT=$T/goapp; mkdir -p "$PROJECT"
printf 'module example.com/app\n\ngo 1.24\n' > "$PROJECT/go.mod"
cp "$repo/tests/fixtures/goapp/main.go" "$PROJECT/"
msg() { printf 'package main\n\nconst Msg = "%s"\n' "$1" > "$PROJECT/msg.go"; }
msg start
start_daemon "$B" "$PROJECT" "$T/mnt-go" --allow-other
# The release binary is not static: the host's libraries let it run as the sandbox's
# `srcstore gocacheprog` (root's static copy needs none).
TOOLS="\"$GO\""; HOST="/usr /lib /lib64"
GOS="export GOROOT=$GO CGO_ENABLED=0; cd /srcstore/src; go build -o \$out ."
outside() { (cd "$PROJECT" && GOROOT=$GO GOCACHE=$T/go-outside GOFLAGS=-trimpath GOTOOLCHAIN=local CGO_ENABLED=0 "$GO/bin/go" build -o "$T/app-outside" .); }
outside_prog() { (cd "$PROJECT" && GOROOT=$GO GOCACHEPROG="$B gocacheprog --dir $T/go-prog-outside" GOFLAGS=-trimpath GOTOOLCHAIN=local CGO_ENABLED=0 "$GO/bin/go" build -o "$T/app-outside" .); }
# Warm every cache once.
srcstore_build go "$GOS" w0 >/dev/null; native_build go "$GOS" w0 >/dev/null; outside; outside_prog
for i in $(seq "$N"); do
  msg "edit $i a"; tm go_srcstore srcstore_build go "$GOS" "r$i"
  msg "edit $i b"; tm go_native native_build go "$GOS" "r$i"
  msg "edit $i c"; tm go_outside outside
  msg "edit $i d"; tm go_outside_prog outside_prog
done
volume=$(dirname "$(ls -d "$XDG_CACHE_HOME"/srcstore/volumes/*/go)")
for i in 1 2; do
  rm -rf "$volume/go"/*; msg "cold $i"; tm go_cold srcstore_build go "$GOS" "c$i"
done
report "go: edit -> rebuild, volume vs native dir" go_srcstore go_native
report "go: edit -> rebuild vs cold build" go_srcstore go_cold
report "go: through srcstore vs go build outside Nix" go_srcstore go_outside
report "go outside Nix: srcstore gocacheprog vs GOCACHE" go_outside_prog go_outside

## 2. C with ccache
PROJECT=$T/capp; python3 "$here/gen-c-project.py" "$PROJECT"
start_daemon "$B" "$PROJECT" "$T/mnt-c" --allow-other
TOOLS=""; HOST="/usr /lib /lib64 /bin"
CS="mkdir \$out; cd \$NIX_BUILD_TOP; ls /srcstore/src/src/*.c | xargs -P 2 -n 1 ccache gcc -O2 -I/srcstore/src/include -c || exit 1; gcc *.o -o \$out/app"
srcstore_build ccache "$CS" w0 >/dev/null 2>&1; native_build ccache "$CS" w0 >/dev/null 2>&1
for i in $(seq "$N"); do
  printf 'int unit7_edit_%sa(void) { return %s; }\n' "$i" "$i" >> "$PROJECT/src/unit7.c"
  tm c_srcstore srcstore_build ccache "$CS" "r$i"
  printf 'int unit7_edit_%sb(void) { return %s; }\n' "$i" "$i" >> "$PROJECT/src/unit7.c"
  tm c_native native_build ccache "$CS" "r$i"
done
report "c/ccache: edit -> rebuild, volume vs native dir" c_srcstore c_native

## 3. Zig
PROJECT=$T/zigapp; mkdir -p "$PROJECT"
printf 'const std = @import("std");\nconst msg = @import("msg.zig").msg;\npub fn main() void {\n    std.debug.print("{s}\\n", .{msg});\n}\n' > "$PROJECT/main.zig"
zmsg() { printf 'pub const msg = "%s";\n' "$1" > "$PROJECT/msg.zig"; }
zmsg start
start_daemon "$B" "$PROJECT" "$T/mnt-zig" --allow-other
TOOLS="\"$ZIG\""; HOST=""
ZS="mkdir \$out; cd /srcstore/src; $ZIG/zig build-exe main.zig -femit-bin=\$out/app"
srcstore_build zig "$ZS" w0 >/dev/null 2>&1; native_build zig "$ZS" w0 >/dev/null 2>&1
for i in $(seq "$N"); do
  zmsg "edit $i a"; tm zig_srcstore srcstore_build zig "$ZS" "r$i"
  zmsg "edit $i b"; tm zig_native native_build zig "$ZS" "r$i"
done
report "zig: edit -> rebuild, volume vs native dir" zig_srcstore zig_native

## 4. Writing 20,000 small files
mkdir -p "$T/many"; python3 "$here/gen-many-files.py" "$T/many/files" 20000 >/dev/null 2>&1 ||
  { for d in $(seq 0 99); do mkdir -p "$T/many/files/$d"; for f in $(seq 0 199); do echo "$d $f" > "$T/many/files/$d/$f"; done; done; }
tar -C "$T/many" -cf "$T/many.tar" files; TAR=$(nix-store --add "$T/many.tar")
PROJECT=$T/goapp; TOOLS="\"$TAR\""; HOST=""
WS="d=\$SRCSTORE_CACHE/unpack.\$round; mkdir -p \$d; tar -xf $TAR -C \$d; rm -rf \$d; echo > \$out"
for i in $(seq "$N"); do
  tm w_srcstore srcstore_build dir "$WS" "w$i"
  tm w_native native_build dir "$WS" "w$i"
done
report "write 20,000 files: volume vs native dir" w_srcstore w_native
