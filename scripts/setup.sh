#!/usr/bin/env bash
# Installs and starts everything Tether needs on Debian 12 (bookworm), as root. Idempotent: a
# second run only checks. Usage: scripts/setup.sh [install|start|all|stop]   (default: all)
#   install  Debian packages, TimescaleDB (built from Debian trixie's source), the .venv, web/
#            (needs the package registries; touches no running service)
#   start    PostgreSQL cluster (explicit port), Redis, Mosquitto, role and database, migrations
#            (needs no network)
#   stop     stops only what an earlier `start` itself started (pid files in /run/tether)
# Mosquitto: whatever broker listens on 1883 is restarted with scripts/mosquitto.conf (logins
# required: see scripts/broker.sh), unless it already runs that configuration; with TETHER_KEEP_BROKER=1 a broker the setup did not start
# is never touched, and the setup fails instead.
# Every step's output is kept in $TETHER_SETUP_LOGS (default /var/log/tether-setup); a failing
# step is named and the tail of its log printed.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
# A command failing outside a step still says where: a silent `exit 1` is what this replaces.
set -E
trap 'log "FAILED at ${BASH_SOURCE[0]##*/}:$LINENO (exit $?): $BASH_COMMAND"' ERR
phase=${1:-all}
case $phase in install|start|all|stop) ;; *)
  echo "usage: $0 [install|start|all|stop]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { log "needs root (it installs packages and starts services)"; exit 1; }

PG=15
PGPORT=5432          # must match TETHER_DATABASE_URL's default; set explicitly, never guessed
MQTT_PORT=1883
REDIS_PORT=6379
pgbin=/usr/lib/postgresql/$PG/bin
logs=${TETHER_SETUP_LOGS:-/var/log/tether-setup}
rundir=/run/tether   # pid files of what this setup started, and nothing else
venv=$repo/.venv
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$logs"

# --- install: Debian packages ------------------------------------------------------------------
# Each "already there?" check asks dpkg about the package that provides what is needed: a
# command on PATH (e.g. pg_config, which ships with the client) says nothing about headers.
tsdb_ok() {
  local ext=/usr/share/postgresql/$PG/extension ver
  ver=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$ext/timescaledb.control" 2>/dev/null) || true
  [ -n "$ver" ] && [ -f "$ext/timescaledb--$ver.sql" ] \
    && [ -f "$("$pgbin/pg_config" --pkglibdir 2>/dev/null)/timescaledb-$ver.so" ]
}
apt_install() {
  apt-get update
  apt-get install -y --no-install-recommends "$@"
}
install_packages() {
  local pkgs=(ca-certificates iproute2 mosquitto redis-server redis-tools
              postgresql-$PG postgresql-client-$PG python3 python3-venv chromium)
  tsdb_ok || pkgs+=(postgresql-server-dev-$PG cmake gcc make dpkg-dev xz-utils)
  [ ! -f "$repo/web/package.json" ] || command -v npm >/dev/null || pkgs+=(nodejs npm)
  local missing=() p
  for p in "${pkgs[@]}"; do deb_installed "$p" || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    step apt-install "$logs" apt_install "${missing[@]}"
  fi
}

