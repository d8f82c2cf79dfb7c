#!/bin/sh
# Installs Debian's chromium for the browser tests if it is missing (idempotent; needs root
# or sudo). Prints the browser's path. Never downloads a Playwright browser.
set -eu
for c in "${SUHO_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; exit 0; fi
done
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends chromium >&2
echo /usr/bin/chromium
