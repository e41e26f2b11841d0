# Shared shell helpers for scripts/*.sh and .ci/run. Source it; do not run it.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

if [ -t 1 ]; then
  _bold=$'\033[1m'; _green=$'\033[32m'; _yellow=$'\033[33m'; _red=$'\033[31m'; _reset=$'\033[0m'
else
  _bold=""; _green=""; _yellow=""; _red=""; _reset=""
fi

say() { printf '%s==>%s %s\n' "$_bold" "$_reset" "$*"; }
ok() { printf '%s  ok%s %s\n' "$_green" "$_reset" "$*"; }
warn() { printf '%swarning:%s %s\n' "$_yellow" "$_reset" "$*" >&2; }
die() { printf '%serror:%s %s\n' "$_red" "$_reset" "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# wait_for KIND TARGET [SECONDS]: KIND is redis, postgres or http (scripts/wait_for.py).
wait_for() { "$PY" "$ROOT/scripts/wait_for.py" "$1" "$2" --timeout "${3:-1}"; }

_apt_updated=""
apt_install() {
  # apt_install PACKAGE...: Debian packages, as root, updating the lists once per run.
  if [ -z "$_apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# ensure_redis URL: succeed when Redis answers at URL, starting a local redis-server if needed.
ensure_redis() {
  local url="$1" host port
  if wait_for redis "$url" 1 2>/dev/null; then
    ok "Redis answers at $url"
    return 0
  fi
  if [[ "$url" =~ ^rediss?://([^@/]*@)?([^:/]+)(:([0-9]+))? ]]; then
    host="${BASH_REMATCH[2]}"
    port="${BASH_REMATCH[4]:-6379}"
  else
    die "REDIS_URL is not a redis:// URL: $url"
  fi
  case "$host" in
    127.0.0.1 | localhost) ;;
    *) die "Redis does not answer at $url (a remote host: start it there, or change REDIS_URL)." ;;
  esac
  if ! command -v redis-server >/dev/null 2>&1; then
    die "Redis does not answer at $url and redis-server is not installed.
       Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis),
       or point REDIS_URL at a running Redis, then try again."
  fi
  say "Starting redis-server on 127.0.0.1:$port (keeps nothing on disk)"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no >/dev/null
  wait_for redis "$url" 15 || die "redis-server did not answer at $url within 15 s"
  ok "Redis answers at $url"
}

# ensure_postgres URL: succeed when PostgreSQL answers at URL, starting the local cluster
# (Debian's pg_ctlcluster, as root) if needed. Returns 1 when it cannot be reached.
ensure_postgres() {
  local url="$1"
  if wait_for postgres "$url" 2 2>/dev/null; then
    ok "PostgreSQL answers at $url"
    return 0
  fi
  if is_root && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    local version
    version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
    say "Starting PostgreSQL $version (cluster main)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    if wait_for postgres "$url" 30; then
      ok "PostgreSQL answers at $url"
      return 0
    fi
  fi
  return 1
}

# ensure_chromium: Debian's Chromium and ChromeDriver for the browser tests (as root only).
ensure_chromium() {
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    ok "Chromium found: $(command -v chromium)"
    return 0
  fi
  if is_root && command -v apt-get >/dev/null 2>&1; then
    say "Installing Debian's chromium and chromium-driver for the browser tests"
    apt_install chromium chromium-driver
    ok "Chromium installed: $(command -v chromium)"
  else
    warn "Chromium is not installed and this user cannot install it: the browser tests will be
         skipped. To run them: sudo apt-get install chromium chromium-driver"
  fi
}
