#!/usr/bin/env bash
# What the content proof of every served byte costs: the view before and after it, side by side
# with native reads, in one run. First read-all after drop_caches (the rounds that reach the
# daemon), warm read-all (the kernel serves those), the daemon's memory, and `hash --nix`
# (the NAR proves each file too) beside `nix hash path`. Interleaved rounds, the order flipped
# every round, medians, ratios to native. Prints a Markdown report on stdout, progress on
# stderr. Run as root (drop_caches, --allow-other). Nothing here asserts a target.
#
#   benches/proof.sh [ROUNDS]       ROUNDS: rounds of each measure (default 7, at least 5)
#
# Environment:
#   BEFORE=<commit>   the build without the proof (default: the parent of the commit that
#                     brought it, "verify: prove every byte a read serves…")
#   REV=<commit> / SRCSTORE=/path   the build with it (see benches/binary.sh; default: the
#                     work tree's target/release/srcstore)
#   BENCH_TMP=/var/tmp  where the trees and the clean builds go; KEEP=1 keeps the trees
#
# Tree: the 20,000-file synthetic corpus of ../../shared/gen-corpus-synth.py (~209 MB: 19,900
# files of 1–13 KiB, 100 of 256 KiB–1 MiB), twice (an identical copy), since one daemon serves
# one project: the build without the proof serves one copy, the build with it the other, and
# each is compared with native reads of its own copy.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=$(cd "$(dirname "$0")/../../shared" && pwd)
ROUNDS=${1:-7}
[ "$ROUNDS" -ge 5 ] || { echo "proof.sh: use at least 5 rounds" >&2; exit 2; }
log() { echo "proof.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root: drop_caches and --allow-other"; exit 1; }
command -v nix >/dev/null || { log "nix is needed (scripts/setup-machine)"; exit 1; }

# The two builds: without the proof (BEFORE), with it (REV, SRCSTORE or the work tree).
if [ -z "${BEFORE:-}" ]; then
  c=$(git -C "$repo" log -1 --format=%H --grep='^verify: prove every byte a read serves')
  [ -n "$c" ] || { log "set BEFORE: the commit that brought the proof is not in this history"; exit 1; }
  BEFORE=$c^
fi
user_srcstore=${SRCSTORE:-} after_rev=${REV:-}
SRCSTORE='' REV=$BEFORE
source "$here/binary.sh"; B0=$B; v0=$version
SRCSTORE=$user_srcstore REV=$after_rev
source "$here/binary.sh"; B1=$B; v1=$version

source "$here/daemon.sh"
scratch proofbench


# paired A B: the median of the per-round ratios of two sample lists taken in the same rounds.
paired() { paste <(echo "$1" | tr ' ' '\n' | grep .) <(echo "$2" | tr ' ' '\n' | grep .) |
  awk '{print $1 / $2}' | sort -g | awk '{a[NR]=$1} END{printf "%.2f", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
checksum() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum); }

log "creating the corpus (twice) under $T"
python3 "$shared/gen-corpus-synth.py" "$T/c0" >/dev/null
cp -a "$T/c0" "$T/c1"
sync
want=$(checksum "$T/c0")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
stop() { local p; for p in "${daemons[@]}"; do kill -TERM "$p"; wait "$p" || true; done; daemons=(); }

