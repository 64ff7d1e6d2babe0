#!/usr/bin/env bash
# Runs the benchmarks of docs/BENCHMARKS.md: builds the release binaries,
# installs the baselines (Python `websockets` from PyPI, Node `ws` from npm,
# both pinned), raises the open-file limit, and runs
#   securechat-bench all [ARGS]  (default: --json)
# writing the JSON to bench/results.json (or $OUT) and the fan-out chart to
# docs/images/bench-fanout.svg.
#   bench/run.sh            the full run (several minutes)
#   bench/run.sh --quick    each scenario against SecureChat in under a minute
#                           (about 90 s in all with the baselines)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import websockets' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check websockets==15.0.1
(cd bench/baselines/node && npm ci --no-audit --no-fund --silent)
command -v curl >/dev/null || { echo "bench/run.sh needs curl" >&2; exit 1; }
cargo build --locked --release --bins
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
out=${OUT:-bench/results.json}
target/release/securechat-bench all --json --svg docs/images/bench-fanout.svg "$@" | tee "$out"
