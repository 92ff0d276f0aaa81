#!/usr/bin/env bash
# Compares the cost of the load generators themselves: our smtp-source against Postfix's
# smtp-source, same flags, both driving Postfix's smtp-sink on loopback, runs interleaved
# (Postfix, ours, Postfix, ours, ...). Prints msgs/s (messages / wall time, median of the runs),
# the ratio, and each generator's CPU time (user + system, median) per run and per message.
#
# Usage: loadtest/bench-source.sh [--quick]
# Environment: SMTP_SOURCE (ours, default target/release/smtp-source), POSTFIX_SOURCE,
# SMTP_SINK (default /usr/sbin/...), PORT (default 2526), RUNS (default 3).
set -euo pipefail

OURS=${SMTP_SOURCE:-target/release/smtp-source}
PF_SOURCE=${POSTFIX_SOURCE:-/usr/sbin/smtp-source}
SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
PORT=${PORT:-2526}
RUNS=${RUNS:-3}
M_REUSE=20000
M_NEW=5000
if [[ ${1:-} == --quick ]]; then
    RUNS=1 M_REUSE=5000 M_NEW=1000
fi

for tool in "$OURS" "$PF_SOURCE" "$SINK" /usr/bin/time; do
    [[ -x $tool ]] || { echo "bench-source: $tool not found (build with cargo build --release -p loadtest; apt install postfix time)" >&2; exit 1; }
done

work=$(mktemp -d)
sink_pid=
cleanup() {
    [[ -n $sink_pid ]] && kill "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# smtp-sink drops privileges to -u; use our own user when not root.
sink_user=nobody
[[ $(id -u) -eq 0 ]] || sink_user=$(id -un)
"$SINK" -u "$sink_user" -m 1024 "127.0.0.1:$PORT" 1024 &
sink_pid=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

common=(-l 1024 -M bench.test -f s@bench.test -t r@bench.test)

# run NAME BINARY ARGS...: one timed run; appends "wall cpu" to $work/NAME.
run() {
    local name=$1 bin=$2; shift 2
    local t0 t1
    t0=$(date +%s.%N)
    if ! /usr/bin/time -f "%U %S" -o "$work/time" "$bin" "$@" >"$work/out" 2>&1; then
        echo "bench-source: $name failed:" >&2; cat "$work/out" >&2; exit 1
    fi
    t1=$(date +%s.%N)
    read -r user sys <"$work/time"
    echo "$t0 $t1 $user $sys" | awk '{ printf "%.4f %.4f\n", $2 - $1, $3 + $4 }' >>"$work/$name"
}

median() { # column file
    awk -v c="$1" '{ print $c }' "$2" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

printf '%-22s %12s %12s %7s %14s %14s\n' "settings" "postfix m/s" "ours m/s" "ratio" "postfix cpu" "ours cpu"
for cfg in "1 -d" "10 -d" "50 -d" "10 new"; do
    read -r s mode <<<"$cfg"
    if [[ $mode == -d ]]; then m=$M_REUSE; flags=(-d); else m=$M_NEW; flags=(); fi
    rm -f "$work/pf" "$work/ours"
    for _ in $(seq "$RUNS"); do
        run pf "$PF_SOURCE" -s "$s" -m "$m" "${flags[@]}" "${common[@]}" "127.0.0.1:$PORT"
        run ours "$OURS" -s "$s" -m "$m" "${flags[@]}" "${common[@]}" "127.0.0.1:$PORT"
    done
    pf_wall=$(median 1 "$work/pf"); ours_wall=$(median 1 "$work/ours")
    pf_cpu=$(median 2 "$work/pf"); ours_cpu=$(median 2 "$work/ours")
    awk -v s="$s" -v mode="$mode" -v m="$m" -v pw="$pf_wall" -v ow="$ours_wall" -v pc="$pf_cpu" -v oc="$ours_cpu" 'BEGIN {
        label = sprintf("-s %s %s -m %d", s, (mode == "-d") ? "-d" : "(new conn)", m)
        printf "%-22s %12.0f %12.0f %6.2fx %6.2fs %4.0fus %6.2fs %4.0fus\n", label, m / pw, m / ow, pw / ow, pc, pc * 1e6 / m, oc, oc * 1e6 / m
    }'
done
echo "(medians of $RUNS interleaved runs; cpu = user + system of the generator, total and per message)"
