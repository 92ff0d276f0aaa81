#!/usr/bin/env bash
# compare.sh: ringmx (--sync group, durable) against Postfix's smtp-sink (stores nothing) and,
# when a private instance can run here, Postfix's real smtpd with its queue (hold: every message
# fsync'ed), all on loopback and all driven by our smtp-source, interleaved: for every point
# (size, sessions, reused or new connections) each pass runs every server once, in turn.
#
# For each run: msgs/s and MB/s (acknowledged, wall time), the server's CPU per message (from
# /proc/<pid>/stat, all threads; for Postfix the master, its children, and children it reaped),
# and the p99 latency from the end of data to the 250: ringmx's own figure (`ringmx stats
# --json`) and the client's (smtp-source). Prints one table of medians over the passes and writes
# it to loadtest/results/<date>.md.
#
# Usage: loadtest/compare.sh [--quick] [--servers "ringmx sink postfix"] [--duration SECS]
#                            [--passes N] [--source ours|postfix] [--sizes "1024 102400"]
#                            [--sessions "1 10 50"] [--modes "reuse new"]
#
# --source postfix drives every server with Postfix's own smtp-source (/usr/sbin/smtp-source,
# no PIPELINING, as most senders): a fixed message count per run (about DURATION seconds at the
# first server's rate), timed from outside; the client p99 is then not known ("-").
# --tls: every session does STARTTLS (our smtp-source with --starttls --tls-insecure; a
# self-signed ECDSA P-256 certificate made with openssl): ringmx gets --tls-cert/--tls-key,
# the private Postfix smtpd_tls_security_level = may with the same certificate. smtp-sink and
# ringmx-base (which may predate STARTTLS) are skipped. With --modes new, every message pays a
# handshake: msgs/s are handshakes/s and the CPU per message includes one handshake.
# The server "ringmx-1r" is ringmx with --reactors 1 (one reactor thread, like the one smtp-sink
# process: on a small machine the load generator keeps a core of its own).
# The server "ringmx-base" is a second ringmx binary (RINGMX_BASE, e.g. an earlier build), run
# exactly like "ringmx", so a change can be measured against its baseline in the same run.
# Environment: RINGMX (default target/release/ringmx), SMTP_SOURCE (default
# target/release/smtp-source), SMTP_SINK (default /usr/sbin/smtp-sink), PORT_BASE (default
# 2650: ringmx, +1 sink, +2 postfix, +3 ringmx-base, +4 ringmx-1r), REACTORS (default: number of cores),
# RINGMX_BASE (the binary of the server "ringmx-base"), RINGMX_ARGS (more `serve` flags for the
# servers "ringmx" and "ringmx-1r", split on blanks: e.g. RINGMX_BASE=target/release/ringmx and
# RINGMX_ARGS="--recipients FILE --max-message-rate 1000000" measure a feature's cost).
# Needs: jq; Postfix (apt install postfix) for the sink and smtpd; root for the smtpd instance.
set -euo pipefail
cd "$(dirname "$0")/.."

RINGMX=${RINGMX:-target/release/ringmx}
SOURCE=${SMTP_SOURCE:-target/release/smtp-source}
SINK_BIN=${SMTP_SINK:-/usr/sbin/smtp-sink}
PORT_BASE=${PORT_BASE:-2650}
REACTORS=${REACTORS:-$(nproc)}
DOMAIN=example.test
SERVERS="ringmx sink postfix"
SIZES="1024 4096 102400"
SESSIONS="1 20 50"
MODES="reuse new"
DURATION=3
PASSES=2
BYTES_PER_RUN=$((1024 * 1024 * 1024)) # cap on message bytes per run (disk space)
QUICK=0
SOURCE_KIND=ours
TLS=0
PF_SOURCE=${PF_SOURCE:-/usr/sbin/smtp-source}
RINGMX_BASE=${RINGMX_BASE:-}
read -r -a RINGMX_EXTRA <<<"${RINGMX_ARGS:-}"

ARGS="$*"
while (($#)); do
    case $1 in
    --quick) QUICK=1 SIZES="1024 102400" SESSIONS="20" MODES="reuse new" DURATION=1 PASSES=1 ;;
    --servers) SERVERS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --passes) PASSES=$2; shift ;;
    --source) SOURCE_KIND=$2; shift ;;
    --tls) TLS=1 ;;
    --sizes) SIZES=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --modes) MODES=$2; shift ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "compare: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

