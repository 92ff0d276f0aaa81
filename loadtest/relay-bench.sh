#!/usr/bin/env bash
# relay-bench.sh: onward delivery under load, on loopback. Postfix's smtp-sink is the next hop
# (it answers 250 and stores nothing); our smtp-source is the load.
#
# Three measurements, each printed and written to loadtest/results/<date>-relay.md:
#  1. Throughput: for PASSES interleaved passes, ringmx storing only (no route) and ringmx
#     relaying everything to the sink (--relay-to), SESSIONS sessions of SIZE-byte messages for
#     DURATION seconds each; msgs/s acknowledged, the relaying server's CPU per message, and the
#     ratio relay ÷ store-only (medians). The relay run waits until the queue is empty, and its
#     msgs/s counts only the load phase, so a queue left behind is shown, not hidden.
#  2. Latency under a steady load at half the relaying rate of step 1 (`smtp-source --rate`):
#     accepted → delivered p50/p99 from `ringmx stats` (the delivery histogram) and the deepest
#     queue seen (sampled every 0.5 s).
#  3. Disk: COUNT messages (default 200,000) relayed by one server; afterwards, with the queue
#     empty, the segment files left in the spool and its size.
#
# Usage: loadtest/relay-bench.sh [--duration SECS] [--passes N] [--sessions N] [--size BYTES]
#                                [--count N] [--skip-disk]
# Environment: RINGMX (default target/release/ringmx), SMTP_SOURCE (default
# target/release/smtp-source), SMTP_SINK (default /usr/sbin/smtp-sink), PORT_BASE (default 2690:
# ringmx, +1 the sink), REACTORS (default: number of cores).
# Needs: jq, Postfix's smtp-sink (apt install postfix).
set -euo pipefail
cd "$(dirname "$0")/.."

RINGMX=${RINGMX:-target/release/ringmx}
SOURCE=${SMTP_SOURCE:-target/release/smtp-source}
SINK_BIN=${SMTP_SINK:-/usr/sbin/smtp-sink}
PORT_BASE=${PORT_BASE:-2690}
REACTORS=${REACTORS:-$(nproc)}
DURATION=5
PASSES=3
SESSIONS=20
SIZE=1024
COUNT=200000
DISK=1
DOMAIN=example.test
# Longest wait for the queue to drain after a load (seconds).
DRAIN_MAX=300

ARGS="$*"
while (($#)); do
    case $1 in
    --duration) DURATION=$2; shift ;;
    --passes) PASSES=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --count) COUNT=$2; shift ;;
    --skip-disk) DISK=0 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "relay-bench: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

command -v jq >/dev/null || { echo "relay-bench: jq is needed (apt install jq)" >&2; exit 2; }
for b in "$RINGMX" "$SOURCE"; do
    [[ -x $b ]] || { echo "relay-bench: $b not found; run: cargo build --release --workspace" >&2; exit 2; }
done
[[ -x $SINK_BIN ]] || { echo "relay-bench: $SINK_BIN not found (apt install postfix)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ringmx-relay.XXXXXX")
RPORT=$PORT_BASE
SPORT=$((PORT_BASE + 1))
RPID=
SPID=
CLK_TCK=$(getconf CLK_TCK)

