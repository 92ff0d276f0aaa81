#!/usr/bin/env bash
# Runs every ringmx test: unit, transcript, property, spool crash/ENOSPC and loopback integration.
# Integration tests need Linux with io_uring enabled; the ENOSPC test needs root to mount a tmpfs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Many tests start servers and hold thousands of sockets: raise the fd limit where allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --workspace --bins
cargo test --workspace --release "$@"
