#!/bin/bash
# Takes docs/images/tray-menu.png: the tray menu of a hosting SecureChat in
# Xfce's panel (a StatusNotifier host) under Xvfb, with a second host on the
# network (advertised on loopback) listed under Join.
#   apt-get install -y xvfb xfce4-panel xfwm4 xdotool imagemagick dbus
# Run from the repository after `cargo build`; needs root for loopback multicast.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${INSIDE:-}" ]; then
  ip link set lo multicast on
  work=$(mktemp -d)
  Xvfb :97 -screen 0 900x560x24 -nolisten tcp >/dev/null 2>&1 &
  xvfb=$!
  trap 'kill $xvfb; rm -rf "$work"' EXIT
  sleep 1
  INSIDE=1 WORK="$work" DISPLAY=:97 dbus-run-session -- "$0"
  exit
fi
export HOME="$WORK/home" SECURECHAT_MASTER_KEY=c2NyZWVuc2hvdCBtYXN0ZXIga2V5IDMyIGJ5dGVzIS4= SECURECHAT_LOG=warn
mkdir -p "$HOME"
xfwm4 >/dev/null 2>&1 &
sleep 1
xfce4-panel >/dev/null 2>&1 &
sleep 3
BROWSER=true target/debug/securechat host --bind 127.0.0.1:8443 --data-dir "$WORK/a" >/dev/null &
host=$!
target/debug/securechat host --headless --bind 127.0.0.1:8444 --data-dir "$WORK/b" >/dev/null 2>&1 &
other=$!
sleep 6
# The icon sits left of the clock; its menu opens on a right click.
xdotool mousemove 775 13 click 3
sleep 1.2
xdotool mousemove 640 119   # over "Join"
sleep 1.5
import -window root -crop 540x275+360+0 +repage docs/images/tray-menu.png
xdotool key Escape
kill $other
kill $host
wait $host || true
pkill xfce4-panel || true
pkill xfwm4 || true
