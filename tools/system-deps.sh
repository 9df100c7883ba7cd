#!/usr/bin/env bash
# System packages the test suite uses beyond Python: Debian's chromium (the
# dashboard's browser tests drive it headless) and Node.js with npm (a build from a
# git clone bundles the dashboard's JavaScript from package-lock.json). Installs
# what is missing with apt-get when run as root; otherwise says what to install.
# The README's test command runs this first; .ci/run runs that command.
set -euo pipefail
want=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || want+=(chromium)
command -v npm >/dev/null 2>&1 || want+=(nodejs npm)
if [ ${#want[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing ${want[*]} (apt-get)" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${want[@]}"; } >/dev/null
else
    echo "system-deps: please install ${want[*]} (Debian/Ubuntu: apt-get install ${want[*]});" \
         "the dashboard's browser tests need chromium" >&2
fi
