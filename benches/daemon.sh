# Sourced by the benchmark scripts: a scratch directory, the daemons started in it, and their
# cleanup when the script exits; and the small helpers every script needs. Needs a `log`
# function.
#   scratch NAME                        sets T (a new directory under $BENCH_TMP, removed at exit
#                                       unless KEEP=1) and XDG_CACHE_HOME (a fresh index in it)
#   start_daemon BINARY DIR MNT ARG...  `BINARY mount ARG... --mountpoint MNT DIR`; waits until it
#                                       answers; sets DPID and SNAP (the current snapshot's path)
#   field BINARY DIR NAME               a number of DIR's daemon's `status`
#   tm NAME CMD...                      runs CMD once, appends its wall time in µs to S[NAME]
#   read_all DIR                        every file's bytes, to stdout
#   drop                                drops every cache (page cache, dentries, inodes)
#   med, msof µs, ratio A B             the median of the numbers on stdin; µs as ms; A / B
daemons=() mounts=()
scratch() {
  T=$(mktemp -d "${BENCH_TMP:-/var/tmp}/srcstore-$1.XXXXXX")
  export XDG_CACHE_HOME=$T/cache
  trap cleanup EXIT
}
cleanup() {
  local p m
  for p in "${daemons[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  for m in "${mounts[@]}"; do mountpoint -q "$m" && fusermount3 -u "$m"; done
  if [ "${KEEP:-0}" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi
}
start_daemon() {
  local bin=$1 dir=$2 mnt=$3; shift 3
  mkdir -p "$mnt"
  "$bin" mount "$@" --mountpoint "$mnt" "$dir" 2>>"$T/daemon.log" &
  DPID=$!; daemons+=("$DPID"); mounts+=("$mnt")
  local i
  for i in $(seq 600); do
    SNAP=$("$bin" path "$dir" 2>/dev/null) && return 0
    kill -0 "$DPID" 2>/dev/null || break
    sleep 0.1
  done
  log "the daemon for $dir did not come up:"; cat "$T/daemon.log" >&2; exit 1
}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { "$1" status --json "$2" | sed -E "s/.*\"$3\":([0-9.]+).*/\\1/"; }
declare -A S
tm() {
  local k=$1; shift
  local t0=$EPOCHREALTIME
  "$@" >/dev/null 2>"$T/err" || { log "failed: $*"; cat "$T/err" >&2; exit 1; }
  local t1=$EPOCHREALTIME
  S[$k]+="$(( ${t1/./} - ${t0/./} )) "
}
read_all() { find "$1" -type f -print0 | xargs -0 cat; }
msof() { awk -v u="$1" 'BEGIN{printf "%.1f", u/1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
