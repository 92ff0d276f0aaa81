#!/usr/bin/env bash
# tls-bench.sh: STARTTLS against plaintext on the same ringmx, on loopback.
#
# 1. Throughput: `smtp-source -s 20 -d -l 1024` (reused connections) for DURATION seconds,
#    plaintext and `--starttls` (TLS 1.3) in turn against one server (--sync group, durable),
#    PASSES times, interleaved; prints every run and the medians: msgs/s, server CPU per message
#    (/proc/<pid>/stat, all threads), client p99 from the end of data to the 250.
# 2. Idle memory: IDLE connections (from 8 source addresses, 127.0.0.2-9) that sent EHLO (and
#    for TLS: STARTTLS, the handshake, EHLO again) and then wait; the server's VmRSS before and
#    while they wait, on a fresh server per measurement, plaintext and TLS in turn, IDLE_PASSES
#    times. The clients are one bounded Python process (python3 with its ssl module).
#
# Certificates: a self-signed ECDSA P-256 certificate made here with openssl (smtp-source runs
# with --tls-insecure). Usage: loadtest/tls-bench.sh [--passes N] [--duration SECS] [--idle N]
# [--idle-passes N]. Environment: RINGMX, SMTP_SOURCE (default target/release/...), PORT
# (default 2770), REACTORS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

RINGMX=${RINGMX:-target/release/ringmx}
SOURCE=${SMTP_SOURCE:-target/release/smtp-source}
PORT=${PORT:-2770}
REACTORS=${REACTORS:-2}
PASSES=3
DURATION=5
IDLE=2000
IDLE_PASSES=2
while (($#)); do
    case $1 in
    --passes) PASSES=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --idle) IDLE=$2; shift ;;
    --idle-passes) IDLE_PASSES=$2; shift ;;
    *) echo "usage: $0 [--passes N] [--duration SECS] [--idle N] [--idle-passes N]" >&2; exit 2 ;;
    esac
    shift
done
for tool in jq openssl python3; do
    command -v $tool >/dev/null || { echo "tls-bench: needs $tool" >&2; exit 1; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d)
server_pid=
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap 'stop_server; rm -rf "$tmp"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=mx.example.test -addext subjectAltName=DNS:mx.example.test \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

start_server() { # spool name
    rm -rf "$tmp/$1"
    "$RINGMX" serve --listen "127.0.0.1:$PORT" --domain example.test --hostname mx.example.test \
        --reactors "$REACTORS" --sync group --spool "$tmp/$1" \
        --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" 2>"$tmp/$1.log" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q "ready:" "$tmp/$1.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "tls-bench: server did not start" >&2; cat "$tmp/$1.log" >&2; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "== throughput: -s 20 -d -l 1024, ${DURATION}s per run, $PASSES passes, interleaved"
start_server spool
hz=$(getconf CLK_TCK)
: >"$tmp/runs"
for pass in $(seq "$PASSES"); do
    for mode in plain tls; do
        flags=()
        [[ $mode == tls ]] && flags=(--starttls --tls-insecure)
        before=$(cpu_ticks)
        "$SOURCE" -s 20 -d -l 1024 --duration "$DURATION" -M src.test -f sender@src.test \
            -t rcpt@example.test --json "${flags[@]}" "127.0.0.1:$PORT" >"$tmp/run.json" || true
        after=$(cpu_ticks)
        jq -r --arg m "$mode" --arg p "$pass" --argjson cpu "$((after - before))" --argjson hz "$hz" \
            '[$p, $m, (.msgs_per_s | floor), .acked, .failed, .tls_handshakes,
              (if .acked > 0 then ($cpu * 1000000 / $hz / .acked * 10 | floor) / 10 else 0 end),
              .latency_us.data_end.p99] | @tsv' "$tmp/run.json" | tee -a "$tmp/runs"
    done
