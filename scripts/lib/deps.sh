# shellcheck shell=bash
# Installs and starts Coffer's real dependencies on a Debian bookworm machine:
# SecantusDB (MongoDB wire protocol, PyPI), RabbitMQ (apt), anvil (npm) and
# Chromium with its ChromeDriver (apt, for the console's browser tests).
#
# Source it from bash (it is safe under `set -euo pipefail`):
#
#   source scripts/lib/deps.sh
#   trap stop_started EXIT
#   ensure_secantus; start_secantus 27117            # in-memory
#   start_secantus 27017 .run/secantus-data          # persistent directory
#   ensure_rabbitmq; start_rabbitmq                  # guest/guest on 127.0.0.1:5672
#   ensure_anvil; start_anvil 8645
#   ensure_chromium                                  # chromium + chromedriver (apt)
#
# Everything it writes lives under the repository root: .venv/ (Python venv with
# SecantusDB), .tools/ (npm packages, anvil) and .run/ (logs and pid files). It
# never reads stdin, so it runs the same with or without a TTY (CI has none).
#
# Functions return non-zero (and print the reason and the log tail) on failure.
# stop_started stops exactly the processes that this shell started.

if [[ -n "${_COFFER_DEPS_SOURCED:-}" ]]; then
  return 0
fi
_COFFER_DEPS_SOURCED=1

COFFER_ROOT="${COFFER_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
COFFER_RUN_DIR="${COFFER_RUN_DIR:-$COFFER_ROOT/.run}"
COFFER_VENV="${COFFER_VENV:-$COFFER_ROOT/.venv}"
COFFER_TOOLS="${COFFER_TOOLS:-$COFFER_ROOT/.tools}"

SECANTUS_VERSION="${SECANTUS_VERSION:-0.7.0b3}"
ANVIL_VERSION="${ANVIL_VERSION:-1.7.1}"
# Seconds to wait for each service to answer after starting it.
COFFER_START_TIMEOUT="${COFFER_START_TIMEOUT:-60}"
RABBITMQ_START_TIMEOUT="${RABBITMQ_START_TIMEOUT:-120}"

# rabbitmq-server and rabbitmqctl live in /usr/sbin; cargo may live in ~/.cargo/bin.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" ;; esac
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
  PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
export PATH
export DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export npm_config_yes=true npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false

# Pid files of the processes started by this shell (see stop_started).
_COFFER_STARTED=()

# --------------------------------------------------------------------------- helpers

deps_log() { printf '[deps] %s\n' "$*" >&2; }

deps_die() {
  printf '[deps] ERROR: %s\n' "$*" >&2
  return 1
}

# as_root CMD...: run CMD as root (directly when we are root, else with sudo -n).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    deps_die "need root to run: $*"
  fi
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  # shellcheck disable=SC2016 # $1 expands in the inner shell
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# pid_alive PIDFILE [PATTERN]: true when the pid file names a live process whose
# command line contains PATTERN (guards against recycled pids).
pid_alive() {
  local pidfile=$1 pattern=${2:-} pid
  [[ -s "$pidfile" ]] || return 1
  pid=$(head -n1 "$pidfile")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -n "$pattern" && -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern" || return 1
  fi
}

# log_tail FILE: print the end of a log file to stderr.
log_tail() {
  if [[ -f "$1" ]]; then
    printf '[deps] ---- last lines of %s ----\n' "$1" >&2
    tail -n 40 "$1" >&2 || true
    printf '[deps] ----\n' >&2
  fi
}

# start_bg NAME PIDFILE LOGFILE CMD...: start CMD in its own session in the
# background, detached from stdin, logging to LOGFILE; records the pid (the pid
# of CMD itself: the wrapper shell execs it) in PIDFILE and in this shell's list
# of started processes.
start_bg() {
  local name=$1 pidfile=$2 logfile=$3
  shift 3
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
  rm -f "$pidfile"
  {
    printf '\n==== %s: starting %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name"
    printf '==== %s\n' "$*"
  } >>"$logfile"
  # The inner shell writes its own pid, then execs the command under that pid.
  # shellcheck disable=SC2016 # $$, $0 and $@ expand in the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 &
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$pidfile" ]] && break
    sleep 0.1
  done
  [[ -s "$pidfile" ]] || deps_die "$name: did not record its pid in $pidfile" || return 1
  _COFFER_STARTED+=("$pidfile")
}

