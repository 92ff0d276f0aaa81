#!/usr/bin/env bash
# fsync-floor.sh: what one durable message costs on this disk, against what ringmx pays.
#
# One session, 1 KiB messages, reused connection (Postfix's smtp-source, no PIPELINING): every
# 250 waits for one fdatasync, so the message rate is bounded by one sink round trip plus one
# flush. This script measures, in turn and PASSES times:
#   - fio, synchronous writes of the size ringmx appends per message (about 1,450 bytes: frames
#     and the Received: line) each followed by fdatasync, in three patterns:
#       append   after fallocate(KEEP_SIZE), what the spool does by default
#       overwrite a file written beforehand, what `--prepare-segments` turns appends into
#       direct   4 KiB O_DIRECT + O_DSYNC overwrites, the cheapest durable write there is
#   - smtp-sink (stores nothing) and ringmx (`--reactors 1`, default and `--prepare-segments`)
#     under one smtp-source session: msgs/s, server CPU per message, and ringmx's own
#     fdatasync p50/p99 (`ringmx stats --json`, submission to completion as the reactor sees it).
# Then prints medians and the ceiling one session could reach: 1 / (1/sink rate + fio p50).
# Writes the table to loadtest/results/<date>-fsync-floor.md.
#
# Usage: loadtest/fsync-floor.sh [--passes N] [--messages N]
# Needs: fio and Postfix's smtp-source/smtp-sink (apt install fio postfix), jq, a release build.
set -euo pipefail
cd "$(dirname "$0")/.."

RINGMX=${RINGMX:-target/release/ringmx}
PF_SOURCE=${PF_SOURCE:-/usr/sbin/smtp-source}
SINK_BIN=${SMTP_SINK:-/usr/sbin/smtp-sink}
PORT=${PORT:-2690}
PASSES=3
MESSAGES=4000
APPEND_BYTES=1450 # what ringmx appends for one 1 KiB message (spool bytes / commits)

while (($#)); do
    case $1 in
    --passes) PASSES=$2; shift ;;
    --messages) MESSAGES=$2; shift ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "fsync-floor: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
for t in fio jq "$PF_SOURCE" "$SINK_BIN" "$RINGMX"; do
    command -v "$t" >/dev/null || { echo "fsync-floor: $t not found (apt install fio postfix jq; cargo build --release)" >&2; exit 2; }
done

# The scratch directory is on the disk the spool would use (TMPDIR may point elsewhere).
work=$(mktemp -d "${TMPDIR:-/tmp}/ringmx-fsync.XXXXXX")
pid=
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

fio_p() { # name args...: prints "p50 p99" of fdatasync (or write, for O_DSYNC) latency in us
    local name=$1 out
    shift
    out=$(fio --name="$name" --filename="$work/fio.dat" --ioengine=sync --output-format=json "$@" 2>/dev/null)
    jq -r '.jobs[0] | (if .sync.lat_ns.N > 0 then .sync.lat_ns else .write.clat_ns end)
        | .percentile | "\((.["50.000000"] / 1000) | floor) \((.["99.000000"] / 1000) | floor)"' <<<"$out"
}

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
clk=$(getconf CLK_TCK)

drive() { # label: runs smtp-source against $pid on $PORT, prints "rate cpu_us"
    local t0 t1 c0 c1
    c0=$(ticks "$pid")
    t0=$(date +%s%N)
    "$PF_SOURCE" -s 1 -m "$MESSAGES" -l 1024 -d -M src.test -f sender@src.test \
        -t rcpt@example.test "127.0.0.1:$PORT" >/dev/null
    t1=$(date +%s%N)
    c1=$(ticks "$pid")
    awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" -v c="$((c1 - c0))" -v hz="$clk" \
        'BEGIN { printf "%d %.0f\n", n / ((b - a) / 1e9), c / hz * 1e6 / n }'
}

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "fsync-floor: nothing listens on $PORT" >&2
    return 1
}

run_ringmx() { # extra serve args...: prints "rate cpu p50 p99"
    rm -rf "$work/spool"
    mkdir "$work/spool"
    "$RINGMX" serve --listen "127.0.0.1:$PORT" --domain example.test --spool "$work/spool" \
        --reactors 1 "$@" >/dev/null 2>&1 &
    pid=$!
    wait_port
    local r
    r=$(drive)
    local f
    f=$("$RINGMX" stats --stats "$work/spool/stats.sock" --json | jq -r '.total.fsync_us | "\(.p50) \(.p99)"')
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
    echo "$r $f"
}