done
stop_server
echo "pass mode msgs/s acked failed handshakes server_cpu_us/msg client_p99_ack_us (above)"
for mode in plain tls; do
    rate=$(awk -v m=$mode '$2 == m {print $3}' "$tmp/runs" | median)
    cpu=$(awk -v m=$mode '$2 == m {print $7}' "$tmp/runs" | median)
    p99=$(awk -v m=$mode '$2 == m {print $8}' "$tmp/runs" | median)
    echo "median $mode: $rate msgs/s, server CPU $cpu us/msg, client p99 ack $p99 us"
    eval "rate_$mode=$rate"
done
awk -v t="$rate_tls" -v p="$rate_plain" 'BEGIN {printf "tls/plain msgs/s: %.2f\n", t / p}'

echo "== idle memory: $IDLE sessions after EHLO, fresh server per measurement, $IDLE_PASSES passes"
cat >"$tmp/idle.py" <<'PY'
import socket, ssl, sys, time
port, n, mode, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.monotonic() + 120
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3

def reply(f):
    while True:
        line = f.readline()
        if len(line) < 4:
            raise RuntimeError("short reply %r" % line)
        if line[3:4] == b" ":
            return int(line[:3])

held = []
for i in range(n):
    if time.monotonic() > deadline:
        raise SystemExit("idle.py: too slow, %d of %d connected" % (i, n))
    s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                 source_address=("127.0.0.%d" % (2 + i % 8), 0))
    f = s.makefile("rb")
    assert reply(f) == 220
    s.sendall(b"EHLO idle.example\r\n"); assert reply(f) == 250
    if mode == "tls":
        s.sendall(b"STARTTLS\r\n"); assert reply(f) == 220
        s = ctx.wrap_socket(s, server_hostname="mx.example.test")
        f = s.makefile("rb")
        s.sendall(b"EHLO idle.example\r\n"); assert reply(f) == 250
    held.append((s, f))
open(ready, "w").write("%d\n" % len(held))
# Hold them until the measurement is taken (the ready file is removed), at most 60 s.
end = time.monotonic() + 60
import os
while os.path.exists(ready) and time.monotonic() < end:
    time.sleep(0.1)
PY
: >"$tmp/idle"
for pass in $(seq "$IDLE_PASSES"); do
    for mode in plain tls; do
        start_server "idle-$mode-$pass"
        # One session of each kind first, so one-time allocations are not counted per session.
        python3 "$tmp/idle.py" "$PORT" 1 "$mode" "$tmp/warm" & wpid=$!
        for _ in $(seq 100); do [[ -s $tmp/warm ]] && break; sleep 0.1; done
        rm -f "$tmp/warm"; wait $wpid || true
        sleep 0.5
        base=$(rss_kib)
        python3 "$tmp/idle.py" "$PORT" "$IDLE" "$mode" "$tmp/ready" & ppid=$!
        for _ in $(seq 1200); do [[ -s $tmp/ready ]] && break; sleep 0.1; done
        [[ -s $tmp/ready ]] || { echo "tls-bench: idle clients did not connect" >&2; exit 1; }
        sleep 1
        held=$(rss_kib)
        rm -f "$tmp/ready"; wait $ppid || true
        stop_server
        echo -e "$pass\t$mode\t$base\t$held\t$(( (held - base) * 1024 / IDLE ))" | tee -a "$tmp/idle"
    done
done
echo "pass mode rss_before_kib rss_held_kib bytes_per_session (above)"
for mode in plain tls; do
    per=$(awk -v m=$mode '$2 == m {print $5}' "$tmp/idle" | median)
    held=$(awk -v m=$mode '$2 == m {print $4}' "$tmp/idle" | median)
    echo "median $mode: $per bytes per idle session (RSS with $IDLE held: $held KiB)"
    eval "per_$mode=$per"
done
awk -v t="$per_tls" -v p="$per_plain" 'BEGIN {if (p > 0) printf "tls/plain bytes per idle session: %.1f\n", t / p}'
