# Part of scripts/setup.sh (sourced): Mosquitto with Tether's configuration and logins, and
# `stop`.
# Processes are found by pid (the port's owner, or a pid file this setup wrote), never by name:
# a `pkill -x mosquitto` once killed the broker of the machine hosting a test root.

wait_port() {  # wait_port PORT WHAT: up to 10 s
  local _
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  log "$2 is not listening on 127.0.0.1:$1"; return 1
}

port_owner() {  # the pid listening on a local TCP port, if any (ss from iproute2)
  # `|| true`: no listener is an answer, not an error (grep finds nothing; pipefail and set -e
  # would otherwise end the setup without a word).
  { ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2; } || true
}

stop_pid() {  # stop_pid PID: TERM, then wait up to 10 s
  local pid=$1 _
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "process $pid did not stop within 10 s"; return 1
}

# Logins (scripts/mosquitto.conf): the dynamic-security plugin's store and its admin, made once;
# the admin's password goes to $broker_accounts (root only), where Tether's processes and the
# provisioning step after the migrations find it.
broker_accounts=${TETHER_BROKER_ACCOUNTS:-/etc/tether/broker-accounts.json}
dynsec_store=/var/lib/mosquitto/dynamic-security.json
broker_auth_init() {
  local so pw
  so=$(sed -n 's/^plugin \(.*\)$/\1/p' "$repo/scripts/mosquitto-auth.conf")
  [ -f "$so" ] || { log "Mosquitto's dynamic-security plugin $so is missing (Debian's" \
    "mosquitto package ships it)"; exit 1; }
  if [ -f "$dynsec_store" ]; then
    [ -f "$broker_accounts" ] && return 0
    log "$dynsec_store exists but $broker_accounts (its admin's password) does not: move" \
        "the store away to start again (device logins must then be issued again)"; exit 1
  fi
  mkdir -p "$(dirname "$broker_accounts")"
  pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  log "creating the broker's login store with its admin account"
  mosquitto_ctrl dynsec init "$dynsec_store" tether-admin "$pw" >/dev/null
  if id mosquitto >/dev/null 2>&1; then chown mosquitto: "$dynsec_store"; fi
  chmod 600 "$dynsec_store"
  ( umask 077
    printf '{"admin": {"username": "tether-admin", "password": "%s"}}\n' "$pw" \
      > "$broker_accounts" )
}

# After the migrations: Tether's service accounts on the broker and in the database (and a
# `dev` account that may publish as any device, for simulators and tests, only with
# TETHER_DEV_BROKER=1 as scripts/test and scripts/demo set it).
# Logins are on unless TETHER_BROKER_AUTH=0 (an open broker, for a development machine only).
broker_auth() { [ "${TETHER_BROKER_AUTH:-1}" = 1 ]; }

# The configuration the broker runs: the shared part, then either an open broker or logins.
broker_conf() {
  cat "$repo/scripts/mosquitto.conf"
  if broker_auth; then cat "$repo/scripts/mosquitto-auth.conf"
  else printf '\n# TETHER_BROKER_AUTH=0: an open broker (development only)\nallow_anonymous true\n'
  fi
}

broker_logins() {
  broker_auth || return 0
  local extra=()
  [ "${TETHER_DEV_BROKER:-0}" = 1 ] && extra=(dev)
  "$venv/bin/python" -m api.store.credentials "$broker_accounts" "${extra[@]}"
}

start_broker() {
  local mconf=/etc/mosquitto/tether.conf changed=0 pid ours cmd
  mkdir -p /etc/mosquitto /run/mosquitto /var/lib/mosquitto /var/log/mosquitto
  if id mosquitto >/dev/null 2>&1; then
    chown mosquitto: /run/mosquitto /var/lib/mosquitto /var/log/mosquitto
  fi
  if broker_auth; then broker_auth_init; fi
  if ! broker_conf | cmp -s - "$mconf"; then
    broker_conf > "$mconf"; changed=1
  fi
  pid=$(port_owner $MQTT_PORT)
  ours=$(cat "$rundir/mosquitto.pid" 2>/dev/null || true)
  if [ -n "$pid" ]; then
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    # Already running exactly this configuration: nothing to restart, whoever started it.
    if [ "$changed" = 0 ] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == mosquitto ]] \
       && [[ " $cmd " == *" -c $mconf "* ]]; then
      return 0
    fi
    if [ "$pid" != "$ours" ] && [ "${TETHER_KEEP_BROKER:-0}" = 1 ]; then
      log "port $MQTT_PORT belongs to a broker this setup did not start (pid $pid: $cmd)."
      log "TETHER_KEEP_BROKER=1 forbids touching it: stop it yourself, or start it with"
      log "'mosquitto -d -c $mconf' (a copy of scripts/mosquitto.conf), then run the setup again."
      exit 1
    fi
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == mosquitto ]] || {
      log "port $MQTT_PORT is used by pid $pid ($cmd), not by Mosquitto: stop it first"; exit 1; }
    log "restarting the Mosquitto on port $MQTT_PORT (pid $pid) with $mconf" \
        "(TETHER_KEEP_BROKER=1 would leave it alone and fail)"
    if grep -q 'mosquitto\.service' "/proc/$pid/cgroup" 2>/dev/null \
       && systemctl is-active -q mosquitto 2>/dev/null; then
      systemctl stop mosquitto     # else systemd would fight over the port
    else
      stop_pid "$pid"
    fi
  else
    log "starting Mosquitto with $mconf"
  fi
  rm -f /run/mosquitto/mosquitto.pid
  step mosquitto-start "$logs" mosquitto -d -c "$mconf"
  if ! wait_port $MQTT_PORT Mosquitto; then
    tail -n 20 /var/log/mosquitto/mosquitto.log >&2 || true; exit 1
  fi
  # mosquitto.conf names this pid file; the copy in $rundir marks the broker as started by us.
  cp /run/mosquitto/mosquitto.pid "$rundir/mosquitto.pid"
}

stop_started() {
  local f pid name
  for f in "$rundir"/redis.pid "$rundir"/mosquitto.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f"); name=$(basename "$f" .pid)
    # Guards against a recycled pid: only a process of the expected program is stopped.
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name"* ]]; then
      log "stopping $name (pid $pid)"; stop_pid "$pid"
    fi
    rm -f "$f"
  done
  if [ -f "$rundir/postgresql.started" ]; then
    log "stopping PostgreSQL $PG/main"
    pg_ctlcluster --skip-systemctl-redirect $PG main stop || true
    rm -f "$rundir/postgresql.started"
  fi
}
