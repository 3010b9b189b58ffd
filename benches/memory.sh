#!/usr/bin/env bash
# The daemon's memory on a real tree, and after many edits. Prints a Markdown report on stdout,
# progress on stderr. Needs fusermount3 and a working /dev/fuse.
#
#   benches/memory.sh
#
# Environment:
#   SRCSTORE, REV               the binary, as in benches/binary.sh
#   REAL_TREE=DIR               the real tree (default: the first Rust toolchain under
#                               ~/.rustup/toolchains); served, never written
#   EDITS=N                     edits of the many-edits run (default 10000)
#   SYNC_EVERY=N                a `srcstore path` every N edits, so that the daemon publishes
#                               (default 10)
#   CYCLES="1000 10000"         edit → `srcstore path` cycles of the cycles run, on a project of
#                               2,000 files in 40 directories, with warming on and off
#   BENCH_TMP=/var/tmp          where the temporary trees go; KEEP=1 keeps them
#
# Per file = (RSS serving the tree − RSS serving a one-file tree) / the tree's files. RSS is the
# daemon's `rss_bytes` in `srcstore status`, read 1 s after the figure's step, once it is quiet.
# The real tree's daemons run with --no-warm, so that "after start" is before any walk; no bytes
# are read, so the proof holds no chunk trees.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
EDITS=${EDITS:-10000}
SYNC_EVERY=${SYNC_EVERY:-10}
log() { echo "memory.sh: $*" >&2; }
source "$here/binary.sh"
source "$here/daemon.sh"
scratch memory

REAL_TREE=${REAL_TREE:-$(find ~/.rustup/toolchains -mindepth 1 -maxdepth 1 -type d 2>/dev/null | sort | head -1)}
[ -d "$REAL_TREE" ] || { log "no real tree: set REAL_TREE"; exit 1; }
REAL_TREE=$(readlink -f "$REAL_TREE")

stop_daemon() { kill -TERM "$DPID"; wait "$DPID" || log "daemon $DPID exited with $?"; }
# rss DIR: the RSS (bytes) of DIR's daemon, once it has been quiet for a second.
rss() { sleep 1; field "$B" "$1" rss_bytes; }
per_file() { awk -v r="$1" -v b="$base" -v n="$2" 'BEGIN{printf "%.0f", (r - b) / n}'; }
kib() { echo $(($1 / 1024)); }

# --- the real tree ------------------------------------------------------------------------------
files=$(find "$REAL_TREE" -type f | wc -l)
dirs=$(find "$REAL_TREE" -type d | wc -l)
log "a one-file tree, then $REAL_TREE ($files files)"
mkdir -p "$T/one"; echo x >"$T/one/f"
start_daemon "$B" "$T/one" "$T/mnt/one" --no-ignore --no-warm
base=$(rss "$T/one"); stop_daemon
declare -A r
for run in fresh index; do # the first start hashes everything; the second starts from its index
  start_daemon "$B" "$REAL_TREE" "$T/mnt/real" --no-ignore --no-warm
  r[$run:start]=$(rss "$REAL_TREE")
  find "$SNAP" -type f -printf '%s\n' >/dev/null # the kernel now holds every inode of the view
  r[$run:walked]=$(rss "$REAL_TREE")
  stop_daemon
done

# --- many edits ------------------------------------------------------------------------------
log "$EDITS edits to a tree of 20 files, \`srcstore path\` every $SYNC_EVERY"
E=$T/edits; mkdir -p "$E"
for i in $(seq 0 19); do printf 'file %s\n' "$i" >"$E/f$i"; done
start_daemon "$B" "$E" "$T/mnt/edits"
e0=$(rss "$E")
t0=$EPOCHREALTIME
for i in $(seq 1 "$EDITS"); do
  printf 'edit %s\n' "$i" >"$E/f$((i % 20))"
  (( i % SYNC_EVERY )) || "$B" path "$E" >/dev/null
  (( i == EDITS / 10 )) && e1=$(rss "$E")
done
"$B" path "$E" >/dev/null
secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b - a}')
e2=$(rss "$E")
updates=$(field "$B" "$E" updates)
stop_daemon

# --- cycles: edit → path, with and without warming --------------------------------------------
CYCLES=${CYCLES:-1000 10000}
C=$T/cycles; mkdir -p "$C"
for d in $(seq 0 39); do mkdir -p "$C/d$d"; for f in $(seq 0 49); do echo "$d $f" >"$C/d$d/f$f"; done; done
fuse_inodes() { awk '/^fuse_inode /{print $2}' /proc/slabinfo; }
declare -A cyc
for warm in on off; do
  for n in $CYCLES; do
    log "$n cycles of an edit and \`srcstore path\` on 2,000 files, warming $warm"
    flags=(); [ "$warm" = off ] && flags=(--no-warm)
    start_daemon "$B" "$C" "$T/mnt/cycles" "${flags[@]}"
    "$B" path "$C" >/dev/null
    before=$(rss "$C"); k0=$(fuse_inodes); h0=$(field "$B" "$C" inodes)
    for i in $(seq 1 "$n"); do
      echo "$i" >>"$C/d$((i % 40))/f1"
      "$B" path "$C" >/dev/null
    done
    after=$(rss "$C"); k1=$(fuse_inodes); h1=$(field "$B" "$C" inodes)
    cyc[$warm:$n]="| $warm | $n | $(kib "$before") | $(kib "$after") | **$(( (after - before) / 1024 ))** | $k0 → $k1 | $h0 → $h1 |"
    stop_daemon
  done
done

# --- report ----------------------------------------------------------------------------------
echo "$(date -u +%Y-%m-%d), srcstore $version, $(nproc) cores, kernel $(uname -r)."
echo
echo "Real tree: \`$REAL_TREE\`, $files files, $dirs directories; a daemon serving one file: $(kib "$base") KiB."
echo
echo "| daemon | after start (KiB) | B/file | after stat-all through the view (KiB) | B/file |"
echo "|---|---:|---:|---:|---:|"
for run in fresh index; do
  label=$([ "$run" = fresh ] && echo "first start (hashes every file)" || echo "restart (index warm)")
  printf '| %s | %s | **%s** | %s | %s |\n' "$label" "$(kib "${r[$run:start]}")" \
    "$(per_file "${r[$run:start]}" "$files")" "$(kib "${r[$run:walked]}")" "$(per_file "${r[$run:walked]}" "$files")"
done
echo
echo "$EDITS edits to one of 20 files in turn, \`srcstore path\` every $SYNC_EVERY ($updates updates, $secs s):"
echo
echo "| RSS before (KiB) | after $((EDITS / 10)) edits (KiB) | after $EDITS edits (KiB) |"
echo "|---:|---:|---:|"
echo "| $(kib "$e0") | $(kib "$e1") | **$(kib "$e2")** |"
echo
echo "Edit → \`srcstore path\` cycles on 2,000 files in 40 directories (each cycle appends to one file; the"
echo "kernel's FUSE inodes are machine-wide, \`fuse_inode\` in /proc/slabinfo; the daemon's are those it holds):"
echo
echo "| warming | cycles | RSS before (KiB) | after (KiB) | growth (KiB) | kernel FUSE inodes | daemon's inodes |"
echo "|---|---:|---:|---:|---:|---|---|"
for warm in on off; do for n in $CYCLES; do echo "${cyc[$warm:$n]}"; done; done