# --- install: TimescaleDB, built from Debian trixie's source package -----------------------------
# bookworm has no TimescaleDB package; trixie ships its source. The mirror is whatever this
# machine's apt already uses, and apt checks the files against Debian's signed archive index.
tsdb_work=""
tsdb_fetch() {
  local mirror
  mirror=$(debian_mirror) || true
  [ -n "$mirror" ] || { echo "no Debian mirror found in this machine's apt sources"; return 1; }
  mkdir -p "$tsdb_work/lists/partial"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
    > "$tsdb_work/sources.list"
  local aptopts=(-o Dir::Etc::sourcelist="$tsdb_work/sources.list" -o Dir::Etc::sourceparts=-
                 -o Dir::State::Lists="$tsdb_work/lists")
  apt-get "${aptopts[@]}" update
  cd "$tsdb_work"
  apt-get "${aptopts[@]}" source --download-only timescaledb
  # apt has already checked the files against the signed index, so dpkg-source's complaint
  # that it has no key for the .dsc signature is noise.
  dpkg-source -x ./timescaledb_*.dsc src
}
tsdb_build() {
  cd "$tsdb_work/src"
  ./bootstrap -DAPACHE_ONLY=ON -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DPG_CONFIG="$pgbin/pg_config"
  make -C build -j"$(nproc)" install
  cd / && tsdb_ok
}
install_timescaledb() {
  tsdb_ok && return 0
  local hdr
  hdr="$("$pgbin/pg_config" --includedir-server 2>/dev/null || true)/postgres.h"
  [ -f "$hdr" ] || { log "PostgreSQL server headers missing ($hdr):" \
    "postgresql-server-dev-$PG is not installed"; exit 1; }
  log "building TimescaleDB from Debian trixie source (log: $logs/timescaledb-build.log)"
  tsdb_work=$(mktemp -d)
  trap 'rm -rf "$tsdb_work"' EXIT
  step timescaledb-fetch "$logs" tsdb_fetch
  step timescaledb-build "$logs" tsdb_build
  rm -rf "$tsdb_work"; trap - EXIT
}

