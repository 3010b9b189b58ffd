#!/usr/bin/env bash
# Benchmarks of `srcstore mount`, side by side with native reads and bindfs in one run:
# interleaved rounds (the order flips every round), medians, ratios view/native. Nothing here
# asserts a target: the goals are printed next to the figures. Prints a Markdown report on
# stdout, progress on stderr. Run as root (drop_caches, --allow-other).
#
#   benches/mount.sh [ROUNDS]       ROUNDS: warm rounds (default 9, at least 3)
#
# Environment:
#   SRCSTORE=/path/to/srcstore  use this binary instead of building target/release/srcstore
#   REV=<commit>                benchmark a clean build of that commit (git archive + cargo build
#                               under $BENCH_TMP), not the work tree
#   COLD_ROUNDS=N               rounds of the first read after drop_caches (default 3, 0 = skip)
#   FRESH_ROUNDS=N              rounds of find / read-all over a fresh snapshot (default 15)
#   EDITS=N                     one-file edits per tree for the `srcstore path` latency (default 30)
#   EDIT_SIZES="1000 ..."       file counts of the latency / memory trees (default 1000 20000 100000)
#   THREADS=N                   pass --threads N to the daemon (default: the daemon's default)
#   BENCH_TMP=/var/tmp          where the temporary trees go; KEEP=1 keeps them
#
# Trees: the 20,000-file synthetic corpus of ../../shared/gen-corpus-synth.py (~209 MB) for the
# read rows; benches/gen-many-files.py trees (100 small files per directory) for the latency
# curve, the memory per file and the idle CPU.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=$(cd "$(dirname "$0")/../../shared" && pwd)
ROUNDS=${1:-9}
[ "$ROUNDS" -ge 3 ] || { echo "mount.sh: use at least 3 rounds" >&2; exit 2; }
COLD_ROUNDS=${COLD_ROUNDS:-3}
FRESH_ROUNDS=${FRESH_ROUNDS:-15}
EDITS=${EDITS:-30}
EDIT_SIZES=${EDIT_SIZES:-"1000 20000 100000"}
log() { echo "mount.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || log "not root: --allow-other needs user_allow_other, no dropped-cache rows"
command -v bindfs >/dev/null || { log "bindfs is needed (apt-get install bindfs)"; exit 1; }
command -v fusermount3 >/dev/null || { log "fusermount3 is needed (apt-get install fuse3)"; exit 1; }

source "$here/binary.sh"
daemon_args=(--allow-other --no-ignore)
[ -n "${THREADS:-}" ] && daemon_args+=(--threads "$THREADS")

source "$here/daemon.sh"
scratch mountbench

stop_daemon() {
  kill -TERM "$DPID"; wait "$DPID" || log "daemon $DPID exited with $?"
  local p rest=(); for p in "${daemons[@]}"; do [ "$p" = "$DPID" ] || rest+=("$p"); done; daemons=("${rest[@]}")
}

# --- measuring ---------------------------------------------------------------------------------
stat_all() { find "$1" -type f -printf '%s\n'; }
pct() { tr ' ' '\n' | grep . | sort -n | awk -v p="$1" '{a[NR]=$1} END{i=int((p*NR+99)/100); if(i<1)i=1; print a[i]}'; }
checksum() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum); }
# edit FILE: new content, unique per call, so no snapshot is ever served twice.
nedit=0
edit() { nedit=$((nedit + 1)); printf 'edit %s %s\n' "$nedit" "$EPOCHREALTIME" >"$1"; }

# --- the corpus, its views -----------------------------------------------------------------
log "creating the corpus under $T"
C=$T/corpus
python3 "$shared/gen-corpus-synth.py" "$C" >/dev/null
mapfile -t corpus_files < <(cd "$C" && find . -type f | sort)
sync
start_daemon "$B" "$C" "$T/mnt/srcstore" "${daemon_args[@]}"; SS_PID=$DPID
declare -A view
view[native]=$C
view[srcstore]=$SNAP
view[bindfs]=$T/mnt/bindfs; mkdir -p "${view[bindfs]}"
bindfs -r "$C" "${view[bindfs]}"; mounts+=("${view[bindfs]}")
view[bindfs_kc]=$T/mnt/bindfs-kc; mkdir -p "${view[bindfs_kc]}"
bindfs -r -o kernel_cache,entry_timeout=86400,attr_timeout=86400 "$C" "${view[bindfs_kc]}"; mounts+=("${view[bindfs_kc]}")
views=(native srcstore bindfs bindfs_kc)
want=$(checksum "$C")
for v in srcstore bindfs bindfs_kc; do
  [ "$(checksum "${view[$v]}")" = "$want" ] || log "WARNING: $v does not show the corpus byte for byte"
done