command -v jq >/dev/null || { echo "compare: jq is needed (apt install jq)" >&2; exit 2; }
[[ -x $SOURCE ]] || { echo "compare: $SOURCE not found; run: cargo build --release --workspace" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ringmx-compare.XXXXXX")
chmod 755 "$work" # Postfix's unprivileged daemons must reach their queue inside it
declare -A PID=() PORT=()
TLS_ARGS=()
SOURCE_TLS=()
if ((TLS)); then
    [[ $SOURCE_KIND == ours ]] || { echo "compare: --tls needs --source ours" >&2; exit 2; }
    command -v openssl >/dev/null || { echo "compare: --tls needs openssl" >&2; exit 2; }
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=mx.$DOMAIN" -addext "subjectAltName=DNS:mx.$DOMAIN" \
        -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
    chmod 644 "$work/key.pem" # Postfix's smtpd reads it as its own user
    TLS_ARGS=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
    SOURCE_TLS=(--starttls --tls-insecure)
fi
PORT[ringmx]=$PORT_BASE
PORT[sink]=$((PORT_BASE + 1))
PORT[postfix]=$((PORT_BASE + 2))
PORT[ringmx-base]=$((PORT_BASE + 3))
PORT[ringmx-1r]=$((PORT_BASE + 4))
PF=$work/postfix # private Postfix instance: config, queue, data, log
CLK_TCK=$(getconf CLK_TCK)

cleanup() {
    for s in "${!PID[@]}"; do stop_server "$s"; done
    if [[ -n ${COMPARE_KEEP:-} ]]; then echo "compare: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

wait_port() { # port pid
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# ---- servers -------------------------------------------------------------------------------

postfix_setup() {
    [[ $(id -u) -eq 0 && -x /usr/sbin/postfix && -d /usr/lib/postfix/sbin ]] || return 1
    mkdir -p "$PF/etc" "$PF/queue" "$PF/data"
    chown postfix: "$PF/data" || return 1
    # Only the services smtpd + cleanup need; the listener is ours, on loopback.
    cat >"$PF/etc/master.cf" <<EOF
127.0.0.1:${PORT[postfix]} inet n - n - - smtpd
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
discard   unix - - n - - discard
error     unix - - n - - error
retry     unix - - n - - error
postlog   unix-dgram n - n - 1 postlogd
EOF
    cat >"$PF/etc/main.cf" <<EOF
# Benchmark instance made by loadtest/compare.sh: loopback only, nothing leaves the box.
compatibility_level = 3.6
queue_directory = $PF/queue
data_directory = $PF/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.$DOMAIN
mydestination = $DOMAIN
mynetworks = 127.0.0.0/8
local_recipient_maps =
alias_maps =
alias_database =
default_transport = discard:bench
local_transport = discard:bench
relay_transport = discard:bench
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
# Park every message in the hold queue: smtpd + cleanup + fsync, and qmgr never runs it.
smtpd_data_restrictions = check_client_access static:HOLD
in_flow_delay = 0
maillog_file_prefixes = $PF
maillog_file = $PF/maillog
EOF
    if ((TLS)); then
        echo "tlsmgr    unix - - n 1000? 1 tlsmgr" >>"$PF/etc/master.cf"
        cat >>"$PF/etc/main.cf" <<EOF
smtpd_tls_security_level = may
smtpd_tls_cert_file = $work/cert.pem
smtpd_tls_key_file = $work/key.pem
smtpd_tls_session_cache_database =
EOF
    fi
    postfix -c "$PF/etc" check >"$PF/setup.log" 2>&1
}

proc_ticks() { # pid [with-reaped-children]: utime + stime (+ cutime + cstime) in clock ticks
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    read -r -a f <<<"${stat##*) }" # fields from 3 (state) on: utime is f[11]
    if [[ ${2:-} == with-reaped ]]; then
        echo $((f[11] + f[12] + f[13] + f[14]))
    else
        echo $((f[11] + f[12]))
    fi
}

server_ticks() { # server
    local s=$1 total child
    if [[ $s == postfix ]]; then
        total=$(proc_ticks "${PID[postfix]}" with-reaped)
        for child in $(pgrep -P "${PID[postfix]}" || true); do
            total=$((total + $(proc_ticks "$child")))
        done
        echo "$total"
    else
        proc_ticks "${PID[$s]}"
    fi
}

start_server() { # server
    local s=$1
    case $s in
    ringmx | ringmx-base | ringmx-1r)
        local bin=$RINGMX reactors=$REACTORS
        [[ $s == ringmx-base ]] && bin=$RINGMX_BASE
        [[ $s == ringmx-1r ]] && reactors=1
        [[ -n $bin && -x $bin ]] || { echo "compare: no binary for $s (${bin:-set RINGMX_BASE})" >&2; return 1; }
        local extra=()
        [[ $s == ringmx || $s == ringmx-1r ]] && extra=("${RINGMX_EXTRA[@]}")
        rm -rf "$work/$s-spool"
        mkdir -p "$work/$s-spool"
        "$bin" serve --listen "127.0.0.1:${PORT[$s]}" --domain "$DOMAIN" \
            --spool "$work/$s-spool" --stats "$work/$s.stats" --reactors "$reactors" \
            --sync group "${TLS_ARGS[@]}" "${extra[@]}" >>"$work/$s.log" 2>&1 &
        PID[$s]=$!
        ;;
    sink)
        [[ -x $SINK_BIN ]] || { echo "compare: $SINK_BIN not found (apt install postfix)" >&2; return 1; }
        local user=nobody
        [[ $(id -u) -eq 0 ]] || user=$(id -un)
        "$SINK_BIN" -u "$user" -m 1024 "127.0.0.1:${PORT[sink]}" 1024 >>"$work/sink.log" 2>&1 &
        PID[sink]=$!
        ;;
    postfix)
        if [[ ! -f $PF/etc/main.cf ]] && ! postfix_setup; then
            echo "compare: cannot run a private Postfix instance here (needs root and postfix); skipping smtpd" >&2
            return 1
        fi
        if ! postfix -c "$PF/etc" start >>"$PF/setup.log" 2>&1; then
            echo "compare: postfix did not start:" >&2; cat "$PF/setup.log" >&2; return 1
        fi
        for _ in $(seq 50); do [[ -s $PF/queue/pid/master.pid ]] && break; sleep 0.1; done
        PID[postfix]=$(tr -d ' ' <"$PF/queue/pid/master.pid")
        ;;
    esac
    wait_port "${PORT[$s]}" "${PID[$s]}" || { echo "compare: $s did not start" >&2; stop_server "$s"; return 1; }
}

