#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests,
# then the browser tests (Playwright driving Debian's /usr/bin/chromium).
# Where gnome-keyring and dbus-run-session are installed (.ci/run installs
# them), the tests run inside a private D-Bus session with an unlocked
# Secret Service, so the OS-keyring test runs against a real keyring.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
if command -v dbus-run-session >/dev/null && command -v gnome-keyring-daemon >/dev/null; then
  keyrings=$(mktemp -d)
  trap 'rm -rf "$keyrings"' EXIT
  XDG_DATA_HOME="$keyrings" dbus-run-session -- bash -c '
    set -euo pipefail
    printf "securechat-test" | gnome-keyring-daemon --unlock --components=secrets >/dev/null
    SECURECHAT_TEST_SECRET_SERVICE=1 cargo test --locked
  '
else
  echo "note: gnome-keyring or dbus-run-session is missing; the Secret Service test is skipped" >&2
  cargo test --locked
fi

# Browser end-to-end tests: the real executable, Debian's Chromium, and the
# native peer example for WebCrypto <-> RustCrypto interoperability.
if [ ! -x /usr/bin/chromium ]; then
  echo "The browser tests need Debian's Chromium: apt-get install chromium (.ci/run does it)." >&2
  exit 1
fi
cargo build --locked --bin securechat --examples
cd e2e
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npx playwright test