# 1. First read-all after drop_caches (page cache, dentries, inodes: the views forget all).
# The builds swap copies every round, so that where a copy lies on the disk favours neither;
# the daemons' CPU is counted over their reads only.
log "first read-all after drop_caches: $ROUNDS rounds"
cpu0=0 cpu1=0
for r in $(seq 1 "$ROUNDS"); do
  a=$(( r % 2 )) b=$(( (r + 1) % 2 ))
  start_daemon "$B0" "$T/c$a" "$T/mnt$a" --allow-other --no-ignore; V0=$SNAP; P0=$DPID
  start_daemon "$B1" "$T/c$b" "$T/mnt$b" --allow-other --no-ignore; V1=$SNAP; P1=$DPID
  if [ "$r" = 1 ]; then
    for v in "$V0" "$V1"; do [ "$(checksum "$v")" = "$want" ] || { log "$v does not show the corpus byte for byte"; exit 1; }; done
  fi
  pairs=(native0:"$T/c$a" before:"$V0" native1:"$T/c$b" after:"$V1")
  order=("${pairs[@]}")
  if (( r % 2 == 0 )); then order=(); for ((i=${#pairs[@]}-1; i>=0; i--)); do order+=("${pairs[i]}"); done; fi
  for p in "${order[@]}"; do
    k=${p%%:*}; drop
    t0=$(ticks "$P0") t1=$(ticks "$P1")
    tm "cold:$k" read_all "${p#*:}"
    case $k in before) cpu0=$(( cpu0 + $(ticks "$P0") - t0 )) ;; after) cpu1=$(( cpu1 + $(ticks "$P1") - t1 )) ;; esac
  done
  [ "$r" = "$ROUNDS" ] || stop
done
rss0=$(field "$B0" "$T/c$a" rss_bytes); rss1=$(field "$B1" "$T/c$b" rss_bytes)

# 2. Warm read-all (round 0 is a discarded warm-up).
log "warm read-all: 1 warm-up + $ROUNDS rounds"
for r in $(seq 0 "$ROUNDS"); do
  order=("${pairs[@]}")
  if (( r % 2 )); then order=(); for ((i=${#pairs[@]}-1; i>=0; i--)); do order+=("${pairs[i]}"); done; fi
  for p in "${order[@]}"; do
    if [ "$r" = 0 ]; then read_all "${p#*:}" >/dev/null; else tm "warm:${p%%:*}" read_all "${p#*:}"; fi
  done
done
for v in "$V0" "$V1"; do [ "$(checksum "$v")" = "$want" ] || log "WARNING: $v does not show the corpus byte for byte"; done
failed=$(( $(field "$B0" "$T/c$a" stale_reads) + $(field "$B0" "$T/c$a" torn_reads) + $(field "$B1" "$T/c$b" stale_reads) + $(field "$B1" "$T/c$b" torn_reads) ))
[ "$failed" = 0 ] || log "WARNING: $failed stale or torn reads"
stop

# 3. `hash --nix --no-index` (a scan, then the NAR, whose every file is now proven), warm page
# cache, beside `nix hash path`.
log "hash --nix: 1 warm-up + $ROUNDS rounds"
nixhash() { nix --extra-experimental-features nix-command hash path --type sha256 --base32 "$1"; }
cmds=(nar_before nar_after idx_before idx_after nix)
run() { case $1 in
  nar_before) "$B0" hash --nix --no-index --no-ignore "$T/c0" ;;
  nar_after) "$B1" hash --nix --no-index --no-ignore "$T/c0" ;;
  idx_before) XDG_CACHE_HOME=$T/cache0 "$B0" hash --nix --no-ignore "$T/c0" ;;
  idx_after) XDG_CACHE_HOME=$T/cache1 "$B1" hash --nix --no-ignore "$T/c0" ;;
  nix) nixhash "$T/c0" ;;
esac; }
for r in $(seq 0 "$ROUNDS"); do
  order=("${cmds[@]}")
  if (( r % 2 )); then order=(nix idx_after idx_before nar_after nar_before); fi
  for c in "${order[@]}"; do
    if [ "$r" = 0 ]; then run "$c" >/dev/null; else tm "nar:$c" run "$c"; fi
  done
done
n0=$("$B0" hash --nix --no-index --no-ignore "$T/c0" | sed -n 's/^nar_hash //p')
n1=$("$B1" hash --nix --no-index --no-ignore "$T/c0" | sed -n 's/^nar_hash //p')
[ "$n0" = "$n1" ] && [ "$n1" = "sha256:$(nixhash "$T/c0")" ] || log "WARNING: the NAR hashes differ: $n0 $n1"

# Chunk trees the daemon builds for the corpus: one 32-byte chaining value per 64 KiB of every
# file over 128 KiB, in memory, nothing on disk.
read -r nbig tree_bytes < <(find "$T/c0" -type f -size +128k -printf '%s\n' |
  awk '{n++; t += int(($1 + 65535) / 65536) * 32} END{print n+0, t+0}')