stop_server() { # server
    local s=$1 pid=${PID[$1]:-}
    [[ -n $pid ]] || return 0
    if [[ $s == postfix ]]; then
        postfix -c "$PF/etc" stop >>"$PF/setup.log" 2>&1 || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    else
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    unset "PID[$s]"
}

# Before each run: an empty store, so runs do not pile up on disk.
reset_server() { # server
    case $1 in
    ringmx | ringmx-base | ringmx-1r) stop_server "$1"; start_server "$1" ;;
    postfix) postsuper -c "$PF/etc" -d ALL >/dev/null 2>&1 || true ;;
    esac
}

ringmx_p99() { # server: p99 end-of-data -> 250 in microseconds from ringmx's stats, or "-"
    local j
    j=$("$RINGMX" stats --stats "$work/$1.stats" --json 2>/dev/null) || { echo -; return; }
    jq -r '.total.ack_latency_us.p99 // "-"' <<<"$j" 2>/dev/null || echo -
}

# Postfix's smtp-source, timed from outside; prints the same JSON fields the table reads. The
# message count of a point is fixed by its first run (about DURATION seconds at that rate).
declare -A PF_COUNT=()
postfix_source() { # server sessions size mode cap
    local s=$1 sessions=$2 size=$3 mode=$4 cap=$5 key="$2/$3/$4" n t0 t1 rc=0 flags=()
    [[ $mode == reuse ]] && flags=(-d)
    n=${PF_COUNT[$key]:-$((sessions * 200))}
    ((n > cap)) && n=$cap
    t0=$(date +%s%N)
    timeout 300 "$PF_SOURCE" -s "$sessions" -m "$n" -l "$size" "${flags[@]}" -M src.test \
        -f sender@src.test -t "rcpt@$DOMAIN" "127.0.0.1:${PORT[$s]}" >/dev/null 2>&1 || rc=$?
    t1=$(date +%s%N)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", (b - a) / 1e9 }')
    if [[ -z ${PF_COUNT[$key]:-} ]]; then
        PF_COUNT[$key]=$(awk -v n="$n" -v t="$secs" -v d="$DURATION" 'BEGIN { c = int(n / t * d); if (c < 200) c = 200; print c }')
    fi
    local failed=0
    ((rc == 0)) || failed=$n
    jq -n --argjson n "$n" --argjson secs "$secs" --argjson sessions "$sessions" --argjson size "$size" \
        --argjson failed "$failed" '{sessions: $sessions, acked: ($n - $failed), failed: $failed,
        msgs_per_s: (($n - $failed) / $secs), mb_per_s: (($n - $failed) * $size / $secs / 1e6),
        latency_us: {data_end: {p99: null}}}'
}

