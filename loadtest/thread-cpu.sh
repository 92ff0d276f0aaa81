#!/usr/bin/env bash
# thread-cpu.sh: where ringmx's CPU per message goes, thread by thread.
#
# Starts `ringmx serve` (fresh spool), drives it with Postfix's smtp-source (no PIPELINING,
# reused connections, 1 KiB), and prints per message, for each kind of thread (reactors, the
# kernel's io-wq workers that run the spool's writes and fdatasyncs, the log writer, ...): CPU
# in microseconds and voluntary / involuntary context switches, from /proc/<pid>/task/*/.
# With `perf` installed (and allowed: root or perf_event_paranoid <= 1) it also counts, per
# message, io_uring operations, io-wq hand-offs, epoll_wait and io_uring_enter calls.
#
# Usage: loadtest/thread-cpu.sh [--sessions S] [--messages N] [-- extra serve flags]
#   e.g. loadtest/thread-cpu.sh --sessions 10 -- --reactors 1
# Needs: Postfix's smtp-source (apt install postfix), a release build.
set -euo pipefail
cd "$(dirname "$0")/.."

RINGMX=${RINGMX:-target/release/ringmx}
PF_SOURCE=${PF_SOURCE:-/usr/sbin/smtp-source}
PORT=${PORT:-2695}
SESSIONS=10
MESSAGES=40000
while (($#)); do
    case $1 in
    --sessions) SESSIONS=$2; shift ;;
    --messages) MESSAGES=$2; shift ;;
    --) shift; break ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "thread-cpu: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ -x $RINGMX ]] || { echo "thread-cpu: $RINGMX not found: cargo build --release" >&2; exit 2; }
[[ -x $PF_SOURCE ]] || { echo "thread-cpu: $PF_SOURCE not found: apt install postfix" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ringmx-threads.XXXXXX")
pid=
perf_pid=
cleanup() {
    [[ -n $perf_pid ]] && kill -INT "$perf_pid" 2>/dev/null && wait "$perf_pid" 2>/dev/null
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/spool"
"$RINGMX" serve --listen "127.0.0.1:$PORT" --domain example.test --spool "$work/spool" "$@" \
    >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.05
done

# kind voluntary involuntary ticks, summed over the threads of each kind (io-wq workers come
# and go; the ones alive at either end are counted).
snapshot() {
    for t in /proc/"$pid"/task/*; do
        local comm
        comm=$(sed 's/^iou-wrk-.*/io-wq/; s/^iou-sqp-.*/io-sqpoll/' "$t/comm" 2>/dev/null) || continue
        echo "$comm $(awk '/^voluntary_ctxt/ { v = $2 } /^nonvoluntary_ctxt/ { n = $2 } END { print v + 0, n + 0 }' "$t/status" 2>/dev/null) $(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null)"
    done | awk 'NF == 4 { v[$1] += $2; n[$1] += $3; c[$1] += $4 } END { for (k in v) print k, v[k], n[k], c[k] }' | sort
}

events='io_uring:io_uring_submit_req,io_uring:io_uring_queue_async_work,io_uring:io_uring_poll_arm,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_io_uring_enter,context-switches'
if command -v perf >/dev/null && perf stat -e "$events" -p "$pid" -o /dev/null -- sleep 0.01 >/dev/null 2>&1; then
    perf stat -e "$events" -p "$pid" -o "$work/perf.txt" &
    perf_pid=$!
    sleep 0.2
fi

snapshot >"$work/before"
"$PF_SOURCE" -s "$SESSIONS" -m "$MESSAGES" -l 1024 -d -M src.test -f sender@src.test \
    -t rcpt@example.test "127.0.0.1:$PORT" >/dev/null
snapshot >"$work/after"

clk=$(getconf CLK_TCK)
echo "ringmx serve $*, $SESSIONS sessions, $MESSAGES messages of 1 KiB (Postfix smtp-source -d)"
printf '%-16s %12s %14s %16s\n' thread "CPU us/msg" "voluntary/msg" "involuntary/msg"
join -a 2 -e 0 -o 0,1.2,1.3,1.4,2.2,2.3,2.4 "$work/before" "$work/after" |
    awk -v n="$MESSAGES" -v hz="$clk" '{ c = ($7 - $4) / hz * 1e6 / n; tot += c
        printf "%-16s %12.1f %14.2f %16.2f\n", $1, c, ($5 - $2) / n, ($6 - $3) / n }
        END { printf "%-16s %12.1f\n", "all", tot }'
if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    perf_pid=
    echo
    awk -v n="$MESSAGES" '/io_uring:|syscalls:|context-switches/ { gsub(",", "", $1); printf "%-40s %8.2f per message\n", $2, $1 / n }' "$work/perf.txt"
fi
