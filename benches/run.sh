#!/usr/bin/env bash
# Benchmarks of `srcstore hash`, each side by side with a peer in one run: interleaved rounds
# (the order flips every round), medians, ratios srcstore/peer. Nothing here asserts a target:
# the goals are printed next to the figures. Prints a Markdown report on stdout, progress on stderr.
#
#   benches/run.sh [ROUNDS]          ROUNDS: rounds per warm measurement (default 15, at least 5)
#
# Environment:
#   SRCSTORE=/path/to/srcstore  use this binary instead of building target/release/srcstore
#   REV=<commit>                benchmark a clean build of that commit (git archive + cargo build
#                               under $BENCH_TMP), not the work tree
#   COLD_ROUNDS=N               rounds of the truly cold variant (drop_caches; default 5, 0 = skip)
#   MEM_SIZES="10000 ..."       file counts of the memory-per-file trees (default 10000 25000 50000 100000)
#   BENCH_TMP=/var/tmp          where the temporary trees go; KEEP=1 keeps them
#
# Trees: (a) the 20,000-file synthetic corpus of ../../shared/gen-corpus-synth.py (~209 MB);
# (b) a real node_modules (~21,000 files, ~130 MB, 271 packages) installed by `npm ci` from the
# lockfile in benches/npm-tree/ (--ignore-scripts, so it is the registry tarballs' content only).
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=$(cd "$(dirname "$0")/../../shared" && pwd)
ROUNDS=${1:-15}
[ "$ROUNDS" -ge 5 ] || { echo "run.sh: use at least 5 rounds" >&2; exit 2; }
COLD_ROUNDS=${COLD_ROUNDS:-5}
MEM_SIZES=${MEM_SIZES:-"10000 25000 50000 100000"}
log() { echo "run.sh: $*" >&2; }

# --- tools -----------------------------------------------------------------------------------
need_apt=()
[ -x /usr/bin/time ] || need_apt+=(time)
command -v git >/dev/null || need_apt+=(git)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
have_nix=1
command -v nix >/dev/null || { have_nix=0; log "nix not found (scripts/setup-machine installs it): skipping the nix comparison"; }

source "$here/binary.sh"
source "$here/daemon.sh"

# Isolate from the user's configuration: srcstore's index goes to a fresh cache dir (scratch),
# git reads no global or system config.
scratch bench
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
git_commit() { (cd "$1" && git init -q && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -q -m tree); }

