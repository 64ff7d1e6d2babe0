#!/usr/bin/env bash
# File-transfer benchmark (not a test; results in docs/BENCHMARKS.md):
# a 1 GiB file uploaded and downloaded through the native client against a
# release host on loopback, next to curl fetching 1 GiB from a plain TLS
# static file server (Python's http.server behind ssl) on the same machine.
# Peak memory of the host is measured with GNU time.
#   bench/files.sh [MIB]        (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
cargo build --release --locked --bin securechat --example file_bench >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
export SECURECHAT_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
export SECURECHAT_LOG=warn

# The host, under GNU time for its peak resident memory.
/usr/bin/time -v -o "$work/time.txt" target/release/securechat host --headless --no-browser \
  --bind 127.0.0.1:0 --data-dir "$work/data" > "$work/host.out" &
host=$!
for _ in $(seq 100); do grep -q '^  https://' "$work/host.out" 2>/dev/null && break; sleep 0.2; done
url=$(grep -m1 '^  https://' "$work/host.out" | tr -d ' ' | sed 's#/$##')
echo "host: $url"
target/release/examples/file_bench "$url" "$work/data/tls/ca.pem" "$mib" | tee "$work/bench.txt"
kill -TERM $(pgrep -P $host securechat || echo $host) 2>/dev/null || true
wait $host || true
peak_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")

# The baseline: curl over TLS from a plain static file server.
head -c $((mib << 20)) /dev/urandom > "$work/blob.bin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$work" "$port" <<'PY' &
import functools, http.server, ssl, sys
work, port = sys.argv[1], int(sys.argv[2])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=work)
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(f"{work}/cert.pem", f"{work}/key.pem")
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
PY
for _ in $(seq 50); do curl -sk "https://127.0.0.1:$port/" -o /dev/null && break; sleep 0.2; done
curl_s=$(curl -sk "https://127.0.0.1:$port/blob.bin" -o /dev/null -w '%{time_total}')
down=$(awk -F'download_mib_per_s=' '/download_mib_per_s/ {print $2}' "$work/bench.txt")
up=$(awk -F'upload_mib_per_s=' '/upload_mib_per_s/ {print $2}' "$work/bench.txt")
python3 - "$mib" "$curl_s" "$down" "$up" "$peak_kib" <<'PY'
import json, sys
mib, curl_s, down, up, peak = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
curl = mib / curl_s
print(json.dumps({
    "size_mib": mib,
    "upload_mib_per_s": up,
    "download_mib_per_s": down,
    "curl_download_mib_per_s": round(curl, 1),
    "download_ratio_vs_curl": round(down / curl, 2),
    "host_peak_rss_mib": round(peak / 1024, 1),
}))
PY
