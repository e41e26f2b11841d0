#!/usr/bin/env bash
# Start the shop on this machine.
#   scripts/run.sh          everything (`make run`): config, Redis, DB schema, catalogue import,
#                           a Celery worker in the background and the web server in the foreground
#   scripts/run.sh web      the web server alone (`make web`)
#   scripts/run.sh worker   the Celery worker alone, in the foreground (`make worker`)
# Settings come from webapp/config.py (defaults, instance/config.py, environment variables);
# PORT (default 5000) picks the local port of the web server.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

MODE="${1:-all}"
PORT="${PORT:-5000}"
URL="http://127.0.0.1:$PORT/"
LOG_DIR="$ROOT/instance/logs"
WORKER_PID_FILE="$ROOT/instance/worker.pid"
FLASK=("$VENV/bin/flask" --app wsgi)
# shellcheck disable=SC2054  # "-Q ml,index,default" is one argument
# Two processes: a photo search (queue ml) never waits behind a catalogue build (queue index).
CELERY_WORKER=("$VENV/bin/celery" -A worker.celery_app worker -Q ml,index,default --concurrency 2 --loglevel INFO)
GUNICORN=("$VENV/bin/gunicorn" "webapp:create_app()" --bind "127.0.0.1:$PORT" --workers 2 --preload --access-logfile -)

[ -x "$PY" ] || die "no virtualenv in $VENV: run 'make setup' first."

# app_setting NAME: the setting's value as the app resolves it (see scripts/app_config.py).
app_setting() {
  PYTHONPATH="$ROOT" "$PY" "$ROOT/scripts/app_config.py" "$1" | sed -n "s/^$1=//p"
}

ensure_instance_config() {
  local path="$ROOT/instance/config.py"
  if [ -e "$path" ]; then
    ok "instance/config.py exists (kept as it is)"
    return 0
  fi
  mkdir -p "$ROOT/instance"
  (
    umask 077
    cat >"$path" <<EOF
# Settings for this machine; git-ignored. Environment variables override them.
# See the configuration table in README.md for every setting.
SECRET_KEY = "$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
EOF
  )
  ok "wrote instance/config.py with a new random SECRET_KEY"
}

stop_pid() {
  # stop_pid PID: TERM, then KILL after 20 s.
  local pid="$1" _try
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _try in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  warn "process $pid did not stop in 20 s: killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_stale_worker() {
  # A worker left behind by an earlier run that was killed hard: stop it if it is ours.
  [ -f "$WORKER_PID_FILE" ] || return 0
  local pid
  pid="$(cat "$WORKER_PID_FILE")"
  if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "worker.celery_app"; then
    say "Stopping the worker left over from an earlier run (pid $pid)"
    stop_pid "$pid"
  fi
  rm -f "$WORKER_PID_FILE"
}

import_catalogue() {
  local path
  path="$(app_setting CATALOG_PATH)"
  if [ ! -f "$path/styles.csv" ]; then
    warn "no catalogue at $path (styles.csv missing): skipping the import.
         Import one later with: .venv/bin/flask --app wsgi catalog import PATH
         or run: make run CATALOG_PATH=/path/to/catalogue"
    return 0
  fi
  say "Importing the catalogue from $path (adds new products, updates changed ones)"
  "${FLASK[@]}" catalog import "$path"
}

check_backbone() {
  # `flask model check-backbone` picks the default image backbone; older checkouts lack it.
  if "${FLASK[@]}" model check-backbone --help >/dev/null 2>&1; then
    say "Checking the image backbone"
    "${FLASK[@]}" model check-backbone
  fi
}

banner() {
  local line="=================================================================="
  printf '\n%s%s\n' "$_green" "$line"
  printf '  The shop is running at  %s%s%s\n' "$_bold" "$URL" "$_reset$_green"
  [ -n "${1:-}" ] && printf '  Worker log:             %s\n' "$1"
  printf '  Press Ctrl-C to stop.\n'
  printf '%s%s\n\n' "$line" "$_reset"
}

WEB_PID=""
WORKER_PID=""
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$WEB_PID" ] || [ -n "$WORKER_PID" ]; then
    say "Stopping"
  fi
  [ -n "$WEB_PID" ] && stop_pid "$WEB_PID"
  if [ -n "$WORKER_PID" ]; then
    stop_pid "$WORKER_PID"
    rm -f "$WORKER_PID_FILE"
  fi
}

stop_on_exit() {
  # Whatever ends this script (Ctrl-C, kill, an error) stops the processes it started.
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

start_web_and_wait() {
  # The web server runs as a child so the EXIT/INT/TERM trap can stop the worker with it.
  say "Starting the web server (gunicorn, 2 workers) on 127.0.0.1:$PORT"
  "${GUNICORN[@]}" &
  WEB_PID=$!
  local _try up=""
  for _try in $(seq 1 60); do
    kill -0 "$WEB_PID" 2>/dev/null || die "the web server exited during start-up (is port $PORT in use? try PORT=5001)"
    if wait_for http "$URL" 1 2>/dev/null; then
      up=1
      break
    fi
  done
  [ -n "$up" ] || die "the web server does not answer at $URL"
  if [ -n "$WORKER_PID" ] && ! kill -0 "$WORKER_PID" 2>/dev/null; then
    warn "the worker has exited: see $LOG_DIR/worker.log"
  fi
  banner "${1:-}"
  local rc=0
  wait "$WEB_PID" || rc=$?
  WEB_PID=""
  return "$rc"
}

case "$MODE" in
  all)
    T0=$SECONDS
    say "[1/6] Local settings"
    ensure_instance_config
    say "[2/6] Redis"
    ensure_redis "$(app_setting REDIS_URL)"
    say "[3/6] Database schema"
    "${FLASK[@]}" db upgrade
    say "[4/6] Image backbone"
    check_backbone
    say "[5/6] Catalogue"
    import_catalogue
    say "[6/6] Worker and web server"
    mkdir -p "$LOG_DIR"
    stop_stale_worker
    stop_on_exit
    "${CELERY_WORKER[@]}" >>"$LOG_DIR/worker.log" 2>&1 &
    WORKER_PID=$!
    echo "$WORKER_PID" >"$WORKER_PID_FILE"
    ok "Celery worker started (pid $WORKER_PID), logging to instance/logs/worker.log"
    # The worker embeds what is new and rebuilds the neighbour lists only when something changed;
    # a job already in flight is not enqueued twice.
    "${FLASK[@]}" catalog embed || warn "could not enqueue the similarity index job"
    ok "ready after $((SECONDS - T0)) s of start-up steps"
    start_web_and_wait "instance/logs/worker.log"
    ;;
  web)
    ensure_instance_config
    ensure_redis "$(app_setting REDIS_URL)"
    stop_on_exit
    start_web_and_wait
    ;;
  worker)
    ensure_instance_config
    ensure_redis "$(app_setting REDIS_URL)"
    say "Starting the Celery worker (queues default and ml); Ctrl-C stops it"
    exec "${CELERY_WORKER[@]}"
    ;;
  *)
    die "usage: scripts/run.sh [all|web|worker]"
    ;;
esac