run_sink() { # prints "rate cpu"
    local user=nobody
    [[ $(id -u) -eq 0 ]] || user=$(id -un)
    "$SINK_BIN" -u "$user" -m 1024 "127.0.0.1:$PORT" 1024 >/dev/null 2>&1 &
    pid=$!
    wait_port
    drive
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
for p in $(seq "$PASSES"); do
    rm -f "$work/fio.dat"
    read -r a50 a99 < <(fio_p append --rw=write --bs=$APPEND_BYTES --size=4M --fdatasync=1 --fallocate=keep)
    read -r o50 o99 < <(fio_p overwrite --rw=write --bs=$APPEND_BYTES --size=4M --fdatasync=1 --fallocate=none --overwrite=1)
    rm -f "$work/fio.dat"
    read -r d50 d99 < <(fio_p direct --rw=write --bs=4k --size=4M --direct=1 --sync=dsync --overwrite=1)
    rm -f "$work/fio.dat"
    read -r srate scpu < <(run_sink)
    read -r rrate rcpu r50 r99 < <(run_ringmx)
    read -r prate pcpu p50 p99 < <(run_ringmx --prepare-segments)
    echo "pass $p: fio append $a50/$a99 us, overwrite $o50/$o99, direct $d50/$d99; sink $srate msgs/s $scpu us; ringmx $rrate msgs/s $rcpu us fsync $r50/$r99; prepared $prate msgs/s $pcpu us fsync $p50/$p99" >&2
    add a50 "$a50"; add a99 "$a99"; add o50 "$o50"; add o99 "$o99"; add d50 "$d50"; add d99 "$d99"
    add srate "$srate"; add scpu "$scpu"
    add rrate "$rrate"; add rcpu "$rcpu"; add r50 "$r50"; add r99 "$r99"
    add prate "$prate"; add pcpu "$pcpu"; add p50 "$p50"; add p99 "$p99"
done

med() { tr ' ' '\n' <<<"${R[$1]}" | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
ceil() { awk -v s="$(med srate)" -v f="$1" 'BEGIN { printf "%d", 1 / (1 / s + f / 1e6) }'; }

out=loadtest/results/$(date -u +%Y-%m-%d)-fsync-floor.md
{
    echo "# One durable message at a time: the disk's price and ringmx's, $(date -u '+%Y-%m-%d %H:%M') UTC"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr), $(df --output=source,fstype "$work" | tail -1 | xargs)."
    echo "Command: \`loadtest/fsync-floor.sh --passes $PASSES --messages $MESSAGES\`; medians of $PASSES passes."
    echo
    echo "| what | fdatasync p50 us | p99 us |"
    echo "|---|---:|---:|"
    echo "| fio: ${APPEND_BYTES}-byte appends after fallocate(KEEP_SIZE), fdatasync each | $(med a50) | $(med a99) |"
    echo "| fio: ${APPEND_BYTES}-byte overwrites of a written file, fdatasync each | $(med o50) | $(med o99) |"
    echo "| fio: 4 KiB O_DIRECT + O_DSYNC overwrites (write latency) | $(med d50) | $(med d99) |"
    echo "| ringmx, 1 session (spool fdatasync, submission to completion) | $(med r50) | $(med r99) |"
    echo "| ringmx --prepare-segments, 1 session | $(med p50) | $(med p99) |"
    echo
    echo "| 1 session, 1 KiB, Postfix smtp-source -d | msgs/s | server CPU us/msg | ÷ sink |"
    echo "|---|---:|---:|---:|"
    echo "| smtp-sink (stores nothing) | $(med srate) | $(med scpu) | 1.00 |"
    echo "| ringmx --reactors 1 | $(med rrate) | $(med rcpu) | $(awk -v a="$(med rrate)" -v b="$(med srate)" 'BEGIN { printf "%.2f", a / b }') |"
    echo "| ringmx --reactors 1 --prepare-segments | $(med prate) | $(med pcpu) | $(awk -v a="$(med prate)" -v b="$(med srate)" 'BEGIN { printf "%.2f", a / b }') |"
    echo "| ceiling: a sink round trip plus fio's append fdatasync | $(ceil "$(med a50)") | | $(awk -v a="$(ceil "$(med a50)")" -v b="$(med srate)" 'BEGIN { printf "%.2f", a / b }') |"
    echo "| ceiling: a sink round trip plus fio's O_DIRECT flush | $(ceil "$(med d50)") | | $(awk -v a="$(ceil "$(med d50)")" -v b="$(med srate)" 'BEGIN { printf "%.2f", a / b }') |"
} | tee "$out"
echo "fsync-floor: written to $out" >&2