# 1. Warm: read-all and stat-all, every view, interleaved (round 0 is a discarded warm-up).
log "warm read-all / stat-all: 1 warm-up + $ROUNDS rounds"
pairs=()
for v in "${views[@]}"; do pairs+=("$v:read_all" "$v:stat_all"); done
for r in $(seq 0 "$ROUNDS"); do
  order=("${pairs[@]}")
  if (( r % 2 )); then order=(); for ((i=${#pairs[@]}-1; i>=0; i--)); do order+=("${pairs[i]}"); done; fi
  for p in "${order[@]}"; do
    v=${p%%:*} c=${p#*:}
    if [ "$r" = 0 ]; then "$c" "${view[$v]}" >/dev/null; else tm "warm:$p" "$c" "${view[$v]}"; fi
  done
done

# 2. First read: drop_caches (page cache, dentries, inodes: the FUSE views forget everything too).
cold_ok=0
if [ "$COLD_ROUNDS" -gt 0 ] && drop 2>/dev/null; then
  cold_ok=1
  log "first read-all after drop_caches: $COLD_ROUNDS rounds"
  for r in $(seq 1 "$COLD_ROUNDS"); do
    order=("${views[@]}")
    if (( r % 2 == 0 )); then order=(bindfs_kc bindfs srcstore native); fi
    for v in "${order[@]}"; do drop; tm "cold:$v:read_all" read_all "${view[$v]}"; done
  done
  # Leave every cache warm again for what follows.
  for v in native srcstore; do read_all "${view[$v]}" >/dev/null; done
fi

# 3+4. A fresh snapshot right after a one-file edit: `srcstore path` latency, then find or
# read-all over the new snapshot (which the kernel has never seen) against native.
log "fresh snapshot after a one-file edit: $FRESH_ROUNDS rounds"
for r in $(seq 1 "$FRESH_ROUNDS"); do
  for c in stat_all read_all; do
    f=$C/${corpus_files[$(( (nedit * 7919) % ${#corpus_files[@]} ))]}
    t0=$EPOCHREALTIME; edit "$f"; P=$("$B" path "$C"); t1=$EPOCHREALTIME
    S[path:corpus]+="$(( ${t1/./} - ${t0/./} )) "
    [ "$P" != "${view[srcstore]}" ] || { log "the edit did not give a new snapshot"; exit 1; }
    if (( r % 2 )); then
      tm "fresh:srcstore:$c" "$c" "$P"; tm "fresh:native:$c" "$c" "$C"
    else
      tm "fresh:native:$c" "$c" "$C"; tm "fresh:srcstore:$c" "$c" "$P"
    fi
    view[srcstore]=$P
  done
done
[ "$(checksum "${view[srcstore]}")" = "$(checksum "$C")" ] || log "WARNING: the last snapshot is not the corpus byte for byte"
errors=$(( $(field "$B" "$C" stale_reads) + $(field "$B" "$C" torn_reads) ))
[ "$errors" = 0 ] || log "WARNING: $errors stale or torn reads on the corpus"
SS_CORPUS_RSS=$(field "$B" "$C" rss_bytes)
DPID=$SS_PID; stop_daemon
for m in "$T/mnt/bindfs" "$T/mnt/bindfs-kc"; do fusermount3 -u "$m"; done

# 3+5. Trees of N small files: `srcstore path` latency after one-file edits, RSS, idle CPU.
log "trees of $EDIT_SIZES files: $EDITS edits each, memory, idle CPU"
declare -A rss0 rss1 idle
hz=$(getconf CLK_TCK)
for n in $EDIT_SIZES; do
  d=$T/many/n$n; python3 "$here/gen-many-files.py" "$d" "$n" >/dev/null; sync
  mapfile -t files < <(cd "$d" && find . -type f | sort)
  start_daemon "$B" "$d" "$T/mnt/n$n" "${daemon_args[@]}"
  rss0[$n]=$(field "$B" "$d" rss_bytes)
  stat_all "$SNAP" >/dev/null # the kernel now holds every inode of the view
  rss1[$n]=$(field "$B" "$d" rss_bytes)
  for i in $(seq 1 "$EDITS"); do
    f=$d/${files[$(( (i * 7919) % ${#files[@]} ))]}
    sleep 0.05
    t0=$EPOCHREALTIME; edit "$f"; "$B" path "$d" >/dev/null; t1=$EPOCHREALTIME
    S[path:n$n]+="$(( ${t1/./} - ${t0/./} )) "
  done
  pid=$(field "$B" "$d" pid)
  sleep 2
  a=$(awk '{print $14 + $15}' "/proc/$pid/stat"); sleep 10; b=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  idle[$n]=$(awk -v d=$((b - a)) -v hz="$hz" 'BEGIN{printf "%.2f", 100 * d / hz / 10}')
  stop_daemon
  rm -rf "$d"
done

# --- report ----------------------------------------------------------------------------------
fs=$(stat -f -c %T "$T"); [ "$fs" = ext2/ext3 ] && fs="ext4 (statfs: ext2/ext3)"
echo "$(date -u +%Y-%m-%d), srcstore $version, $(nproc) cores, kernel $(uname -r), $fs, $(bindfs --version 2>&1 | head -1)${THREADS:+, daemon --threads $THREADS}."
echo "Medians of $ROUNDS interleaved warm rounds, $COLD_ROUNDS first-read rounds, $FRESH_ROUNDS fresh-snapshot rounds; ratio = view median / native median."
echo
echo "| measure | view | view (ms) | native (ms) | ratio | goal |"
echo "|---|---|---:|---:|---:|---|"
vrow() { # measure-label key-prefix view view-label measure goal
  local a b; a=$(echo "${S[$2:$3:$5]}" | med); b=$(echo "${S[$2:native:$5]}" | med)
  printf '| %s | %s | %s | %s | **%s** | %s |\n' "$1" "$4" "$(msof "$a")" "$(msof "$b")" "$(ratio "$a" "$b")" "$6"
}
for m in read_all stat_all; do
  if [ $m = read_all ]; then lbl="warm read-all"; g="≤ 1.3"; else lbl="warm stat-all"; g="≤ 1.5"; fi
  vrow "$lbl" warm srcstore srcstore $m "$g"
  vrow "$lbl" warm bindfs '`bindfs -r`' $m "srcstore faster"
  vrow "$lbl" warm bindfs_kc '`bindfs -r` kernel_cache, 1-day TTLs' $m "srcstore faster"
done
if [ $cold_ok = 1 ]; then
  vrow "first read-all (caches dropped)" cold srcstore srcstore read_all "(info)"
  vrow "first read-all (caches dropped)" cold bindfs '`bindfs -r`' read_all "srcstore faster"
  vrow "first read-all (caches dropped)" cold bindfs_kc '`bindfs -r` kernel_cache, 1-day TTLs' read_all "srcstore faster"
fi
vrow "stat-all, fresh snapshot after a 1-file edit" fresh srcstore srcstore stat_all "≤ 1.5"
vrow "read-all, fresh snapshot after a 1-file edit" fresh srcstore srcstore read_all "≤ 1.5"
echo
echo "\`srcstore path\` after a one-file edit (write → new path printed, including the client's start):"
echo
echo "| tree | files | edits | p50 (ms) | p90 (ms) | max (ms) | goal |"
echo "|---|---:|---:|---:|---:|---:|---|"
for n in $EDIT_SIZES; do
  k=path:n$n
  printf '| gen-many-files | %s | %s | **%s** | %s | %s | p50 < 20, flat |\n' "$n" "$EDITS" \
    "$(msof "$(echo "${S[$k]}" | pct 50)")" "$(msof "$(echo "${S[$k]}" | pct 90)")" "$(msof "$(echo "${S[$k]}" | pct 100)")"
done
k=path:corpus
printf '| corpus | 20000 | %s | **%s** | %s | %s | p50 < 20 |\n' "$(echo "${S[$k]}" | wc -w)" \
  "$(msof "$(echo "${S[$k]}" | pct 50)")" "$(msof "$(echo "${S[$k]}" | pct 90)")" "$(msof "$(echo "${S[$k]}" | pct 100)")"
echo
first=${EDIT_SIZES%% *}; last=${EDIT_SIZES##* }
echo "Daemon memory (\`rss_bytes\` from \`srcstore status\`) and idle CPU (utime+stime over 10 s without changes):"
echo
echo "| files | RSS after start (KiB) | RSS after stat-all through the view (KiB) | idle CPU (%) |"
echo "|---:|---:|---:|---:|"
for n in $EDIT_SIZES; do
  printf '| %s | %s | %s | %s |\n' "$n" "$((rss0[$n] / 1024))" "$((rss1[$n] / 1024))" "${idle[$n]}"
done
per() { awk -v a="$1" -v b="$2" -v n="$first" -v m="$last" 'BEGIN{printf "%.0f", (b-a)/(m-n)}'; }
echo
echo "Per file ($first → $last files): **$(per "${rss0[$first]}" "${rss0[$last]}") B** after start, **$(per "${rss1[$first]}" "${rss1[$last]}") B** with every inode held by the kernel. Corpus daemon at the end: $((SS_CORPUS_RSS / 1024)) KiB."
echo
echo "<details><summary>Raw samples (µs, in round order)</summary>"
echo
echo '```'
for k in $(printf '%s\n' "${!S[@]}" | sort); do echo "$k: ${S[$k]}"; done
echo '```'
echo "</details>"
