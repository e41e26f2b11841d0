#!/usr/bin/env bash
# Create the virtualenv in .venv (if missing) and install the pinned requirements into it.
# `make setup` calls this only when a requirement file is newer than the install stamp.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.requirements.stamp"

if [ ! -x "$PY" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3.11 or newer."
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" --version 2>&1); the shop needs Python 3.11 or newer."
  say "Creating the virtualenv in $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create a virtualenv (Debian/Ubuntu: sudo apt-get install python3-venv)."
fi

say "Installing Python packages into $VENV (the first time takes a few minutes: TensorFlow is large)"
# constraints.txt pins every package to the versions the project is tested with.
"$PY" -m pip install --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
touch "$STAMP"
ok "Python packages installed"