# --- trees -----------------------------------------------------------------------------------
log "creating trees under $T"
python3 "$shared/gen-corpus-synth.py" "$T/corpus" >/dev/null
mkdir -p "$T/npm" && cp "$here/npm-tree/package.json" "$here/npm-tree/package-lock.json" "$T/npm/"
(cd "$T/npm" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
trees=(corpus node_modules)
declare -A dir gitdir
dir[corpus]=$T/corpus; dir[node_modules]=$T/npm/node_modules
for t in "${trees[@]}"; do
  gitdir[$t]=$T/git/$t; mkdir -p "$T/git"; cp -a "${dir[$t]}" "${gitdir[$t]}"; git_commit "${gitdir[$t]}"
done

# --- measuring ---------------------------------------------------------------------------------
# tm, med, msof, drop: daemon.sh.
ss_cold() { "$B" hash --no-ignore --no-index "$1"; }
cat_all() { find "$1" -type f -print0 | xargs -0 cat; }
ss_nix()  { "$B" hash --nix --no-ignore --no-index "$1"; }
nix_hash() { nix --extra-experimental-features nix-command hash path "$1"; }
ss_warm() { "$B" hash "$1"; }
git_st()  { git -C "$1" status; }
git_uno() { git -C "$1" status -uno; }

# Sanity checks, and the warm-ups: the index is written twice (a file changed within the racy
# window of the first run is hashed again by the second), git refreshes its index the same way.
declare -A info
for t in "${trees[@]}"; do
  j=$("$B" hash --json --no-ignore --no-index "${dir[$t]}")
  info[$t]=$(echo "$j" | sed -E 's/.*"files":([0-9]+),"dirs":([0-9]+),"symlinks":([0-9]+),"bytes":([0-9]+).*/\1 files, \2 dirs, \3 symlinks, \4 bytes/')
  if [ $have_nix = 1 ]; then
    ours=$("$B" hash --nix --json --no-ignore --no-index "${dir[$t]}" | sed -E 's/.*"nar_hash":"sha256:([0-9a-z]+)".*/\1/')
    theirs=$(nix --extra-experimental-features nix-command hash path --base32 "${dir[$t]}")
    [ "$ours" = "$theirs" ] || log "WARNING: $t: srcstore NAR hash $ours != nix $theirs"
  fi
  for _ in 1 2; do ss_warm "${gitdir[$t]}" >/dev/null; git_st "${gitdir[$t]}" >/dev/null; done
  h=$("$B" hash --json "${gitdir[$t]}" | sed -E 's/.*"hashed":([0-9]+).*/\1/')
  [ "$h" = 0 ] || log "WARNING: $t: warm run still hashed $h files"
  if git -C "${gitdir[$t]}" status --porcelain | grep -q .; then log "WARNING: $t: git status is not clean"; fi
done

# Let the writeback of the freshly written trees finish: it slows the first rounds otherwise.
sync
pairs=(ss_cold cat_all ss_warm git_st git_uno)
if [ $have_nix = 1 ]; then pairs+=(ss_nix nix_hash); fi
log "warm page cache: 1 warm-up + $ROUNDS rounds"
for r in $(seq 0 "$ROUNDS"); do
  order=("${pairs[@]}")
  if (( r % 2 )); then order=(); for ((i=${#pairs[@]}-1; i>=0; i--)); do order+=("${pairs[i]}"); done; fi
  for t in "${trees[@]}"; do
    for c in "${order[@]}"; do
      case $c in ss_warm|git_st|git_uno) d=${gitdir[$t]} ;; *) d=${dir[$t]} ;; esac
      if [ "$r" = 0 ]; then "$c" "$d" >/dev/null; else tm "$t:$c" "$c" "$d"; fi
    done
  done
done

cold_ok=0
if [ "$COLD_ROUNDS" -gt 0 ] && drop 2>/dev/null; then
  cold_ok=1
  log "truly cold (drop_caches before every run): $COLD_ROUNDS rounds"
  for r in $(seq 1 "$COLD_ROUNDS"); do
    for t in "${trees[@]}"; do
      if (( r % 2 )); then order=(ss_cold cat_all); else order=(cat_all ss_cold); fi
      for c in "${order[@]}"; do drop; tm "$t:cold_$c" "$c" "${dir[$t]}"; done
    done
  done
elif [ "$COLD_ROUNDS" -gt 0 ]; then
  log "cannot write /proc/sys/vm/drop_caches: no truly cold variant"
fi

# Memory per file: max RSS of `srcstore hash --no-index` (and, for context, of a warm run with the
# index) on trees that differ only in file count.
log "memory: trees of $MEM_SIZES files"
declare -A rss
for n in $MEM_SIZES; do
  m=$T/mem/n$n; python3 "$here/gen-many-files.py" "$m" "$n" >/dev/null
  for _ in 1 2; do "$B" hash "$m" >/dev/null; done
  a=""; b=""
  for _ in 1 2 3 4 5; do
    /usr/bin/time -f %M -o "$T/rss" "$B" hash --no-ignore --no-index "$m" >/dev/null; a+="$(cat "$T/rss") "
    /usr/bin/time -f %M -o "$T/rss" "$B" hash "$m" >/dev/null; b+="$(cat "$T/rss") "
  done
  rss[noindex:$n]=$(echo "$a" | med); rss[index:$n]=$(echo "$b" | med)
  rss[raw:$n]="$a| $b"
  rm -rf "$m"
done
# Least-squares slope of RSS (KiB) over file count, in bytes per file.
slope() {
  local kind=$1 n
  for n in $MEM_SIZES; do echo "$n ${rss[$kind:$n]}"; done |
    awk '{x[NR]=$1; y[NR]=$2*1024; sx+=$1; sy+=$2*1024} END{mx=sx/NR; my=sy/NR;
      for(i=1;i<=NR;i++){nu+=(x[i]-mx)*(y[i]-my); de+=(x[i]-mx)^2} printf "%.0f", nu/de}'
}

# --- report ----------------------------------------------------------------------------------
first=${MEM_SIZES%% *}; last=${MEM_SIZES##* }
fs=$(stat -f -c %T "$T"); [ "$fs" = ext2/ext3 ] && fs="ext4 (statfs: ext2/ext3)"
echo "### Results"
echo
echo "$(date -u +%Y-%m-%d), srcstore $version, $(nproc) cores, kernel $(uname -r), $fs on $(df --output=source "$T" | tail -1), $(nix --version 2>/dev/null || echo 'no nix'), $(git --version)."
echo "Medians of $ROUNDS interleaved rounds (truly cold: $COLD_ROUNDS); ratio = srcstore median / peer median."
echo
for t in "${trees[@]}"; do echo "- \`$t\`: ${info[$t]}"; done
echo
echo "| tree | measure | srcstore (ms) | peer | peer (ms) | ratio | goal |"
echo "|---|---|---:|---|---:|---:|---|"
row() { # tree label ours peer peerlabel goal
  local a b; a=$(echo "${S[$1:$3]}" | med); b=$(echo "${S[$1:$4]}" | med)
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$(msof "$a")" "$5" "$(msof "$b")" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}')" "$6"
}
for t in "${trees[@]}"; do
  row "$t" "cold (no index), page cache warm" ss_cold cat_all '`find \| xargs cat`' "≤ 1.1"
  if [ $cold_ok = 1 ]; then row "$t" "cold (no index), page cache dropped" cold_ss_cold cold_cat_all '`find \| xargs cat`' "(info)"; fi
  if [ $have_nix = 1 ]; then row "$t" "\`--nix\` (no index)" ss_nix nix_hash '`nix hash path`' "< 1.0"; fi
  row "$t" "warm re-check (index)" ss_warm git_st '`git status`' "≤ 1.2"
  row "$t" "warm re-check (index)" ss_warm git_uno '`git status -uno`' "(info)"
done
echo
echo "Memory: median max RSS of 5 runs (KiB) on trees of N small files (benches/gen-many-files.py); per file = least-squares slope."
echo
echo "| run | $(for n in $MEM_SIZES; do printf '%s files | ' "$n"; done)bytes per file | goal |"
echo "|---|$(for n in $MEM_SIZES; do printf -- '---:|'; done)---:|---|"
echo "| \`srcstore hash --no-ignore --no-index\` | $(for n in $MEM_SIZES; do printf '%s | ' "${rss[noindex:$n]}"; done)$(slope noindex) | < 150 |"
echo "| \`srcstore hash\` (index warm) | $(for n in $MEM_SIZES; do printf '%s | ' "${rss[index:$n]}"; done)$(slope index) | (info) |"
echo
echo "Per-file from the two ends only: $(awk -v a="${rss[noindex:$first]}" -v b="${rss[noindex:$last]}" -v n="$first" -v m="$last" 'BEGIN{printf "%.0f", (b-a)*1024/(m-n)}') B (no index)."
echo
echo "<details><summary>Raw samples (µs, in round order)</summary>"
echo
echo '```'
for k in $(printf '%s\n' "${!S[@]}" | sort); do echo "$k: ${S[$k]}"; done
for n in $MEM_SIZES; do echo "rss KiB n=$n (no index | index): ${rss[raw:$n]}"; done
echo '```'
echo "</details>"