# wait_ready NAME PIDFILE LOGFILE TIMEOUT CHECK...: poll CHECK until it succeeds;
# fail with the log tail when the process dies or TIMEOUT seconds pass.
wait_ready() {
  local name=$1 pidfile=$2 logfile=$3 timeout=$4
  shift 4
  local deadline=$((SECONDS + timeout))
  while ! "$@" >/dev/null 2>&1; do
    if ! pid_alive "$pidfile"; then
      log_tail "$logfile"
      deps_die "$name exited before it was ready (log: $logfile)" || return 1
    fi
    if ((SECONDS >= deadline)); then
      log_tail "$logfile"
      deps_die "$name did not become ready within ${timeout}s (log: $logfile)" || return 1
    fi
    sleep 0.5
  done
}

# stop_pidfile PIDFILE [PATTERN]: stop the process (and its process group, which
# start_bg made its own) named by PIDFILE, TERM then KILL after 15 s; removes the
# pid file. Does nothing if the process is gone or is not what PATTERN says.
stop_pidfile() {
  local pidfile=$1 pattern=${2:-} pid i
  if ! pid_alive "$pidfile" "$pattern"; then
    rm -f "$pidfile"
    return 0
  fi
  pid=$(head -n1 "$pidfile")
  # start_bg runs each command as a session (and process group) leader.
  if [[ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$pid" ]]; then
    kill -TERM -- "-$pid" 2>/dev/null || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    deps_log "pid $pid ($pidfile) ignored TERM; sending KILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# stop_started: stop every process this shell started with start_bg, newest
# first. Meant for `trap stop_started EXIT`; never fails.
stop_started() {
  local i
  for ((i = ${#_COFFER_STARTED[@]} - 1; i >= 0; i--)); do
    stop_pidfile "${_COFFER_STARTED[$i]}" || true
  done
  _COFFER_STARTED=()
  return 0
}

# --------------------------------------------------------------------------- SecantusDB

# ensure_secantus: a venv at .venv with secantusdb (pinned) and everything in
# requirements-dev.txt. Reinstalls only when requirements-dev.txt changes.
ensure_secantus() {
  local py=python3 req="$COFFER_ROOT/requirements-dev.txt" stamp="$COFFER_VENV/.coffer-requirements.sha256"
  command -v "$py" >/dev/null 2>&1 || py=/usr/bin/python3
  if [[ -d "$COFFER_VENV" ]] && ! "$COFFER_VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    deps_log "removing broken venv $COFFER_VENV"
    rm -rf "$COFFER_VENV"
  fi
  if [[ ! -x "$COFFER_VENV/bin/python" ]]; then
    deps_log "creating Python venv in $COFFER_VENV"
    "$py" -m venv "$COFFER_VENV" </dev/null || return 1
  fi
  local pip=("$COFFER_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input)
  if ! "$COFFER_VENV/bin/python" -c 'import secantus' >/dev/null 2>&1 ||
    [[ "$("$COFFER_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("secantusdb"))' 2>/dev/null)" != "$SECANTUS_VERSION" ]]; then
    deps_log "installing secantusdb==$SECANTUS_VERSION into $COFFER_VENV"
    "${pip[@]}" "secantusdb==$SECANTUS_VERSION" </dev/null || return 1
  fi
  if [[ -f "$req" ]]; then
    local sum
    sum=$(sha256sum "$req" | cut -d' ' -f1)
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$sum" ]]; then
      deps_log "installing $req into $COFFER_VENV"
      "${pip[@]}" -r "$req" </dev/null || return 1
      printf '%s\n' "$sum" >"$stamp"
    fi
  fi
}

# mongo_ping PORT: true when a MongoDB server on 127.0.0.1:PORT answers `hello`.
# Speaks OP_MSG over a raw socket with the standard library, so it needs no driver.
mongo_ping() {
  local py="$COFFER_VENV/bin/python"
  [[ -x "$py" ]] || py=python3
  "$py" "$COFFER_ROOT/scripts/py/mongo_ping.py" "$1"
}

# start_secantus PORT [STORAGE]: start SecantusDB on 127.0.0.1:PORT unless a
# MongoDB server already answers there. STORAGE is `:memory:` (default) or a
# directory (created if missing) whose data survives restarts.
start_secantus() {
  local port=${1:?start_secantus PORT [STORAGE]} storage=${2:-:memory:}
  local pidfile="$COFFER_RUN_DIR/secantus-$port.pid" logfile="$COFFER_RUN_DIR/secantus-$port.log"
  if port_open "$port"; then
    if mongo_ping "$port" >/dev/null 2>&1; then
      deps_log "MongoDB already answers on 127.0.0.1:$port; using it"
      return 0
    fi
    deps_die "port $port is in use by something that does not answer MongoDB hello" || return 1
  fi
  [[ -x "$COFFER_VENV/bin/python" ]] || deps_die "no venv at $COFFER_VENV: run ensure_secantus first" || return 1
  if [[ "$storage" != ":memory:" ]]; then
    mkdir -p "$storage"
    storage=$(cd "$storage" && pwd)
  fi
  # An explicit (empty) config file turns off secantus' auto-discovery of
  # ./secantusd.toml and ~/.secantus/secantusd.toml: only these flags count.
  local config="$COFFER_RUN_DIR/secantusd.toml"
  mkdir -p "$COFFER_RUN_DIR"
  [[ -f "$config" ]] || printf '# Written by scripts/lib/deps.sh: settings come from command-line flags.\n' >"$config"
  deps_log "starting SecantusDB on 127.0.0.1:$port (storage $storage, log $logfile)"
  start_bg secantus "$pidfile" "$logfile" \
    "$COFFER_VENV/bin/python" -m secantus --config "$config" \
    --host 127.0.0.1 --port "$port" --storage-path "$storage" || return 1
  wait_ready SecantusDB "$pidfile" "$logfile" "$COFFER_START_TIMEOUT" mongo_ping "$port" || return 1
  deps_log "SecantusDB ready: mongodb://127.0.0.1:$port/?directConnection=true"
}

# --------------------------------------------------------------------------- RabbitMQ

# ensure_rabbitmq: install Debian's rabbitmq-server when it is missing.
ensure_rabbitmq() {
  if command -v rabbitmq-server >/dev/null 2>&1 && command -v rabbitmqctl >/dev/null 2>&1; then
    return 0
  fi
  deps_log "installing rabbitmq-server with apt-get"
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq </dev/null || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends rabbitmq-server </dev/null >/dev/null || return 1
  command -v rabbitmq-server >/dev/null 2>&1 || deps_die "rabbitmq-server still not found after apt-get install"
}

# rabbitmq_node_up: true when the RabbitMQ Erlang node answers (even while the
# broker app is booting or was stopped with `rabbitmqctl stop_app`).
rabbitmq_node_up() {
  timeout 30 rabbitmq-diagnostics -q ping </dev/null >/dev/null 2>&1
}

# rabbitmq_running: true when the broker app is fully booted and running.
rabbitmq_running() {
  timeout 30 rabbitmq-diagnostics -q check_running </dev/null >/dev/null 2>&1
}

# start_rabbitmq: start RabbitMQ detached unless its node is already up (then
# start its app if `rabbitmqctl stop_app` stopped it), and wait until AMQP
# answers on 127.0.0.1:5672 (guest/guest). Under root the Debian wrappers run
# the broker as the rabbitmq user. The broker is left running on exit: it is a
# machine-wide service, not one of the processes stop_started stops.
start_rabbitmq() {
  local logfile="$COFFER_RUN_DIR/rabbitmq.log"
  mkdir -p "$COFFER_RUN_DIR"
  if port_open 5672 && rabbitmq_running; then
    deps_log "RabbitMQ already running"
  elif rabbitmq_node_up; then
    # Note: `rabbitmqctl await_startup` would wait its whole timeout here and
    # then fail with rabbit_is_not_running; start_app is a no-op when running.
    deps_log "RabbitMQ node is up but its app is not running; rabbitmqctl start_app"
    timeout "$RABBITMQ_START_TIMEOUT" rabbitmqctl -q start_app </dev/null >>"$logfile" 2>&1 || true
  else
    deps_log "starting RabbitMQ (rabbitmq-server -detached, log $logfile)"
    as_root rabbitmq-server -detached </dev/null >>"$logfile" 2>&1 || {
      log_tail "$logfile"
      deps_die "rabbitmq-server -detached failed" || return 1
    }
  fi
  local deadline=$((SECONDS + RABBITMQ_START_TIMEOUT))
  until rabbitmq_running; do
    if ((SECONDS >= deadline)); then
      log_tail "$logfile"
      log_tail /var/log/rabbitmq/"rabbit@$(hostname -s).log"
      deps_die "RabbitMQ did not start within ${RABBITMQ_START_TIMEOUT}s" || return 1
    fi
    sleep 1
  done
  local i
  for ((i = 0; i < 60; i++)); do
    port_open 5672 && break
    sleep 0.5
  done
  port_open 5672 || deps_die "RabbitMQ runs but nothing listens on 127.0.0.1:5672" || return 1
  deps_log "RabbitMQ ready: amqp://guest:guest@127.0.0.1:5672/%2f"
}

# --------------------------------------------------------------------------- Chromium

# ensure_chromium: install Debian's chromium and chromium-driver (the console's browser tests
# drive it over WebDriver) when either is missing.
ensure_chromium() {
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    return 0
  fi
  deps_log "installing chromium and chromium-driver with apt-get (the console's browser tests)"
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq </dev/null || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends chromium chromium-driver </dev/null >/dev/null || return 1
  command -v chromedriver >/dev/null 2>&1 || deps_die "chromedriver still not found after apt-get install"
}

# --------------------------------------------------------------------------- anvil

# anvil_bin: path of the anvil binary installed by ensure_anvil.
anvil_bin() {
  local pkg
  case "$(uname -m)" in
    aarch64 | arm64) pkg=anvil-linux-arm64 ;;
    *) pkg=anvil-linux-amd64 ;;
  esac
  printf '%s\n' "$COFFER_TOOLS/node_modules/@foundry-rs/$pkg/bin/anvil"
}

# ensure_anvil: install @foundry-rs/anvil-linux-<arch> (pinned) with npm into .tools/.
ensure_anvil() {
  local bin pkg
  bin=$(anvil_bin)
  pkg="@foundry-rs/$(basename "$(dirname "$(dirname "$bin")")")"
  if [[ -x "$bin" ]] && [[ "$(node -p "require('$(dirname "$(dirname "$bin")")/package.json').version" 2>/dev/null)" == "$ANVIL_VERSION" ]]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || deps_die "npm not found (Node 20 with npm is expected on the machine)" || return 1
  deps_log "installing $pkg@$ANVIL_VERSION into $COFFER_TOOLS"
  mkdir -p "$COFFER_TOOLS"
  cat >"$COFFER_TOOLS/package.json" <<EOF
{
  "name": "coffer-dev-tools",
  "private": true,
  "description": "Generated by scripts/lib/deps.sh: binaries for local tests and dev.",
  "dependencies": {
    "$pkg": "$ANVIL_VERSION"
  }
}
EOF
  (cd "$COFFER_TOOLS" && npm install --no-audit --no-fund --loglevel=error </dev/null >/dev/null) || return 1
  [[ -x "$bin" ]] || chmod +x "$bin" 2>/dev/null || true
  [[ -x "$bin" ]] || deps_die "anvil binary missing after npm install: $bin"
}

# eth_ping PORT: true when a JSON-RPC node on 127.0.0.1:PORT answers eth_chainId.
eth_ping() {
  curl -fsS -m 2 -H 'Content-Type: application/json' \
    -d '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' \
    "http://127.0.0.1:$1" 2>/dev/null | grep -q '"result"'
}

# start_anvil PORT [ANVIL ARGS...]: start anvil on 127.0.0.1:PORT unless an
# Ethereum JSON-RPC node already answers there.
start_anvil() {
  local port=${1:?start_anvil PORT [ARGS...]}
  shift
  local pidfile="$COFFER_RUN_DIR/anvil-$port.pid" logfile="$COFFER_RUN_DIR/anvil-$port.log" bin
  if port_open "$port"; then
    if eth_ping "$port"; then
      deps_log "an Ethereum node already answers on 127.0.0.1:$port; using it"
      return 0
    fi
    deps_die "port $port is in use by something that does not answer eth_chainId" || return 1
  fi
  bin=$(anvil_bin)
  [[ -x "$bin" ]] || deps_die "anvil not installed: run ensure_anvil first" || return 1
  deps_log "starting anvil on 127.0.0.1:$port (log $logfile)"
  start_bg anvil "$pidfile" "$logfile" "$bin" --host 127.0.0.1 --port "$port" "$@" || return 1
  wait_ready anvil "$pidfile" "$logfile" "$COFFER_START_TIMEOUT" eth_ping "$port" || return 1
  deps_log "anvil ready: http://127.0.0.1:$port"
}
