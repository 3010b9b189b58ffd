# Sourced by the benchmark scripts: sets B (the srcstore binary to measure) and version.
#   SRCSTORE=/path/to/srcstore   that binary
#   REV=<commit>                 a clean build of that commit (git archive + cargo build under
#                                $BENCH_TMP, kept between runs), not the work tree
#   otherwise                    target/release/srcstore built from the work tree
# Needs $repo (the checkout) and a `log` function.
if [ -n "${SRCSTORE:-}" ]; then
  B=$SRCSTORE; version="$B"
elif [ -n "${REV:-}" ]; then
  sha=$(git -C "$repo" rev-parse --verify "$REV^{commit}")
  src=${BENCH_TMP:-/var/tmp}/srcstore-build-${sha:0:12}
  if [ ! -x "$src/target/release/srcstore" ]; then
    log "building ${sha:0:12} in $src"
    rm -rf "$src"; mkdir -p "$src"; git -C "$repo" archive "$sha" | tar -x -C "$src"
    (cd "$src" && cargo build --release --bin srcstore --quiet)
  fi
  B=$src/target/release/srcstore; version="${sha:0:7} (clean build of that commit)"
else
  log "building the release binary"
  (cd "$repo" && cargo build --release --bin srcstore --quiet)
  B=$repo/target/release/srcstore; version=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo '?')
fi
