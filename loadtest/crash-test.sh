#!/usr/bin/env bash
# crash-test.sh: kill -9 ringmx under load, restart it on the same spool, and check that every
# message it acknowledged (250 after the data) is in the spool exactly once, byte for byte.
#
# Each round: start `ringmx serve` on an empty spool; run smtp-source with --ack-log; kill -9 the
# server at a chosen moment of the load; restart it on the same spool (recovery) and send a few
# more messages; stop it; `ringmx spool check`; `ringmx spool export --eml DIR`; then
# `smtp-source --verify-eml DIR --ack-log FILE` re-renders every acknowledged token and compares.
# Messages that were in flight at the kill may or may not be stored ("unacked", allowed); an
# acknowledged message that is missing, stored twice or different fails the round.
#
# Usage: loadtest/crash-test.sh [--quick] [--keep]     (--keep: leave the work directory)
# Environment: RINGMX (default target/release/ringmx), SMTP_SOURCE (default
# target/release/smtp-source), PORT (default 0: the port the kernel gives the first server,
# reused by every later start), REACTORS (default 2).
# Loopback only. Exit status 0 when every round passes.
set -euo pipefail
cd "$(dirname "$0")/.."

RINGMX=${RINGMX:-target/release/ringmx}
SOURCE=${SMTP_SOURCE:-target/release/smtp-source}
PORT=${PORT:-0}
REACTORS=${REACTORS:-2}
DOMAIN=example.test
SHAPE=(-M src.test -f sender@src.test -t rcpt@$DOMAIN)

# One round per line: name, seconds of load before the kill, body size, sessions, -d or "new".
ROUNDS=(
    "early      0.05  1024    20  -d"
    "mid-data   0.80  102400  20  -d"
    "mid        1.20  4096    50  -d"
    "new-conn   1.00  1024    20  new"
    "late       2.60  1024    10  -d"
)
LOAD_SECS=3 # each load would run this long if nobody killed the server
KEEP=0
for arg in "$@"; do
    case $arg in
    --quick) ROUNDS=("early 0.05 1024 10 -d" "mid-data 0.40 102400 10 -d") LOAD_SECS=1 ;;
    --keep) KEEP=1 ;;
    *) echo "usage: $0 [--quick] [--keep]" >&2; exit 2 ;;
    esac
done

