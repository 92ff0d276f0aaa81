#!/usr/bin/env bash
# compaction-disk.sh: spool disk use over a longer run with a few messages that never leave,
# with and without compaction. On loopback: Postfix's smtp-sink is the next hop of
# example.test; slow.test is routed to a port where nothing listens, so its messages stay
# deferred for the whole run, scattered over the segments.
#
# For each mode (compact: --compact-after COMPACT_AFTER; pinned: --compact-after 1000000000,
# i.e. never within the run) one server runs ROUNDS rounds; each round sends BATCH messages of
# SIZE bytes to example.test and SLOW to slow.test, then waits INTERVAL seconds and samples:
# messages queued and their bytes (`ringmx stats`), segment files, and the bytes of those
# files. Segments roll at SEGMENT bytes so that a short run has many of them. Prints one table
# per mode and writes them to loadtest/results/<date>-compaction-disk.md.
#
# Usage: loadtest/compaction-disk.sh [--rounds N] [--batch N] [--slow N] [--size BYTES]
#                                    [--segment BYTES] [--compact-after SECS] [--interval SECS]
# Environment: RINGMX (default target/release/ringmx), SMTP_SOURCE (default
# target/release/smtp-source), SMTP_SINK (default /usr/sbin/smtp-sink), PORT_BASE (default 2720:
# ringmx, +1 the sink, +2 the port nobody listens on), REACTORS (default 2).
# Needs: jq, Postfix's smtp-sink (apt install postfix).
set -euo pipefail
cd "$(dirname "$0")/.."

RINGMX=${RINGMX:-target/release/ringmx}
SOURCE=${SMTP_SOURCE:-target/release/smtp-source}
SINK_BIN=${SMTP_SINK:-/usr/sbin/smtp-sink}
PORT_BASE=${PORT_BASE:-2720}
REACTORS=${REACTORS:-2}
ROUNDS=20
BATCH=2000
SLOW=4
SIZE=4096
SEGMENT=$((4 * 1024 * 1024))
COMPACT_AFTER=5
INTERVAL=3

ARGS="$*"
while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --batch) BATCH=$2; shift ;;
    --slow) SLOW=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --segment) SEGMENT=$2; shift ;;
    --compact-after) COMPACT_AFTER=$2; shift ;;
    --interval) INTERVAL=$2; shift ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "compaction-disk: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

command -v jq >/dev/null || { echo "compaction-disk: jq is needed (apt install jq)" >&2; exit 2; }
for b in "$RINGMX" "$SOURCE"; do
    [[ -x $b ]] || { echo "compaction-disk: $b not found; run: cargo build --release --workspace" >&2; exit 2; }
done
[[ -x $SINK_BIN ]] || { echo "compaction-disk: $SINK_BIN not found (apt install postfix)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ringmx-compact.XXXXXX")
RPORT=$PORT_BASE
SPORT=$((PORT_BASE + 1))
DOWN=$((PORT_BASE + 2))
RPID=
SPID=

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

user=nobody
[[ $(id -u) -eq 0 ]] || user=$(id -un)
"$SINK_BIN" -u "$user" -m 1024 "127.0.0.1:$SPORT" 1024 >>"$work/sink.log" 2>&1 &
SPID=$!
wait_port "$SPORT" "$SPID" || { echo "compaction-disk: smtp-sink did not start" >&2; exit 1; }

cat >"$work/routes.toml" <<EOF
[routes]
"example.test" = "smtp:[127.0.0.1]:$SPORT"
"slow.test" = "smtp:[127.0.0.1]:$DOWN"
EOF

stats() { "$RINGMX" stats --stats "$work/stats.sock" --json; }
seg_files() { find "$work/spool" -name '*.seg' | wc -l; }
seg_bytes() { find "$work/spool" -name '*.seg' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
send() { # count recipient
    "$SOURCE" -s 10 -m "$1" -l "$SIZE" -d -M src.test -f sender@src.test -t "$2" \
        --timeout 30 --json "127.0.0.1:$RPORT" >/dev/null 2>&1
}

report="$work/report.md"
: >"$report"
for mode in compact pinned; do
    after=$COMPACT_AFTER
    [[ $mode == pinned ]] && after=1000000000
    rm -rf "$work/spool"
    mkdir -p "$work/spool"
    "$RINGMX" serve --listen "127.0.0.1:$RPORT" --domain example.test --domain slow.test \
        --spool "$work/spool" --stats "$work/stats.sock" --reactors "$REACTORS" \
        --config "$work/routes.toml" --segment-size "$SEGMENT" --compact-after "$after" \
        --retry-first 3600 --retry-max 3600 >>"$work/ringmx-$mode.log" 2>&1 &
    RPID=$!
    wait_port "$RPORT" "$RPID" || { echo "compaction-disk: ringmx did not start" >&2; tail "$work/ringmx-$mode.log" >&2; exit 1; }
    for _ in $(seq 100); do [[ -S $work/stats.sock ]] && break; sleep 0.1; done
    {
        echo "### $mode (--compact-after $after)"
        echo
        echo "| round | s | accepted | queued msgs | queued bytes | segment files | segment bytes |"
        echo "|---:|---:|---:|---:|---:|---:|---:|"
    } | tee -a "$report"
    t0=$(date +%s)
    accepted=0
    for round in $(seq "$ROUNDS"); do
        send "$BATCH" rcpt@example.test
        send "$SLOW" late@slow.test
        accepted=$((accepted + BATCH + SLOW))
        sleep "$INTERVAL"
        s=$(stats)
        printf '| %d | %d | %d | %d | %d | %d | %d |\n' "$round" $(($(date +%s) - t0)) "$accepted" \
            "$(jq '.delivery.queue_messages' <<<"$s")" "$(jq '.delivery.queue_bytes' <<<"$s")" \
            "$(seg_files)" "$(seg_bytes)" | tee -a "$report"
    done
    compacted=$(grep -c 'delivery: compacted segment' "$work/ringmx-$mode.log" || true)
    echo | tee -a "$report"
    echo "segments compacted: $compacted" | tee -a "$report"
    echo | tee -a "$report"
    kill -TERM "$RPID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$RPID" 2>/dev/null || true
    wait "$RPID" 2>/dev/null || true
    RPID=
done

out="loadtest/results/$(date -u +%Y-%m-%d)-compaction-disk.md"
{
    echo "# Spool disk use with long-deferred mail, with and without compaction"
    echo
    echo "\`loadtest/compaction-disk.sh $ARGS\` ($ROUNDS rounds of $BATCH + $SLOW messages of $SIZE bytes,"
    echo "segments of $SEGMENT bytes, $REACTORS reactors, $(nproc) cores)."
    echo
    cat "$report"
} >"$out"
echo "compaction-disk: written to $out"