# --- install: Python environment, browser-test packages --------------------------------------------
pip_install() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys' || python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --upgrade pip
  "$venv/bin/pip" install -e "$repo[dev]"
  "$venv/bin/tether" --help >/dev/null
}
install_python() {
  local want have
  want=$( (cat "$repo/pyproject.toml"; python3 --version) | sha256sum | cut -c1-16)
  have=$(cat "$venv/.tether-installed" 2>/dev/null || true)
  # A stamp alone can lie (a venv whose python was upgraded away): the venv must also run.
  if [ "$have" != "$want" ] || ! "$venv/bin/python" -c \
       'import importlib.metadata as m; m.distribution("tether")' 2>/dev/null; then
    log "installing Python packages"
    step pip-install "$logs" pip_install
    echo "$want" > "$venv/.tether-installed"
  fi
}
install_web() {
  [ -f "$repo/web/package.json" ] || return 0
  local want have
  want=$(cat "$repo/web/package-lock.json" 2>/dev/null | sha256sum | cut -c1-16)
  have=$(cat "$repo/web/node_modules/.tether-installed" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    log "installing web/ packages (npm ci)"
    step npm-ci "$logs" bash -c "cd '$repo/web' && npm ci --no-audit --no-fund"
    echo "$want" > "$repo/web/node_modules/.tether-installed"
  fi
}

# --- start: PostgreSQL ---------------------------------------------------------------------------
cluster_field() { pg_lsclusters -h | awk -v v=$PG -v f="$1" '$1==v && $2=="main" {print $f}'; }
psql_su() { runuser -u postgres -- psql -p $PGPORT -v ON_ERROR_STOP=1 -Atq "$@"; }
start_postgres() {
  if [ -z "$(cluster_field 1)" ]; then
    log "creating PostgreSQL cluster $PG/main on port $PGPORT"
    # An explicit port: left to itself pg_createcluster takes the next free one (5433) when
    # 5432 is busy, and everything after would talk to someone else's server.
    step pg-createcluster "$logs" pg_createcluster -p $PGPORT $PG main
  fi
  local port; port=$(cluster_field 3)
  if [ "$port" != "$PGPORT" ]; then
    # Debian's package creates 15/main on the next free port when 5432 was busy at install time
    # (another server, or a build root sharing the network); Tether expects $PGPORT.
    cluster_field 4 | grep -q online && { log "cluster $PG/main runs on port $port, Tether" \
      "expects $PGPORT: stop it, or set TETHER_DATABASE_URL to that port"; exit 1; }
    log "cluster $PG/main was created on port $port; setting it to $PGPORT"
    step pg-port "$logs" pg_conftool $PG main set port $PGPORT
  fi
  local tconf=/etc/postgresql/$PG/main/conf.d/50-tether.conf restart=0 mem_mb
  # A quarter of the memory (at most 4 GB) for shared buffers, and room for WAL between
  # checkpoints: each fix goes into the (device_id, fix_time) key at a random place, and with
  # Debian's 128 MB the index of a busy day's chunk outgrew the buffers (tether bench --duration
  # 180: 8,240 fixes/s offered, 7,210 stored, a growing backlog, docs/bench.md).
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  local buffers_mb=$(( mem_mb / 4 > 4096 ? 4096 : mem_mb / 4 ))
  local wanted="shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
max_connections = 200
shared_buffers = ${buffers_mb}MB
max_wal_size = 4GB
checkpoint_completion_target = 0.9
wal_compression = on"
  mkdir -p "$(dirname "$tconf")"
  if [ "$(cat "$tconf" 2>/dev/null)" != "$wanted" ]; then printf '%s\n' "$wanted" > "$tconf"
    restart=1; fi
  local pgctl=(pg_ctlcluster --skip-systemctl-redirect $PG main)
  if ! cluster_field 4 | grep -q online; then
    log "starting PostgreSQL $PG/main on port $PGPORT"
    step pg-start "$logs" "${pgctl[@]}" start
    touch "$rundir/postgresql.started"
  elif [ "$restart" = 1 ] || ! psql_su -c 'show shared_preload_libraries' | grep -q timescaledb
  then
    log "restarting PostgreSQL to load TimescaleDB and Tether's settings ($tconf)"
    step pg-restart "$logs" "${pgctl[@]}" restart
  fi
  # The local 'tether' role is a superuser so that tests can create throwaway databases with the
  # extension. In production a DBA creates the database and extension; Tether runs as owner.
  [ "$(psql_su -c "select 1 from pg_roles where rolname='tether'")" = 1 ] \
    || psql_su -c "create role tether login superuser password 'tether'"
  [ "$(psql_su -c "select 1 from pg_database where datname='tether'")" = 1 ] \
    || psql_su -c "create database tether owner tether"
}

# --- start: Redis, with AOF persistence when the setup starts it ---------------------------------
start_redis() {
  if redis-cli -p $REDIS_PORT ping >/dev/null 2>&1; then
    # A Redis this setup did not start (Debian's service) may run without AOF: a restart would
    # then lose the rule state, which Tether rebuilds from PostgreSQL (docs/faults.md), and the
    # live state until the next fixes. Switched on at once and, where Redis has a config file,
    # kept there.
    if [ "$(redis-cli -p $REDIS_PORT config get appendonly | tail -n1)" != yes ]; then
      log "switching Redis on port $REDIS_PORT to appendonly (AOF) persistence"
      redis-cli -p $REDIS_PORT config set appendonly yes >/dev/null
      redis-cli -p $REDIS_PORT config rewrite >/dev/null 2>&1 || true
    fi
    return 0
  fi
  log "starting Redis on port $REDIS_PORT (appendonly)"
  mkdir -p /var/lib/redis /var/log/redis
  step redis-start "$logs" redis-server --daemonize yes --bind 127.0.0.1 --port $REDIS_PORT \
    --dir /var/lib/redis --appendonly yes --logfile /var/log/redis/tether.log \
    --pidfile "$rundir/redis.pid"
  wait_port $REDIS_PORT redis || { tail -n 20 /var/log/redis/tether.log >&2; exit 1; }
}

source "$repo/scripts/broker.sh"

case $phase in
  install|all)
    install_packages
    install_timescaledb
    install_python
    install_web ;;
esac
case $phase in
  start|all)
    mkdir -p "$rundir"
    start_postgres
    start_redis
    start_broker
    step migrate "$logs" "$venv/bin/tether" migrate
    step broker-logins "$logs" broker_logins ;;
  stop) stop_started ;;
esac
[ "$phase" = stop ] || log "ready ($phase)"
