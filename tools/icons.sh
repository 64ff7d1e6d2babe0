#!/bin/sh
# Renders assets/icon.svg into every size Windows, the tray and the web UI
# use. The outputs are committed, so building needs none of these tools:
#   apt-get install -y librsvg2-bin icoutils imagemagick
set -eu
cd "$(dirname "$0")/../assets"
for s in 16 24 32 48 64 128 256; do
    rsvg-convert -w "$s" -h "$s" icon.svg -o "icon-$s.png"
done
icotool -c -o securechat.ico icon-16.png icon-24.png icon-32.png icon-48.png icon-64.png icon-128.png -r icon-256.png
# Raw RGBA for the tray (no image decoder in the program).
for s in 32 64; do
    convert "icon-$s.png" -depth 8 "rgba:icon-$s.rgba"
done
cp icon-32.png ../embedded-web/favicon.png