cleanup() {
    [[ -n $RPID ]] && kill -9 "$RPID" 2>/dev/null || true
    [[ -n $SPID ]] && kill "$SPID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_port() { # port pid
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

start_sink() {
    local user=nobody
    [[ $(id -u) -eq 0 ]] || user=$(id -un)
    "$SINK_BIN" -u "$user" -m 1024 "127.0.0.1:$SPORT" 1024 >>"$work/sink.log" 2>&1 &
    SPID=$!
    wait_port "$SPORT" "$SPID" || { echo "relay-bench: smtp-sink did not start" >&2; exit 1; }
}

start_ringmx() { # relay|store
    rm -rf "$work/spool"
    mkdir -p "$work/spool"
    local route=()
    [[ $1 == relay ]] && route=(--relay-to "smtp:[127.0.0.1]:$SPORT")
    "$RINGMX" serve --listen "127.0.0.1:$RPORT" --domain "$DOMAIN" --spool "$work/spool" \
        --stats "$work/stats.sock" --reactors "$REACTORS" --sync group "${route[@]}" \
        >>"$work/ringmx.log" 2>&1 &
    RPID=$!
    wait_port "$RPORT" "$RPID" || { echo "relay-bench: ringmx did not start" >&2; tail "$work/ringmx.log" >&2; exit 1; }
    # The stats socket comes up after the listeners.
    for _ in $(seq 100); do [[ -S $work/stats.sock ]] && return 0; sleep 0.1; done
    echo "relay-bench: no stats socket" >&2
    exit 1
}

stop_ringmx() {
    kill -TERM "$RPID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$RPID" 2>/dev/null || true
    wait "$RPID" 2>/dev/null || true
    RPID=
}

ticks() { awk '{ print $14 + $15 }' "/proc/$RPID/stat"; }
stats() { "$RINGMX" stats --stats "$work/stats.sock" --json; }

# Waits until the delivery queue is empty; prints the deepest queue seen (messages).
drain() {
    local deepest=0 q
    for _ in $(seq $((DRAIN_MAX * 2))); do
        q=$(stats | jq '.delivery.queue_messages')
        ((q > deepest)) && deepest=$q
        ((q == 0)) && { echo "$deepest"; return 0; }
        sleep 0.5
    done
    echo "relay-bench: the queue did not drain in ${DRAIN_MAX}s ($q left)" >&2
    echo "$deepest"
    return 1
}

load() { # extra smtp-source flags...
    "$SOURCE" -s "$SESSIONS" -l "$SIZE" -d -M src.test -f sender@src.test -t "rcpt@$DOMAIN" \
        --timeout 30 --json "$@" "127.0.0.1:$RPORT" 2>/dev/null
}

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) m = a[(NR + 1) / 2]; else m = (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.0f\n", m }'; }

start_sink
echo "relay-bench: $SESSIONS sessions, $SIZE-byte messages, ${DURATION}s runs, $PASSES passes, $REACTORS reactors"

# ---- 1. throughput ---------------------------------------------------------------------------
: >"$work/store.txt"
: >"$work/relay.txt"
: >"$work/relay-cpu.txt"
: >"$work/store-cpu.txt"
for pass in $(seq "$PASSES"); do
    for mode in store relay; do
        start_ringmx "$mode"
        t0=$(ticks)
        out=$(load --duration "$DURATION")
        rate=$(jq '.msgs_per_s' <<<"$out")
        acked=$(jq '.acked' <<<"$out")
        left=0
        if [[ $mode == relay ]]; then
            left=$(stats | jq '.delivery.queue_messages')
            drain >/dev/null
            delivered=$(stats | jq '.delivery.delivered')
            ((delivered == acked)) || echo "relay-bench: pass $pass: $delivered delivered of $acked acked" >&2
        fi
        t1=$(ticks)
        cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$acked" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
        echo "$rate" >>"$work/$mode.txt"
        echo "$cpu" >>"$work/$mode-cpu.txt"
        printf 'pass %s %-5s %9.0f msgs/s  %7s us CPU/msg (delivery included)  queue at end of load: %s\n' \
            "$pass" "$mode" "$rate" "$cpu" "$left"
        stop_ringmx
    done
done
store=$(median <"$work/store.txt")
relay=$(median <"$work/relay.txt")
store_cpu=$(median <"$work/store-cpu.txt")
relay_cpu=$(median <"$work/relay-cpu.txt")
ratio=$(awk -v a="$relay" -v b="$store" 'BEGIN { printf "%.2f", a / b }')
echo "throughput: store-only $store msgs/s, relaying $relay msgs/s: ${ratio}x"

# ---- 2. latency at half the relaying rate ----------------------------------------------------
half=$(awk -v r="$relay" 'BEGIN { printf "%d", r / 2 }')
start_ringmx relay
(load --rate "$half" --duration "$DURATION" >"$work/steady.json") &
lp=$!
deepest=0
while kill -0 "$lp" 2>/dev/null; do
    q=$(stats | jq '.delivery.queue_messages')
    ((q > deepest)) && deepest=$q
    sleep 0.5
done
wait "$lp" || true
drain >/dev/null
lat=$(stats | jq -c '.delivery.delivered_latency_us | {count, p50, p99, max}')
steady_acked=$(jq '.acked' "$work/steady.json")
echo "steady load at $half msgs/s: $steady_acked acked; accepted->delivered $lat; deepest queue $deepest"
stop_ringmx

# ---- 3. disk after COUNT messages ------------------------------------------------------------
disk="skipped (--skip-disk)"
if ((DISK)); then
    start_ringmx relay
    out=$(load -m "$COUNT")
    acked=$(jq '.acked' <<<"$out")
    drain >/dev/null
    sleep 1
    segs=$(find "$work/spool" -maxdepth 1 -name '*.seg' | wc -l)
    size=$(du -sk "$work/spool" | cut -f1)
    listing=$(cd "$work/spool" && ls -l --time-style=+ | awk 'NR > 1 { print $5, $NF }' | tr '\n' ';')
    disk="$acked messages relayed; with the queue empty: $segs segment files, spool ${size} KiB ($listing)"
    echo "disk: $disk"
    stop_ringmx
fi

# ---- report ----------------------------------------------------------------------------------
mkdir -p loadtest/results
report=loadtest/results/$(date -u +%Y-%m-%d)-relay.md
{
    echo "# ringmx relaying to smtp-sink, $(date -u '+%Y-%m-%d %H:%M') UTC"
    echo
    echo "Machine: $(nproc) cores, Linux $(uname -r). Everything on 127.0.0.1; the load generator,"
    echo "the server and the next hop (Postfix's smtp-sink, which answers 250 and stores nothing)"
    echo "share the cores. ringmx: \`--reactors $REACTORS --sync group\`, relaying with"
    echo "\`--relay-to smtp:[127.0.0.1]:PORT\`. Command: \`loadtest/relay-bench.sh $ARGS\`."
    echo
    echo "| | msgs/s (median of $PASSES) | server CPU µs/msg |"
    echo "|---|---:|---:|"
    echo "| store only | $store | $store_cpu |"
    echo "| relaying | $relay | $relay_cpu |"
    echo "| ratio | ${ratio}× | |"
    echo
    echo "The relaying CPU includes delivering every message (measured until the queue was empty)."
    echo
    echo "Steady load at half the relaying rate ($half msgs/s, ${DURATION}s, \`smtp-source --rate\`):"
    echo "$steady_acked acked; accepted → delivered (µs) $lat; deepest queue seen: $deepest messages."
    echo
    echo "Disk: $disk."
} >"$report"
echo "relay-bench: wrote $report"
