# srcstore's compile caches: one line in a derivation, one in its build script.
#
#   let cache = import /path/to/srcstore/nix/cache.nix; in
#   derivation ({ name = "app"; builder = ...; args = [ "-c" ''
#     . "$srcstoreCacheSetup"
#     go build -o $out/bin/app .
#   '' ]; ... } // cache.go { })
#
# Each function returns two attributes:
#   srcstoreCache       the partition of the project's cache volume srcstore's pre-build hook
#                       mounts at /srcstore/cache (for a build the project's owner asked for);
#   srcstoreCacheSetup  a POSIX shell script to source first: it points the compiler at the
#                       volume, or, when there is none (a build without srcstore, another
#                       machine, CI, a volume that cannot be written), at a directory in the
#                       build's own TMPDIR, so the same expression builds as an ordinary pure
#                       build. It says on stderr why a build runs without the volume.
#
# With nixpkgs' stdenv: `preBuild = ". $srcstoreCacheSetup";`.
#
# Only caches keyed by content are used: Go's build cache (with -trimpath, so the source's
# path does not enter its keys), ccache, Zig's caches (Zig also trusts an unchanged inode,
# mtime and size, which srcstore never gives other content). No build directory that a tool
# judges fresh by mtimes (make, ninja, cargo's target/) belongs in the volume: srcstore shows
# every file with mtime 1, so an edited file would look unchanged.
let
  common = ''
    case "''${src:-}" in
      /nix/store/*|"") ;;
      *) if [ ! -e "$src" ]; then
           echo "srcstore: $src is not in this build's sandbox: the pre-build hook did not bind it (run \`srcstore nix setup\`; Lix 2.93 and later discard the hook's output)" >&2
           exit 1
         fi ;;
    esac
    if [ -e /srcstore/no-cache ]; then cat /srcstore/no-cache >&2; fi
    SRCSTORE_CACHE=
    if [ -d /srcstore/cache ]; then
      srcstore_probe=/srcstore/cache/.probe.$$
      if head -c 1048576 /dev/zero > "$srcstore_probe" 2>/dev/null; then
        SRCSTORE_CACHE=/srcstore/cache
      else
        echo "srcstore: the cache volume cannot be written (full?): building without it" >&2
      fi
      rm -f "$srcstore_probe"
    fi
    if [ -z "$SRCSTORE_CACHE" ]; then
      SRCSTORE_CACHE=''${TMPDIR:-/tmp}/srcstore-cache
      mkdir -p "$SRCSTORE_CACHE"
    fi
    export SRCSTORE_CACHE
  '';
  with' = default: script: { partition ? default }: {
    srcstoreCache = partition;
    srcstoreCacheSetup = builtins.toFile "srcstore-cache-${default}.sh" (common + script);
  };
in
{
  # Go's build cache, Go's own directory in the volume. With `verify = true`, through
  # `srcstore gocacheprog` instead (every object checked against its OutputID on put and get)
  # when the hook made srcstore visible in the sandbox: slower per request (see
  # docs/benchmarks.md). -trimpath keeps the source's path out of Go's keys.
  go = { partition ? "go", verify ? false }: with' "go" ''
    export GOCACHE="$SRCSTORE_CACHE/go-build"
    if ${if verify then "true" else "false"} && [ "$SRCSTORE_CACHE" = /srcstore/cache ] &&
        /srcstore/bin/srcstore --version > /dev/null 2>&1; then
      export GOCACHEPROG="/srcstore/bin/srcstore gocacheprog"
    fi
    export GOFLAGS="-trimpath ''${GOFLAGS:-}"
    export GOPATH="''${TMPDIR:-/tmp}/go" GOTOOLCHAIN=local
  '' { inherit partition; };

  # Zig's global and local caches.
  zig = with' "zig" ''
    export ZIG_GLOBAL_CACHE_DIR="$SRCSTORE_CACHE/zig-global"
    export ZIG_LOCAL_CACHE_DIR="$SRCSTORE_CACHE/zig-local"
  '';

  # ccache for C and C++: put `ccache` before the compiler (CC="ccache gcc"). Every file in
  # /nix/store has mtime 1, so ccache's default check of a compiler (its size and mtime) would
  # take two compilers of one size for one: the compiler's content goes into every key.
  ccache = with' "ccache" ''
    export CCACHE_DIR="$SRCSTORE_CACHE/ccache" CCACHE_COMPILERCHECK="''${CCACHE_COMPILERCHECK:-content}"
    export CCACHE_BASEDIR="''${CCACHE_BASEDIR:-''${NIX_BUILD_TOP:-/build}}" CCACHE_NOHASHDIR=1
  '';

  # Rust through sccache, whose keys are the inputs' content: `sccache` on PATH (or
  # RUSTC_WRAPPER set to it). Cargo's target directory stays in TMPDIR: cargo judges freshness
  # by mtimes, and the view shows every file with mtime 1. The server sccache starts is stopped
  # when the build script exits.
  rust = with' "rust" ''
    export SCCACHE_DIR="$SRCSTORE_CACHE/sccache"
    export RUSTC_WRAPPER="''${RUSTC_WRAPPER:-sccache}"
    export CARGO_TARGET_DIR="''${TMPDIR:-/tmp}/target" CARGO_INCREMENTAL=0
    export CARGO_HOME="''${CARGO_HOME:-''${TMPDIR:-/tmp}/cargo}"
    trap '"$RUSTC_WRAPPER" --stop-server > /dev/null 2>&1' EXIT
  '';

  # Only the shared part: $SRCSTORE_CACHE, for a tool of your own.
  dir = with' "misc" "";
}
