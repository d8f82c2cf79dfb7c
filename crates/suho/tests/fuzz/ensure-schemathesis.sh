#!/bin/sh
# Installs the pinned schemathesis from PyPI into a virtual environment at $1 if it is not
# there yet (idempotent), for the fuzz test (crates/suho/tests/fuzz/). Prints the path of its
# `schemathesis` command. Needs python3 with its venv module (Debian: python3-venv, installed
# with apt as root or with password-less sudo when missing).
set -eu
VERSION=4.32.5
VENV="$1"
BIN="$VENV/bin/schemathesis"
if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "version $VERSION\$"; then
  echo "$BIN"
  exit 0
fi
rm -rf "$VENV"
if ! python3 -m venv "$VENV" >&2 2>/dev/null; then
  rm -rf "$VENV"
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends python3-venv >&2
  python3 -m venv "$VENV" >&2
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
"$BIN" --version >&2
echo "$BIN"
