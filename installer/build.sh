#!/usr/bin/env bash
# Builds the Windows deliverables from a Debian machine:
#   dist/SecureChat.exe                  the GUI-subsystem release executable
#   dist/SecureChat-Setup-<version>.exe  the NSIS installer
# Installs what it needs first (mingw-w64, nsis, the Rust target). Every
# feature of the Linux build is built for Windows, SQLCipher included; a
# failure stops the build rather than shipping a weaker product.
# CARGO_TARGET_DIR is honoured (default: target/).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(mingw-w64)
command -v makensis >/dev/null || need+=(nsis)
command -v perl >/dev/null || need+=(perl)
command -v make >/dev/null || need+=(make)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "installer/build.sh needs: ${need[*]} (apt-get install them, or run as root)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${need[@]}"
fi
rustup target list --installed | grep -qx x86_64-pc-windows-gnu || rustup target add x86_64-pc-windows-gnu

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --locked --release --target x86_64-pc-windows-gnu --bin securechat
exe="$target_dir/x86_64-pc-windows-gnu/release/securechat.exe"

mkdir -p dist
cp "$exe" dist/SecureChat.exe
(cd installer && makensis -V2 -DVERSION="$version" -DEXE="../dist/SecureChat.exe" \
  -DOUT="../dist/SecureChat-Setup-$version.exe" securechat.nsi)
ls -l dist/SecureChat.exe "dist/SecureChat-Setup-$version.exe"