# ---- runs ----------------------------------------------------------------------------------

active=()
for s in $SERVERS; do
    if ((TLS)) && [[ $s == sink || $s == ringmx-base ]]; then
        echo "compare: --tls: skipping $s (no STARTTLS)" >&2
        continue
    fi
    if start_server "$s"; then active+=("$s"); fi
done
((${#active[@]})) || { echo "compare: no server could be started" >&2; exit 1; }
echo "compare: servers ${active[*]}; sizes $SIZES; sessions $SESSIONS; $MODES; ${DURATION}s runs, $PASSES passes"

raw=$work/raw.tsv
for size in $SIZES; do
    for sessions in $SESSIONS; do
        for mode in $MODES; do
            conn=(-d)
            [[ $mode == new ]] && conn=()
            cap=$((BYTES_PER_RUN / size))
            for pass in $(seq "$PASSES"); do
                for s in "${active[@]}"; do
                    reset_server "$s" || { echo "compare: $s failed to restart" >&2; exit 1; }
                    t0=$(server_ticks "$s")
                    if [[ $SOURCE_KIND == postfix ]]; then
                        out=$(postfix_source "$s" "$sessions" "$size" "$mode" "$cap")
                    else
                        out=$("$SOURCE" -s "$sessions" -m "$cap" --duration "$DURATION" -l "$size" \
                            "${conn[@]}" "${SOURCE_TLS[@]}" -M src.test -f sender@src.test -t "rcpt@$DOMAIN" --timeout 10 \
                            --json "127.0.0.1:${PORT[$s]}" 2>/dev/null) || true
                    fi
                    t1=$(server_ticks "$s")
                    if [[ -z $out ]]; then
                        echo "compare: smtp-source produced no report against $s" >&2; exit 1
                    fi
                    p99s=-
                    [[ $s == ringmx* ]] && p99s=$(ringmx_p99 "$s")
                    jq -r --arg s "$s" --arg size "$size" --arg mode "$mode" --arg ticks $((t1 - t0)) \
                        --arg hz "$CLK_TCK" --arg p99s "$p99s" --arg pass "$pass" '
                        [$s, $size, .sessions, $mode, $pass, .acked, .failed,
                         .msgs_per_s, .mb_per_s,
                         (if .acked > 0 then ($ticks|tonumber) / ($hz|tonumber) * 1e6 / .acked else 0 end),
                         $p99s, .latency_us.data_end.p99] | @tsv' <<<"$out" >>"$raw"
                    tail -n1 "$raw" | awk -F'\t' '{ printf "  %-8s %6s B  s=%-3s %-5s pass %s: %8.0f msgs/s  %7.1f MB/s  %7.1f us cpu/msg  failed %s\n", $1, $2, $3, $4, $5, $8, $9, $10, $7 }'
                done
            done
        done
    done
done

# ---- table ---------------------------------------------------------------------------------

table=$work/table.md
{
    echo "| size | sessions | conn | server | msgs/s | MB/s | server CPU us/msg | p99 ack us (server) | p99 ack us (client) | failed |"
    echo "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"
    # Median over passes of each column, per (size, sessions, mode, server).
    sort -t$'\t' -k2,2n -k3,3n -k4,4r -k1,1 "$raw" | awk -F'\t' '
        function median(list,   n, a, i, j, t) {
            n = split(list, a, " ")
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function flush() {
            if (key == "") return
            p99s = (srv == "-") ? "-" : sprintf("%.0f", median(srv))
            p99c = (cli ~ /[0-9]/) ? sprintf("%.0f", median(cli)) : "-"
            printf "| %d | %d | %s | %s | %.0f | %.1f | %.1f | %s | %s | %d |\n", sz, ss, md, sv, median(rate), median(mb), median(cpu), p99s, p99c, failed
        }
        {
            k = $2 SUBSEP $3 SUBSEP $4 SUBSEP $1
            if (k != key) { flush(); key = k; rate = mb = cpu = cli = srv = ""; failed = 0; sv = $1; sz = $2; ss = $3; md = $4 }
            rate = rate " " $8; mb = mb " " $9; cpu = cpu " " $10; failed += $7
            if ($12 != "" && $12 != "null") cli = cli " " $12
            srv = ($11 == "-") ? "-" : srv " " $11
        }
        END { flush() }'
} >"$table"

mkdir -p loadtest/results
stamp=$(date +%F)
result=loadtest/results/$stamp.md
((QUICK)) && result=loadtest/results/$stamp-quick.md
[[ $SOURCE_KIND == postfix ]] && result=${result%.md}-postfix-source.md
((TLS)) && result=${result%.md}-tls.md
[[ -e $result ]] && result=${result%.md}-$(date +%H%M).md
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
    echo "# ringmx vs Postfix, $(date -u '+%F %H:%M UTC')"
    echo
    echo "Machine: $(nproc) cores ($cpu_model), $(uname -sr). Everything on 127.0.0.1; the load"
    if [[ $SOURCE_KIND == postfix ]]; then
        echo "generator (Postfix's smtp-source, no PIPELINING) shares the cores with the server."
    else
        echo "generator (smtp-source from this repository) shares the cores with the server."
    fi
    echo
    ((TLS)) && echo "- STARTTLS on every session (TLS 1.3 negotiated by ringmx; Postfix: its default), self-signed ECDSA P-256 certificate."
    echo "- ringmx: \`ringmx serve --sync group --reactors $REACTORS${RINGMX_ARGS:+ $RINGMX_ARGS}\` (durable: 250 after the spool's group fsync), fresh spool per run."
    [[ " $SERVERS " == *" ringmx-1r "* ]] && echo "- ringmx-1r: the same with \`--reactors 1\`: one reactor thread, like the one smtp-sink process, so the load generator keeps the other core."
    [[ -n $RINGMX_BASE ]] && echo "- ringmx-base: the same, with the baseline binary ($(basename "$RINGMX_BASE"): $("$RINGMX_BASE" --version 2>/dev/null))."
    echo "- sink: Postfix \`smtp-sink -m 1024\` (stores nothing, one process)."
    echo "- postfix: Postfix smtpd + cleanup, private instance, every message fsync'ed into the hold queue."
    echo
    if [[ $SOURCE_KIND == postfix ]]; then
        echo "Each run: \`/usr/sbin/smtp-source -s S -m N -l SIZE [-d] -M src.test -f sender@src.test -t rcpt@$DOMAIN\`, N fixed per point (about ${DURATION}s), timed from outside"
    else
        echo "Each run: \`smtp-source -s S --duration $DURATION -l SIZE [-d] -M src.test -f sender@src.test -t rcpt@$DOMAIN --json\`"
    fi
    echo "(at most $BYTES_PER_RUN message bytes per run). Medians of $PASSES interleaved passes."
    echo "Server CPU from /proc/<pid>/stat (utime + stime, all threads; Postfix: master, children"
    echo "and reaped children). p99 ack: end of data to 250; server = \`ringmx stats --json\`,"
    echo "client = smtp-source. Command: \`loadtest/compare.sh $ARGS\`."
    echo
    cat "$table"
} >"$result"
echo
cat "$table"
echo
echo "compare: written to $result"
