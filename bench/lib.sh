# Shared helpers for bench/proxy.sh and bench/auth.sh. Source it; do not run it.
#
# Everything lives in one temp dir ($BENCH_DIR) and every process started here is recorded
# in $BENCH_PIDS and killed on exit, by PID. Only loopback addresses are used, and every
# port is picked by the kernel (bind to port 0), never assumed.

set -euo pipefail

BENCH_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_SRC/.." && pwd)

# Knobs (environment; see README.md): durations in seconds. proxy.sh and auth.sh set their own
# DURATION (and auth.sh its WRK_TIMEOUT) before sourcing this file.
DURATION=${DURATION:-10}          # each measured wrk run
WARMUP=${WARMUP:-2}               # unmeasured wrk run before a contender's first measured run
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
WRK_TIMEOUT=${WRK_TIMEOUT:-5s}    # wrk counts slower responses as timeouts
ACCESS_LOG=${ACCESS_LOG:-on}      # on: guard, nginx and caddy all write an access log to a file; off: none does
KEEP=${KEEP:-0}                   # 1: keep $BENCH_DIR (configs, logs) after the run

for tool in wrk nginx caddy openssl curl python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is not installed" >&2; exit 2; }
done

BENCH_DIR=$(mktemp -d /tmp/guard-bench.XXXXXX)
BENCH_PIDS=()

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${BENCH_PIDS[@]}"; do stop_pid "$pid"; done
    if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
        echo "bench: logs and configs kept in $BENCH_DIR" >&2
    else
        rm -rf "$BENCH_DIR"
    fi
    exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }

# The binary under test: a private copy, so a concurrent `cargo build` cannot swap it mid-run.
GUARD_SRC_BIN=${GUARD_BIN:-$REPO/target/dist/guard}
[ -x "$GUARD_SRC_BIN" ] || die "no guard binary at $GUARD_SRC_BIN (cd $REPO && cargo build --profile dist --bin guard)"
cp "$GUARD_SRC_BIN" "$BENCH_DIR/guard"
GUARD="$BENCH_DIR/guard"

# Children of a PID (nginx master -> workers).
child_pids() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

# Stops one process we started, and its direct children: TERM, then KILL after 3 s.
stop_pid() {
    local pid=$1 kids i
    kill -0 "$pid" 2>/dev/null || return 0
    kids=$(child_pids "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
}

# A free port on 127.0.0.1 below the kernel's ephemeral range, so that no port-0 bind or
# outgoing connection can be handed it before the program it is meant for binds it.
free_port() {
    python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
while True:
    port = random.randrange(20000, low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
PY
}

# VmRSS of one PID, in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# VmRSS of a PID plus its direct children (nginx master + workers), in KiB.
tree_rss_kib() {
    local total pid
    total=$(rss_kib "$1")
    for pid in $(child_pids "$1"); do total=$((total + $(rss_kib "$pid"))); done
    echo "$total"
}
# CPU time (user + system) of a PID plus its direct children, in clock ticks.
CLK_TCK=$(getconf CLK_TCK)
tree_cpu_ticks() {
    local total=0 pid
    for pid in "$1" $(child_pids "$1"); do
        total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0)))
    done
    echo "$total"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k/1024}'; }

# Waits until URL answers with HTTP status $2 (default 200), for at most $3 s (default 10);
# gives up early when process $4 (if given) has exited.
wait_http() {
    local url=$1 want=${2:-200} limit=${3:-10} pid=${4:-} i code
    for i in $(seq $((limit * 10))); do
        [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && return 1
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "$url" 2>/dev/null || true)
        [ "$code" = "$want" ] && return 0
        sleep 0.1
    done
    return 1
}

# --- certificates -------------------------------------------------------------------------

