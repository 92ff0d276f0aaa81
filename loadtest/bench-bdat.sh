#!/usr/bin/env bash
# bench-bdat.sh: BDAT against DATA into ringmx (--sync group: every 250 after an fdatasync), in
# the same run, interleaved. Points: 1 KiB and 100 KiB bodies, 20 sessions, reused connections
# (-d), PIPELINING. For each point there are RUNS rounds; each round runs DATA and BDAT once
# (alternating which goes first), each run against a fresh ringmx on an empty spool, driven by
#   smtp-source -s 20 -d -l SIZE --duration SECS [--bdat] -t r@example.test 127.0.0.1:PORT
# Per run: msgs/s and MB/s (acknowledged, wall time, as smtp-source reports them), the server's
# CPU per message (utime + stime of all its threads from /proc/<pid>/stat, read just before and
# after the run) and the client's p99 end of data -> 250. Prints every run and the medians as
# Markdown and writes them to loadtest/results/<date>-bdat.md (or --out FILE).
#
# Usage: loadtest/bench-bdat.sh [--runs N] [--duration SECS] [--out FILE]
# Environment: RINGMX (default target/release/ringmx), SMTP_SOURCE (default
# target/release/smtp-source), PORT (default 2790), REACTORS (default 2).
# Needs: jq. Loopback only; stops every server it starts, also on error or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

RINGMX=${RINGMX:-target/release/ringmx}
SOURCE=${SMTP_SOURCE:-target/release/smtp-source}
PORT=${PORT:-2790}
REACTORS=${REACTORS:-2}
RUNS=5
DURATION=4
OUT=loadtest/results/$(date -u +%Y-%m-%d)-bdat.md
SIZES="1024 102400"
SESSIONS=20

while (($#)); do
    case $1 in
    --runs) RUNS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench-bdat: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

command -v jq >/dev/null || { echo "bench-bdat: jq is needed (apt install jq)" >&2; exit 2; }
for b in "$RINGMX" "$SOURCE"; do
    [[ -x $b ]] || { echo "bench-bdat: $b not found; run: cargo build --release --workspace" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/ringmx-bench-bdat.XXXXXX")
server_pid=""
stop_server() {
    if [[ -n $server_pid ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
CLK_TCK=$(getconf CLK_TCK)

ticks() { # utime + stime of a process (all threads), in clock ticks
    local stat f
    stat=$(cat "/proc/$1/stat")
    read -r -a f <<<"${stat##*) }" # fields from 3 (state) on: utime is f[11], stime f[12]
    echo $((f[11] + f[12]))
}

start_server() {
    rm -rf "$work/spool"
    "$RINGMX" serve --listen "127.0.0.1:$PORT" --domain example.test --hostname mx.example.test \
        --reactors "$REACTORS" --sync group --spool "$work/spool" >/dev/null 2>"$work/server.log" &
    server_pid=$!
    for _ in $(seq 200); do
        grep -q 'ready:' "$work/server.log" && return 0
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "bench-bdat: ringmx did not start:" >&2
    cat "$work/server.log" >&2
    exit 1
}

# One run: prints "msgs_per_s mb_per_s cpu_us_per_msg p99_us".
run_one() { # size mode
    local size=$1 mode=$2 flags=() t0 t1 json
    [[ $mode == BDAT ]] && flags=(--bdat)
    start_server
    t0=$(ticks "$server_pid")
    json=$("$SOURCE" -s "$SESSIONS" -d -l "$size" --duration "$DURATION" "${flags[@]}" \
        -M bench.test -f s@bench.test -t r@example.test --json "127.0.0.1:$PORT") || {
        echo "bench-bdat: smtp-source failed: $json" >&2
        exit 1
    }
    t1=$(ticks "$server_pid")
    stop_server
    jq -r --arg ticks "$((t1 - t0))" --arg hz "$CLK_TCK" '
        [.msgs_per_s, .mb_per_s,
         (($ticks | tonumber) / ($hz | tonumber) * 1e6 / (if .acked > 0 then .acked else 1 end)),
         .latency_us.data_end.p99] | map(. * 10 | round / 10) | @tsv' <<<"$json"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A ROWS=()
for size in $SIZES; do
    for r in $(seq "$RUNS"); do
        if ((r % 2)); then order="DATA BDAT"; else order="BDAT DATA"; fi
        for mode in $order; do
            line=$(run_one "$size" "$mode")
            echo "bench-bdat: $size bytes, $mode, run $r: $line" | tr '\t' ' ' >&2
            ROWS[$size $mode]+="$line"$'\n'
        done
    done
done

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
    echo "# BDAT against DATA into ringmx, $(date -u +%Y-%m-%d)"
    echo
    echo "Machine: $(nproc) cores ($cpu_model), $(uname -sr); load average at the end:"
    echo "$(cut -d' ' -f1-3 /proc/loadavg). ringmx \`--sync group --reactors $REACTORS\`, a fresh spool"
    echo "per run; smtp-source on the same machine; everything on 127.0.0.1."
    echo
    echo "Each run: \`smtp-source -s $SESSIONS -d -l SIZE --duration $DURATION [--bdat] -M bench.test"
    echo "-f s@bench.test -t r@example.test --json 127.0.0.1:$PORT\`. $RUNS runs per mode and size, DATA"
    echo "and BDAT alternating (which goes first swaps every round). Server CPU = utime + stime of"
    echo "all ringmx threads from \`/proc/<pid>/stat\` over the run, per acknowledged message."
    echo "p99 = the client's end of data (BDAT: end of the chunk) -> 250."
    echo
    echo "## Medians"
    echo
    echo "| size | mode | msgs/s | MB/s | server CPU µs/msg | p99 ms |"
    echo "|---:|---|---:|---:|---:|---:|"
    for size in $SIZES; do
        for mode in DATA BDAT; do
            rows=${ROWS[$size $mode]}
            m() { cut -f"$1" <<<"${rows%$'\n'}" | median; }
            printf '| %s | %s | %s | %s | %s | %s |\n' "$size" "$mode" "$(m 1)" "$(m 2)" "$(m 3)" \
                "$(awk '{ printf "%.1f", $1 / 1000 }' <<<"$(m 4)")"
        done
    done
    echo
    echo "## Every run"
    echo
    echo "| size | mode | msgs/s | MB/s | server CPU µs/msg | p99 µs |"
    echo "|---:|---|---:|---:|---:|---:|"
    for size in $SIZES; do
        for mode in DATA BDAT; do
            while IFS=$'\t' read -r a b c d; do
                [[ -n $a ]] && echo "| $size | $mode | $a | $b | $c | $d |"
            done <<<"${ROWS[$size $mode]}"
        done
    done
} >"$work/table.md"
cat "$work/table.md"
mkdir -p "$(dirname "$OUT")"
cp "$work/table.md" "$OUT"
echo "bench-bdat: written to $OUT" >&2
