#!/usr/bin/env bash
# Render an audit report (HTML) to a PNG of its first screen with headless Chromium, to look at.
#   scripts/screenshot_report.sh REPORT.html OUT.png [WIDTHxHEIGHT]
# Needs Debian's chromium (apt-get install -y chromium); the tests never call this.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]" >&2
  exit 2
fi
report=$(realpath "$1")
out=$(realpath -m "$2")
size=${3:-1280x1600}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "no chromium found; install it with: apt-get install -y chromium" >&2
  exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$profile" --screenshot="$out" --window-size="${size/x/,}" \
  "file://$report" >/dev/null 2>&1
echo "$out"