# --- report ----------------------------------------------------------------------------------
fs=$(stat -f -c %T "$T"); [ "$fs" = ext2/ext3 ] && fs="ext4 (statfs: ext2/ext3)"
echo "$(date -u +%Y-%m-%d), without the proof: srcstore $v0; with it: srcstore $v1; $(nproc) cores, kernel $(uname -r), $fs."
echo "Medians of $ROUNDS interleaved rounds. Each view is compared with native reads of its own copy in the same round: ratio = median of the per-round ratios (the medians' ratio beside it)."
echo
echo "| measure | srcstore | ms | native (ms) | ratio | medians' ratio | goal |"
echo "|---|---|---:|---:|---:|---:|---|"
row() { # label key view native-key build goal
  local a b; a=$(echo "${S[$2:$3]}" | med); b=$(echo "${S[$2:$4]}" | med)
  printf '| %s | %s | %s | %s | **%s** | %s | %s |\n' "$1" "$5" "$(msof "$a")" "$(msof "$b")" \
    "$(paired "${S[$2:$3]}" "${S[$2:$4]}")" "$(ratio "$a" "$b")" "$6"
}
row "first read-all (caches dropped)" cold before native0 "without the proof" "(info)"
row "first read-all (caches dropped)" cold after native1 "with the proof" "≤ without + 0.15"
row "warm read-all" warm before native0 "without the proof" "(info)"
row "warm read-all" warm after native1 "with the proof" "unchanged"
added=$(paste <(echo "${S[cold:after]}" | tr ' ' '\n' | grep .) <(echo "${S[cold:before]}" | tr ' ' '\n' | grep .) \
  <(echo "${S[cold:native0]}" | tr ' ' '\n' | grep .) <(echo "${S[cold:native1]}" | tr ' ' '\n' | grep .) |
  awk '{print ($1 - $2) / (($3 + $4) / 2)}' | sort -g | awk '{a[NR]=$1} END{printf "%+.2f", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
echo
echo "What the proof adds to the first read-all, in units of native: **$added×** (median over rounds of (with − without) / native, both measured in the same round; goal ≤ +0.15)."
echo
echo "| measure | without the proof (ms) | with it (ms) | \`nix hash path\` (ms) | ratio without | ratio with |"
echo "|---|---:|---:|---:|---:|---:|"
c=$(echo "${S[nar:nix]}" | med)
for m in "nar:\`hash --nix --no-index\` (scan hashes every file)" "idx:\`hash --nix\`, index warm (scan hashes none)"; do
  k=${m%%:*} label=${m#*:}
  a=$(echo "${S[nar:${k}_before]}" | med); b=$(echo "${S[nar:${k}_after]}" | med)
  printf '| %s | %s | %s | %s | %s | **%s** |\n' "$label" "$(msof "$a")" "$(msof "$b")" "$(msof "$c")" \
    "$(paired "${S[nar:${k}_before]}" "${S[nar:nix]}")" "$(paired "${S[nar:${k}_after]}" "${S[nar:nix]}")"
done
echo
hz=$(getconf CLK_TCK)
echo "Daemon CPU (utime+stime) during one first read-all: $(awk -v t="$cpu0" -v n="$ROUNDS" -v hz="$hz" 'BEGIN{printf "%.0f", 1000 * t / hz / n}') ms without the proof, $(awk -v t="$cpu1" -v n="$ROUNDS" -v hz="$hz" 'BEGIN{printf "%.0f", 1000 * t / hz / n}') ms with it."
echo "Daemon RSS after the first-read rounds (\`rss_bytes\`): $((rss0 / 1024)) KiB without the proof, $((rss1 / 1024)) KiB with it."
echo "Chunk trees for the corpus: $nbig files over 128 KiB, $tree_bytes bytes of chaining values (in memory, none on disk)."
echo
echo "<details><summary>Raw samples (µs, in round order)</summary>"
echo
echo '```'
for k in $(printf '%s\n' "${!S[@]}" | sort); do echo "$k: ${S[$k]}"; done
echo '```'
echo "</details>"
