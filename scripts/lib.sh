# Shared by scripts/setup.sh and scripts/fresh-check (sourced, not run).
# Why a step runner: a build whose output goes to /dev/null fails with no message at all. Every
# step writes its whole output to a log file that is kept; on failure the step is named and the
# tail of its log printed. Quiet on success, loud on failure.

: "${TETHER_LOG_TAG:=setup}"
log() { echo "[$TETHER_LOG_TAG] $*" >&2; }

# step NAME LOGDIR CMD...: runs CMD (a command or function) with its output in LOGDIR/NAME.log.
# CMD runs as a background job and is then waited for: inside `if !` or `||` bash ignores
# `set -e`, so a failing line in the middle of a function would otherwise go unnoticed.
step() {
  local name=$1 dir=$2; shift 2
  local logf="$dir/$name.log" rc=0
  mkdir -p "$dir"
  ( set -euo pipefail; "$@" ) >"$logf" 2>&1 </dev/null &
  wait $! || rc=$?
  if [ "$rc" != 0 ]; then
    {
      echo "[$TETHER_LOG_TAG] FAILED step '$name' (exit $rc); the last 40 lines of $logf:"
      tail -n 40 "$logf" | sed 's/^/    | /'
    } >&2
    exit 1
  fi
}

# The first Debian archive URI (not the security one) of this machine's own apt sources, so
# that no host name is ever written into the repository.
debian_mirror() {
  local srcs=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
           /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && srcs+=("$f")
  done
  [ "${#srcs[@]}" -gt 0 ] || return 1
  awk '/^[[:space:]]*(URIs:|deb[[:space:]])/ { for (i = 1; i <= NF; i++)
         if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; exit } }' "${srcs[@]}"
}

# Whether a Debian package is installed (not merely a command of the same name on PATH).
deb_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}