for tool in "$RINGMX" "$SOURCE"; do
    [[ -x $tool ]] || { echo "crash-test: $tool not found; run: cargo build --release --workspace" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/ringmx-crash.XXXXXX")
server_pid=
source_pid=
cleanup() {
    for p in $source_pid $server_pid; do
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if ((KEEP)); then echo "crash-test: work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

wait_port() { # wait until something accepts on 127.0.0.1:$PORT (10 s at most)
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        if [[ -n $server_pid ]] && ! kill -0 "$server_pid" 2>/dev/null; then
            echo "crash-test: ringmx exited during start-up; log:" >&2; cat "$dir/server.log" >&2; return 1
        fi
        sleep 0.1
    done
    echo "crash-test: nothing listens on 127.0.0.1:$PORT after 10 s" >&2
    return 1
}

learn_port() { # PORT=0: take the port the kernel gave the server from its log (10 s at most)
    local port
    for _ in $(seq 100); do
        port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$dir/server.log" | head -n 1)
        if [[ -n $port ]]; then PORT=$port; return 0; fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "crash-test: ringmx exited during start-up; log:" >&2; cat "$dir/server.log" >&2; return 1
        fi
        sleep 0.1
    done
    echo "crash-test: ringmx did not say where it listens after 10 s" >&2
    return 1
}

port_closed() { # until nothing accepts on 127.0.0.1:$PORT any more (10 s at most)
    for _ in $(seq 200); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "crash-test: 127.0.0.1:$PORT still accepts 10 s after the server was killed" >&2
    return 1
}

start_server() { # on $dir/spool; the log (info) names the port for learn_port
    # Right after a kill -9 the kernel may still hold the old server's listening socket for a
    # moment (its io_uring instance is torn down asynchronously): a connection then reaches the
    # dying socket, and ringmx refuses to share the port. So on a restart, wait until the port
    # is closed, and retry while the new server says the port is in use (10 s at most).
    local attempt mark
    if [[ $PORT != 0 ]]; then port_closed; fi
    for attempt in $(seq 50); do
        mark=$(wc -l <"$dir/server.log" 2>/dev/null || echo 0)
        RUST_LOG=info "$RINGMX" serve --listen "127.0.0.1:$PORT" --domain "$DOMAIN" --spool "$dir/spool" \
            --stats "$dir/stats.sock" --reactors "$REACTORS" --sync group >>"$dir/server.log" 2>&1 &
        server_pid=$!
        if [[ $PORT == 0 ]]; then
            learn_port
            wait_port
            return
        fi
        # The server says "listening on" once it has bound, or exits with "in use".
        local i
        for i in $(seq 100); do
            if tail -n +"$((mark + 1))" "$dir/server.log" | grep -q 'listening on'; then
                wait_port
                return
            fi
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        if tail -n +"$((mark + 1))" "$dir/server.log" | grep -qi 'in use'; then
            wait "$server_pid" 2>/dev/null || true
            server_pid=
            echo "   port $PORT still held by the killed server; retrying ($attempt)"
            sleep 0.2
            continue
        fi
        wait_port
        return
    done
    echo "crash-test: port $PORT still in use after 10 s" >&2
    return 1
}

stop_server() { # SIGTERM, then SIGKILL after 10 s
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

failed=0
summary=()
for round in "${ROUNDS[@]}"; do
    read -r name delay size sessions mode <<<"$round"
    dir=$work/$name
    mkdir -p "$dir/spool" "$dir/eml"
    conn=(-d)
    [[ $mode == new ]] && conn=()
    echo "== $name: kill -9 after ${delay}s of load (-s $sessions -l $size ${conn[*]:-new connections})"
    round_start=$SECONDS

    start_server
    "$SOURCE" -s "$sessions" --duration "$LOAD_SECS" -l "$size" "${conn[@]}" "${SHAPE[@]}" \
        --timeout 10 --ack-log "$dir/acks" --json "127.0.0.1:$PORT" >"$dir/load.json" 2>"$dir/load.err" &
    source_pid=$!
    sleep "$delay"
    kill -9 "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    # smtp-source sees the connections break, stops, and writes its ack log.
    wait "$source_pid" || true
    source_pid=
    touch "$dir/acks"
    acked_before=$(wc -l <"$dir/acks")

    # Recovery: the server must come back on the same spool and take new mail.
    start_server
    if ! "$SOURCE" -s 2 -m 20 -d -l "$size" "${SHAPE[@]}" --timeout 10 --ack-log "$dir/acks" \
        "127.0.0.1:$PORT" >"$dir/after.txt" 2>&1; then
        echo "   after restart, the server did not take 20 new messages:" >&2
        cat "$dir/after.txt" >&2
        failed=1
    fi
    stop_server
    echo "   killed and restarted; checking ($((SECONDS - round_start))s)"

    status=PASS
    if ! "$RINGMX" spool check --spool "$dir/spool" >"$dir/check.txt" 2>&1; then
        echo "   ringmx spool check failed:" >&2; cat "$dir/check.txt" >&2
        status=FAIL
    fi
    if ! "$RINGMX" spool export --spool "$dir/spool" --eml "$dir/eml" >"$dir/export.txt" 2>&1; then
        echo "   ringmx spool export failed:" >&2; cat "$dir/export.txt" >&2
        status=FAIL
    fi
    if ! "$SOURCE" --verify-eml "$dir/eml" --ack-log "$dir/acks" -l "$size" "${SHAPE[@]}" \
        >"$dir/verify.txt" 2>&1; then
        status=FAIL
    fi
    sed 's/^/   /' "$dir/verify.txt"
    [[ $status == PASS ]] || failed=1
    summary+=("$(printf '%-10s %6ss %7s %4s %-4s %8s acked before the kill  %s (%ss)' \
        "$name" "$delay" "$size" "$sessions" "$mode" "$acked_before" "$status" $((SECONDS - round_start)))")
done

echo
echo "crash-test summary (ringmx --sync group, $REACTORS reactors):"
printf '  %s\n' "${summary[@]}"
if ((failed)); then
    echo "crash-test: FAIL (acknowledged mail lost, duplicated or changed; see above)"
    exit 1
fi
echo "crash-test: PASS"
