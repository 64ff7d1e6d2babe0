#!/usr/bin/env bash
# Smoke test of the Windows installer under Wine (run after installer/build.sh):
#   1. silent install into a throwaway prefix
#   2. the installed SecureChat.exe hosts headless on 127.0.0.1
#   3. it answers HTTPS
#   4. the native client (Linux) registers, logs in over HTTPS and sends a
#      message over wss:// that a second user receives and decrypts
#   5. silent uninstall leaves no program files, shortcuts or uninstall entry
# Installs wine, wine64, xvfb and xauth if missing (as root). Wine 8 lacks
# ProcessPrng, so a test-only shim DLL (installer/wine-shim/) goes into the
# throwaway prefix; it is never shipped. Exits non-zero on any failed step and
# ends with one line: "smoke-wine: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
setup="$root/dist/SecureChat-Setup-$version.exe"
[ -f "$setup" ] || { echo "smoke-wine: $setup is missing: run installer/build.sh first" >&2; exit 1; }

need=()
command -v wine >/dev/null || need+=(wine wine64)
command -v Xvfb >/dev/null || need+=(xvfb xauth)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(mingw-w64)
command -v curl >/dev/null || need+=(curl)
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${need[@]}" >/dev/null
fi

work=$(mktemp -d)
export WINEPREFIX="$work/prefix" HOME="$work/home" WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d;bcryptprimitives=n,b"
mkdir -p "$HOME"
xvfb_pid=
host_pid=
cleanup() {
  [ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null
  wineserver -k 2>/dev/null
  [ -n "$xvfb_pid" ] && kill "$xvfb_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
step() { # step NAME COMMAND...
  local name=$1; shift
  if "$@"; then
    echo "ok   $name"; passed=$((passed + 1))
  else
    echo "FAIL $name"; failed=$((failed + 1))
  fi
}
finish() {
  echo "smoke-wine: $passed passed, $failed failed"
  [ "$failed" = 0 ]
  exit
}

# The display first: Wine must see it from its first command.
Xvfb -displayfd 3 -nolisten tcp 3>"$work/display" 2>/dev/null &
xvfb_pid=$!
for _ in $(seq 100); do [ -s "$work/display" ] && break; sleep 0.1; done
export DISPLAY=":$(cat "$work/display")"

prepare() {
  wineboot -i >/dev/null 2>&1 && wineserver -w &&
    x86_64-w64-mingw32-gcc -shared -O2 -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
      installer/wine-shim/bcryptprimitives.c -ladvapi32
}
step "a fresh Wine prefix with the test-only ProcessPrng shim" prepare || true
[ "$failed" = 0 ] || finish

programs="$WINEPREFIX/drive_c/Program Files/SecureChat"
install() {
  wine "$setup" /S /FIREWALL=1 /AUTOSTART=1 /DESKTOP=1 >/dev/null 2>&1
  wineserver -w
  [ -f "$programs/SecureChat.exe" ] && [ -f "$programs/uninstall.exe" ] &&
    [ -f "$WINEPREFIX/drive_c/ProgramData/Microsoft/Windows/Start Menu/Programs/SecureChat.lnk" ] &&
    wine reg query 'HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\SecureChat' /v DisplayVersion 2>/dev/null | grep -q "$version" &&
    wine reg query 'HKCU\Software\Microsoft\Windows\CurrentVersion\Run' /v SecureChat 2>/dev/null | grep -q 'SecureChat.exe'
}
step "silent install: program files, Start Menu shortcut, uninstall entry, Start at login" install
[ "$failed" = 0 ] || finish

port=$((20000 + RANDOM % 20000))
data='C:\securechat-smoke'
SECURECHAT_MASTER_KEY=$(head -c 32 /dev/urandom | base64) \
  wine "$programs/SecureChat.exe" host --headless --bind "127.0.0.1:$port" --data-dir "$data" \
  >"$work/host.log" 2>&1 &
host_pid=$!
answers() {
  for _ in $(seq 240); do
    curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/" 2>/dev/null | grep -q 200 && return 0
    kill -0 "$host_pid" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}
step "the installed SecureChat.exe hosts headless and answers HTTPS 200" answers

ca="$WINEPREFIX/drive_c/securechat-smoke/tls/ca.pem"
peer=${SMOKE_PEER:-target/debug/examples/interop_peer}
chat() {
  [ -f "$ca" ] && [ -x "$peer" ] &&
    timeout 180 "$peer" smoke "https://127.0.0.1:$port" "$ca" smoke.alice smoke.bob | grep -qx delivered
}
step "native client: register, login, wss message delivered and decrypted" chat
if [ "$failed" != 0 ]; then
  echo "--- host output"; cat "$work/host.log"
fi

stop_host() {
  kill "$host_pid" 2>/dev/null
  wineserver -k 2>/dev/null
  host_pid=
  true
}
stop_host

uninstall() {
  wine "$programs/uninstall.exe" /S >/dev/null 2>&1
  wineserver -w
  # The uninstaller runs from a temporary copy: wait for it to finish.
  for _ in $(seq 60); do [ -e "$programs" ] || break; sleep 0.5; done
  [ ! -e "$programs" ] &&
    [ ! -e "$WINEPREFIX/drive_c/ProgramData/Microsoft/Windows/Start Menu/Programs/SecureChat.lnk" ] &&
    ! wine reg query 'HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\SecureChat' >/dev/null 2>&1 &&
    # A silent uninstall keeps the user's data.
    [ -d "$WINEPREFIX/drive_c/securechat-smoke" ]
}
step "silent uninstall: no program files, shortcut or uninstall entry left" uninstall
finish
