#!/usr/bin/env bash
# Makes sure Debian's Chromium is there for the playground's browser tests (tests/playground,
# marker `browser`): Playwright's own browser download is not used, the tests launch this one.
# Installs the Debian package when it is missing and we are root; otherwise says how to.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -n "${RETOUCH_TEST_CHROMIUM:-}" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "Chromium is not installed; the browser tests will be skipped (as root: apt-get install -y chromium)" >&2
    exit 0
fi
echo "installing Chromium (Debian package) for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
