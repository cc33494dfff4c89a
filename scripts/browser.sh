#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the app's browser test
# (tests/app/test_browser.py), when they are missing and this is root with apt-get. Otherwise
# it says why and the browser test skips, naming the reason. Not part of the demo's set-up.
set -uo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "browser: chromium/chromedriver missing and cannot apt-get install them (not root or" \
       "no apt-get); the browser test will skip" >&2
  exit 0
fi
echo "browser: installing chromium and chromium-driver (Debian packages, about a minute)"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         chromium chromium-driver >/dev/null; }; then
  echo "browser: apt-get could not install chromium; the browser test will skip" >&2
fi
exit 0
