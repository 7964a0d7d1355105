#!/usr/bin/env bash
# Installs and starts everything Tether needs on Debian 12 (bookworm), then prepares the
# database and the Python environment. Idempotent: a second run only checks.
# Needs root (it installs Debian packages and starts services).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG=15
pgbin=/usr/lib/postgresql/$PG/bin
log() { echo "[setup] $*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Debian packages -------------------------------------------------------------------------
want=()
command -v mosquitto >/dev/null || want+=(mosquitto)
command -v redis-server >/dev/null || want+=(redis-server redis-tools)
[ -x "$pgbin/postgres" ] || want+=(postgresql-$PG postgresql-client-$PG)
command -v psql >/dev/null || want+=(postgresql-client-$PG)
python3 -c 'import venv, ensurepip' 2>/dev/null || want+=(python3-venv)
if [ ! -f /usr/share/postgresql/$PG/extension/timescaledb.control ]; then
  [ -x "$pgbin/pg_config" ] || want+=(postgresql-server-dev-$PG)
  for t in cmake gcc make dpkg-source xz; do
    command -v $t >/dev/null || case $t in
      dpkg-source) want+=(dpkg-dev) ;; xz) want+=(xz-utils) ;; *) want+=($t) ;; esac
  done
  want+=(ca-certificates)
fi
if [ "${#want[@]}" -gt 0 ]; then log "installing ${want[*]}"; apt_install "${want[@]}"; fi

# --- TimescaleDB, built from Debian trixie's source package ------------------------------------
# bookworm has no TimescaleDB package; trixie ships its source. The mirror is whatever this
# machine's apt already uses, and signatures are checked against Debian's archive keyring.
if [ ! -f /usr/share/postgresql/$PG/extension/timescaledb.control ]; then
  log "building TimescaleDB from Debian trixie source"
  work=$(mktemp -d)
  srcs=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
  do [ -f "$f" ] && srcs+=("$f"); done
  # The first Debian archive URI (not the security one) of this machine's own apt sources.
  mirror=$(awk '/^[[:space:]]*(URIs:|deb[[:space:]])/ { for (i = 1; i <= NF; i++)
             if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; exit } }' "${srcs[@]}")
  [ -n "$mirror" ] || { echo "[setup] no Debian mirror in apt sources" >&2; exit 1; }
  mkdir -p "$work/lists/partial"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
    > "$work/sources.list"
  aptopts=(-o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=-
           -o Dir::State::Lists="$work/lists")
  apt-get "${aptopts[@]}" update -qq 2>/dev/null
  trap 'rm -rf "$work"' EXIT
  # apt checks the downloaded files against the signed index, so dpkg-source's own complaint
  # that it has no key for the .dsc signature is noise.
  (cd "$work" && apt-get "${aptopts[@]}" source --download-only -qq timescaledb 2>/dev/null \
     && dpkg-source -x ./timescaledb_*.dsc src >/dev/null 2>&1)
  (cd "$work/src" && ./bootstrap -DAPACHE_ONLY=ON -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
     -DPG_CONFIG="$pgbin/pg_config" >/dev/null 2>&1 && make -C build -j"$(nproc)" install >/dev/null)
  rm -rf "$work"; trap - EXIT
fi

# --- PostgreSQL --------------------------------------------------------------------------------
confd=/etc/postgresql/$PG/main/conf.d
if [ ! -d "$confd" ]; then
  log "creating PostgreSQL cluster $PG/main"
  pg_createcluster $PG main >/dev/null
fi
tconf=$confd/50-tether.conf
wanted_conf="shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
max_connections = 200"
if [ "$(cat "$tconf" 2>/dev/null)" != "$wanted_conf" ]; then
  printf '%s\n' "$wanted_conf" > "$tconf"
  pg_restart=1
fi
pg_online() { pg_lsclusters -h | awk -v v=$PG '$1==v && $2=="main" {print $4}' | grep -q online; }
if ! pg_online; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect $PG main start
elif [ "${pg_restart:-0}" = 1 ] || \
     ! su postgres -c "psql -Atqc 'show shared_preload_libraries'" | grep -q timescaledb; then
  log "restarting PostgreSQL to load TimescaleDB"
  pg_ctlcluster --skip-systemctl-redirect $PG main restart
fi
psql_su() { su postgres -c "psql -v ON_ERROR_STOP=1 -Atq $*"; }
# The local 'tether' role is a superuser so that tests can create throwaway databases with the
# extension. In production, a DBA creates the database and extension, and Tether runs as owner.
if [ "$(psql_su "-c \"select 1 from pg_roles where rolname='tether'\"")" != 1 ]; then
  psql_su "-c \"create role tether login superuser password 'tether'\""
fi
if [ "$(psql_su "-c \"select 1 from pg_database where datname='tether'\"")" != 1 ]; then
  psql_su "-c \"create database tether owner tether\""
fi

# --- Redis -------------------------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir /var/lib/redis \
    --logfile /var/log/redis/tether.log >/dev/null
  for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# --- Mosquitto, with Tether's configuration ----------------------------------------------------
mconf=/etc/mosquitto/tether.conf
mkdir -p /run/mosquitto /var/lib/mosquitto /var/log/mosquitto
if id mosquitto >/dev/null 2>&1; then
  chown mosquitto: /run/mosquitto /var/lib/mosquitto /var/log/mosquitto
fi
restart_broker=0
if ! cmp -s "$repo/scripts/mosquitto.conf" "$mconf"; then
  cp "$repo/scripts/mosquitto.conf" "$mconf"; restart_broker=1
fi
running=$(pgrep -a -x mosquitto || true)
if [ -z "$running" ] || ! grep -q -- "$mconf" <<<"$running" || [ "$restart_broker" = 1 ]; then
  if [ -n "$running" ]; then
    log "restarting Mosquitto with $mconf"
    pkill -x mosquitto || true
    for _ in $(seq 50); do pgrep -x mosquitto >/dev/null || break; sleep 0.1; done
  else
    log "starting Mosquitto"
  fi
  mosquitto -d -c "$mconf"
fi
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1
done

# --- Python environment ------------------------------------------------------------------------
venv=$repo/.venv
stamp=$venv/.tether-installed
want_stamp=$(cat "$repo/pyproject.toml" | sha256sum | cut -c1-16)
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
  log "installing Python packages"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  # Build-backend chatter goes to a log; it is shown only when the install fails.
  if ! "$venv/bin/pip" install -q -e "$repo[dev]" >"$venv/install.log" 2>&1; then
    cat "$venv/install.log" >&2; exit 1
  fi
  echo "$want_stamp" > "$stamp"
fi

# --- Schema ------------------------------------------------------------------------------------
"$venv/bin/tether" migrate
log "ready"