# One test CA and one ECDSA P-256 leaf for 127.0.0.1/localhost, shared by every contender.
make_certs() {
    local d=$BENCH_DIR/certs
    mkdir -p "$d"
    (
        cd "$d"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj "/CN=guard bench CA" -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout leaf.key -out leaf.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >ext.cnf
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -extfile ext.cnf -out leaf.pem 2>/dev/null
    ) || die "openssl could not make the test certificate"
    CERT=$d/leaf.pem
    KEY=$d/leaf.key
    CA=$d/ca.pem
}

# --- the upstream: nginx, plain HTTP, a fixed 1 KiB body ----------------------------------

# nginx as root would switch its workers to `nobody`, who cannot read our 0700 temp dir.
nginx_user_line() { [ "$(id -u)" = 0 ] && echo "user $(id -un) $(id -gn);" || true; }

nginx_common() { # $1 = dir
    cat <<EOF
$(nginx_user_line)
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; }
EOF
}
nginx_temp_paths() { # $1 = dir
    cat <<EOF
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
EOF
}

# Starts nginx with prefix dir $1 (nginx.conf already written); sets LAST_PID.
start_nginx_dir() {
    local d=$1
    nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -t -q 2>"$d/configtest.log" \
        || { cat "$d/configtest.log" >&2; die "nginx rejects $d/nginx.conf"; }
    nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' >"$d/stdout.log" 2>&1 &
    LAST_PID=$!
    BENCH_PIDS+=("$LAST_PID")
}

