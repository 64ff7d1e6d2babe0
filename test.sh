#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests,
# the browser tests (Playwright driving Debian's /usr/bin/chromium), then the
# Windows build and its installer's smoke test under Wine.
# Where gnome-keyring and dbus-run-session are installed (.ci/run installs
# them), the tests run inside a private D-Bus session with an unlocked
# Secret Service, so the OS-keyring test runs against a real keyring; with
# Xvfb as well, the tray test runs on that session bus and a virtual display.
# As root, loopback gets the MULTICAST flag so the mDNS test can run on it.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

# The benchmark tool's test compares against Python's websockets and Node's
# ws: install both, pinned.
python3 -c 'import websockets' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check websockets==15.0.1
(cd bench/baselines/node && npm ci --no-audit --no-fund --silent)

scratch=$(mktemp -d)
xvfb_pid=
cleanup() {
  [ -n "$xvfb_pid" ] && kill "$xvfb_pid" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
  ip link set lo multicast on || echo "note: cannot enable multicast on loopback; the mDNS test is skipped" >&2
fi
if command -v Xvfb >/dev/null; then
  # -displayfd picks a free display and writes its number.
  Xvfb -displayfd 3 -nolisten tcp 3>"$scratch/display" 2>/dev/null &
  xvfb_pid=$!
  for _ in $(seq 100); do [ -s "$scratch/display" ] && break; sleep 0.1; done
  export DISPLAY=":$(cat "$scratch/display")"
fi
if command -v dbus-run-session >/dev/null && command -v gnome-keyring-daemon >/dev/null; then
  XDG_DATA_HOME="$scratch" dbus-run-session -- bash -c '
    set -euo pipefail
    printf "securechat-test" | gnome-keyring-daemon --unlock --components=secrets >/dev/null
    export SECURECHAT_TEST_SECRET_SERVICE=1
    if [ -n "${DISPLAY:-}" ]; then export SECURECHAT_TEST_TRAY=1; fi
    cargo test --locked
  '
else
  echo "note: gnome-keyring or dbus-run-session is missing; the Secret Service and tray tests are skipped" >&2
  cargo test --locked
fi

# Browser end-to-end tests: the real executable, Debian's Chromium, and the
# native peer example for WebCrypto <-> RustCrypto interoperability.
if [ ! -x /usr/bin/chromium ]; then
  echo "The browser tests need Debian's Chromium: apt-get install chromium (.ci/run does it)." >&2
  exit 1
fi
cargo build --locked --bins --examples
(
  cd e2e
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npx playwright test
)

# Windows delivery: the release cross-build and the installer (built once),
# then the installer's smoke test under Wine, whose native client is the
# example built above. Needs mingw-w64, nsis, wine and the Rust target
# x86_64-pc-windows-gnu (.ci/run installs them); skipped without them
# except in CI.
if command -v x86_64-w64-mingw32-gcc >/dev/null && command -v makensis >/dev/null &&
  command -v wine >/dev/null && rustup target list --installed | grep -qx x86_64-pc-windows-gnu; then
  installer/build.sh
  installer/smoke-wine.sh
elif [ -n "${CI:-}" ]; then
  echo "CI must build and smoke-test the Windows installer: mingw-w64, nsis, wine or the Rust target is missing" >&2
  exit 1
else
  echo "note: mingw-w64, nsis, wine or the x86_64-pc-windows-gnu target is missing; the Windows build and its smoke test are skipped" >&2
fi
