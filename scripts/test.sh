#!/usr/bin/env bash
# Runs every ringmx test: unit, transcript, property, spool crash/ENOSPC and loopback
# integration tests with real clients. Installs the test clients first when missing.
# Needs Linux with io_uring enabled; the ENOSPC test needs root (it mounts a small tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
# Tests hold thousands of sockets at once: raise the fd limit where allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --workspace --bins
cargo test --workspace --release "$@"