# start_upstream [NAME [PORTS]]: one more upstream (dir upstream-NAME) when NAME is given, for
# benchmarks with several, listening on PORTS ports (default 1) with one worker; sets
# UPSTREAM_PORT (the first), UPSTREAM_PORTS (all) and UPSTREAM_PID.
start_upstream() {
    local d=$BENCH_DIR/upstream${1:+-$1} n=${2:-1} i listen=""
    mkdir -p "$d/tmp"
    UPSTREAM_PORTS=()
    for i in $(seq "$n"); do
        UPSTREAM_PORTS+=("$(free_port)")
        listen+="        listen 127.0.0.1:${UPSTREAM_PORTS[-1]} reuseport backlog=4096;"$'\n'
    done
    UPSTREAM_PORT=${UPSTREAM_PORTS[0]}
    # 1 KiB body: 1023 characters + newline.
    local body
    body=$(head -c 1023 /dev/zero | tr '\0' 'x')
    cat >"$d/nginx.conf" <<EOF
$(nginx_common "$d")
worker_processes 1;
http {
    access_log off;
$(nginx_temp_paths "$d")
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {
$listen        location / {
            default_type text/plain;
            return 200 "$body\n";
        }
    }
}
EOF
    start_nginx_dir "$d"
    UPSTREAM_PID=$LAST_PID
    wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 200 10 "$UPSTREAM_PID" || { cat "$d"/*.log >&2; die "upstream nginx did not start"; }
    log "upstream nginx (plain HTTP, 1 KiB body) on 127.0.0.1:${UPSTREAM_PORTS[*]}"
}

# --- guard ---------------------------------------------------------------------------------

# start_guard NAME [extra guard serve args...]; sets GUARD_PORT_<NAME>, GUARD_PID_<NAME>, LAST_PORT, LAST_PID.
# GUARD_WRAPPER (an array, e.g. a valgrind command line) runs guard under another program;
# GUARD_START_SECS (default 10) is how long it may take to start; GUARD_UPSTREAMS (an array of
# HOST:PORT) replaces the one upstream started by start_upstream, one --upstream flag each.
GUARD_WRAPPER=()
GUARD_START_SECS=10
GUARD_UPSTREAMS=()
start_guard() {
    local name=$1; shift
    local d=$BENCH_DIR/guard-$name
    mkdir -p "$d/state"
    local env_log=()
    [ "$ACCESS_LOG" = off ] && env_log=(GUARD_LOG="info,guard::access=off")
    local up up_args=()
    for up in "${GUARD_UPSTREAMS[@]}"; do up_args+=(--upstream "$up"); done
    ((${#up_args[@]})) || up_args=(--upstream "127.0.0.1:$UPSTREAM_PORT")
    : >"$d/stdout.log" # exists before the poll below reads it (the child opens it a bit later)
    env "${env_log[@]}" "${GUARD_WRAPPER[@]}" "$GUARD" serve "${up_args[@]}" --listen 127.0.0.1:0 \
        --tls-cert "$CERT" --tls-key "$KEY" --state-dir "$d/state" "$@" \
        >"$d/stdout.log" 2>"$d/stderr.log" &
    LAST_PID=$!
    BENCH_PIDS+=("$LAST_PID")
    local i addr=
    for i in $(seq $((GUARD_START_SECS * 10))); do
        addr=$(sed -n 's/^guard: listening on \([0-9.]*:[0-9]*\).*/\1/p' "$d/stdout.log" | head -1) || true
        [ -n "$addr" ] && break
        kill -0 "$LAST_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        cat "$d/stdout.log" "$d/stderr.log" >&2
        die "guard ($name) did not start: $GUARD serve ... $*"
    fi
    LAST_PORT=${addr##*:}
    wait_http "https://127.0.0.1:$LAST_PORT/_guard/health" 200 "$GUARD_START_SECS" "$LAST_PID" \
        || { cat "$d/stderr.log" >&2; die "guard ($name) does not answer /_guard/health"; }
    log "guard $name on 127.0.0.1:$LAST_PORT (pid $LAST_PID) $*"
}

# --- nginx as the TLS proxy ----------------------------------------------------------------

# start_nginx_proxy NAME [htpasswd file]; sets LAST_PORT, LAST_PID.
start_nginx_proxy() {
    local name=$1 users=${2:-}
    local d=$BENCH_DIR/nginx-$name
    mkdir -p "$d/tmp"
    LAST_PORT=$(free_port)
    local auth="" alog="access_log off;"
    [ -n "$users" ] && auth="auth_basic \"bench\"; auth_basic_user_file $users;"
    [ "$ACCESS_LOG" = on ] && alog="access_log $d/access.log combined;"
    cat >"$d/nginx.conf" <<EOF
$(nginx_common "$d")
worker_processes auto;
http {
    $alog
$(nginx_temp_paths "$d")
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream up {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$LAST_PORT ssl backlog=4096;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            $auth
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    start_nginx_dir "$d"
    local want=200
    [ -n "$users" ] && want=401
    wait_http "https://127.0.0.1:$LAST_PORT/" "$want" 10 "$LAST_PID" || { cat "$d"/*.log >&2; die "nginx ($name) did not start"; }
    log "nginx $name on 127.0.0.1:$LAST_PORT (pid $LAST_PID)"
}

# --- caddy as the TLS proxy ----------------------------------------------------------------

# start_caddy NAME [user bcrypt-hash]; sets LAST_PORT, LAST_PID.
start_caddy() {
    local name=$1 user=${2:-} hash=${3:-}
    local d=$BENCH_DIR/caddy-$name
    mkdir -p "$d/data" "$d/config" "$d/home"
    LAST_PORT=$(free_port)
    local auth="" alog=""
    # Caddy 2.6 takes the bcrypt hash as is (a hash starting with `$` is not base64-decoded).
    [ -n "$user" ] && auth="basicauth {
        $user $hash
    }"
    [ "$ACCESS_LOG" = on ] && alog="log {
        output file $d/access.log
    }"
    # Both names: wrk sends Host 127.0.0.1:PORT, the Python clients send Host localhost. An
    # unmatched Host would get Caddy's empty 200 without reaching basicauth or the proxy.
    cat >"$d/Caddyfile" <<EOF
{
    admin off
    auto_https off
    skip_install_trust
    servers {
        protocols h1 h2
    }
}
https://127.0.0.1:$LAST_PORT, https://localhost:$LAST_PORT {
    bind 127.0.0.1
    tls $CERT $KEY
    $alog
    $auth
    reverse_proxy 127.0.0.1:$UPSTREAM_PORT
}
EOF
    XDG_DATA_HOME=$d/data XDG_CONFIG_HOME=$d/config HOME=$d/home \
        caddy run --config "$d/Caddyfile" --adapter caddyfile >"$d/stdout.log" 2>"$d/stderr.log" &
    LAST_PID=$!
    BENCH_PIDS+=("$LAST_PID")
    local want=200
    [ -n "$user" ] && want=401
    wait_http "https://127.0.0.1:$LAST_PORT/" "$want" 15 "$LAST_PID" || { cat "$d"/*.log >&2; die "caddy ($name) did not start"; }
    log "caddy $name on 127.0.0.1:$LAST_PORT (pid $LAST_PID)"
}

# --- wrk -------------------------------------------------------------------------------------

# run_wrk URL [extra wrk args...]: a warmup run, then the measured run. Prints one line:
#   rps good_rps p50_ms p99_ms requests non2xx timeouts sockerr cpu_us_per_request
# good_rps counts only responses below 400. cpu_us_per_request is the CPU time the server
# (CPU_PID and its children, if CPU_PID is set; else 0) spent during the measured run, divided
# by the requests wrk completed: less sensitive than req/s to other load on the machine.
run_wrk() {
    local url=$1; shift
    local out t0=0 t1=0
    if [ "$WARMUP" != 0 ]; then
        timeout $((WARMUP + 20)) wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" --timeout "$WRK_TIMEOUT" "$@" "$url" >/dev/null 2>&1 || true
    fi
    [ -n "${CPU_PID:-}" ] && t0=$(tree_cpu_ticks "$CPU_PID")
    out=$(timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout "$WRK_TIMEOUT" \
        -s "$BENCH_SRC/report.lua" "$@" "$url" 2>&1) || true
    [ -n "${CPU_PID:-}" ] && t1=$(tree_cpu_ticks "$CPU_PID")
    local line
    line=$(printf '%s\n' "$out" | sed -n 's/^RESULT //p' | tail -1)
    if [ -z "$line" ]; then
        printf '%s\n' "$out" >&2
        echo "0 0 0 0 0 0 0 0 0"
        return
    fi
    echo "$line $(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$(echo "$line" | awk '{print $5}')" \
        'BEGIN { if (n > 0) printf "%.1f", d * 1e6 / hz / n; else print 0 }')"
}

# --- callgrind -------------------------------------------------------------------------------

# callgrind_count NAME PID PORT: the instructions per request of the callgrind-run server PID on
# PORT (its profile is $BENCH_DIR/callgrind.NAME.*), into IPR[NAME], the requests into REQS[NAME].
declare -A REQS=() IPR=()
callgrind_count() {
    local name=$1 pid=$2 port=$3 out=$BENCH_DIR/callgrind.$1
    wrk -t1 -c8 -d3s "https://127.0.0.1:$port/" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    wrk -t1 -c8 -d"${DURATION}s" "https://127.0.0.1:$port/" >"$BENCH_DIR/wrk-$name.out"
    callgrind_control -d "$pid" >/dev/null
    REQS[$name]=$(awk '/requests in/ {print $1}' "$BENCH_DIR/wrk-$name.out")
    local file total
    # The dump asked for above is the newest file of this server's profile; callgrind adds up
    # all of guard's threads in it. `summary:` is the total callgrind_annotate prints.
    for _ in $(seq 50); do
        file=$(ls -t "$out".* 2>/dev/null | head -1 || true)
        [ -n "$file" ] && grep -q '^summary:' "$file" && break
        sleep 0.2
    done
    total=$(awk '/^summary:/ {print $2}' "$file")
    [ -n "$total" ] && [ "${REQS[$name]:-0}" -gt 0 ] || die "no count for $name (see $BENCH_DIR)"
    IPR[$name]=$((total / REQS[$name]))
    log "$name: ${REQS[$name]} requests, $total instructions"
}

fmt_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else printf "n/a" }'; }
