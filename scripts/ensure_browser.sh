#!/usr/bin/env bash
# Make sure a headless Chromium is installed: the status-page test
# (tests/server/test_status_page.py) renders the page in it. Installs Debian's
# `chromium` with apt-get only when the `chromium` command is missing, so a
# second run costs nothing. Run as root (or with passwordless sudo).
#
# Without apt-get (not Debian/Ubuntu), without root, or when the install fails
# it says so and exits 0, so the rest of `make test` still runs; that one test
# then fails with a message naming what is missing.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_browser: 'chromium' is missing and apt-get is unavailable; install Chromium yourself" \
         "(the status-page test needs the 'chromium' command)" >&2
    exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "ensure_browser: 'chromium' is missing and installing it needs root;" \
             "run: sudo apt-get install -y chromium" >&2
        exit 0
    fi
fi
echo "==> installing chromium (apt-get) for the status-page browser test"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# apt's chatter goes to a log that is shown only if the install fails.
if ! { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1 \
        || ! command -v chromium >/dev/null 2>&1; then
    cat "$log" >&2
    echo "ensure_browser: installing chromium failed (see above); the status-page test will fail" >&2
    exit 0
fi
