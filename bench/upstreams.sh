#!/usr/bin/env bash
# Issue 17 benchmark: several upstreams behind one guard. Two tables from one invocation:
#
#   1. MLflow, read-heavy: search_runs and get_run through guard (bench/mlflow_reads.py,
#      MLFLOW_THREADS keep-alive sessions) to 1, 2 and 3 `mlflow server`s over one PostgreSQL;
#      requests/s per row and its ratio to the 1-server row.
#   2. guard's own cost (`static`): wrk through guard to 1 and to 3 fast static upstreams (nginx,
#      1 KiB body, one worker each, as proxy.sh's), req/s and guard's CPU per request, and their
#      ratios to the 1-upstream row (target: within 5 %).
#   3. the same cost counted (`instructions`): guard alone under callgrind, as instructions.sh
#      runs it, instructions per request to 1 and to 3 of those upstreams; steady where req/s
#      and CPU seconds on a shared machine are not.
#
# Usage: bench/upstreams.sh   (knobs: DURATION WARMUP THREADS CONNS ROUNDS ACCESS_LOG KEEP GUARD_BIN
#                              MLFLOW_THREADS MLFLOW_SECS MLFLOW_ROUNDS SEED_RUNS GUARD_VENV PARTS; see
#                              bench/README.md). Exits non-zero if a server fails to start.
DURATION=${DURATION:-5}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
MLFLOW_THREADS=${MLFLOW_THREADS:-8}
MLFLOW_SECS=${MLFLOW_SECS:-10}
MLFLOW_ROUNDS=${MLFLOW_ROUNDS:-2}
SEED_RUNS=${SEED_RUNS:-200}
MLFLOW_UVICORN_OPTS=${MLFLOW_UVICORN_OPTS:-}   # e.g. "--timeout-keep-alive 75" (uvicorn's default: 5 s)
GUARD_VENV=${GUARD_VENV:-/opt/guard-venv}
PARTS=${PARTS:-mlflow static instructions}   # which tables (see the top)
want() { [[ " $PARTS " == *" $1 "* ]]; }
VENV_PY=$GUARD_VENV/bin/python
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if want instructions; then
    for tool in valgrind callgrind_control; do
        command -v "$tool" >/dev/null || { echo "bench: $tool is not installed (Debian: valgrind)" >&2; exit 2; }
    done
fi
if want mlflow; then
    [ -x "$GUARD_VENV/bin/mlflow" ] || die "no mlflow in $GUARD_VENV (.ci/run installs it; or set GUARD_VENV)"
    [ -x "$PG_BIN/postgres" ] || { echo "bench: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 2; }
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
make_certs
RES=$BENCH_DIR/results
mkdir -p "$RES"

if want mlflow; then
# --- PostgreSQL and three MLflow servers ---------------------------------------------------

# initdb and postgres refuse root: as root they run as nobody, who may pass through (not list)
# the 0700 temp dir to the cluster's own directory.
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chmod 711 "$BENCH_DIR"
    as_pg=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
fi
PGD=$BENCH_DIR/pg
mkdir -p "$PGD"
[ "$(id -u)" = 0 ] && chown nobody:nogroup "$PGD"
"${as_pg[@]}" "$PG_BIN/initdb" -D "$PGD/data" -A trust -U mlflow -E UTF8 --no-sync >"$BENCH_DIR/initdb.log" 2>&1 \
    || { cat "$BENCH_DIR/initdb.log" >&2; die "initdb failed"; }
PG_PORT=$(free_port)
"${as_pg[@]}" "$PG_BIN/postgres" -D "$PGD/data" -k "$PGD" -p "$PG_PORT" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c synchronous_commit=off -c max_connections=200 >"$BENCH_DIR/postgres.log" 2>&1 &
BENCH_PIDS+=("$!")
for _ in $(seq 100); do grep -q "ready to accept connections" "$BENCH_DIR/postgres.log" && break; sleep 0.1; done
grep -q "ready to accept connections" "$BENCH_DIR/postgres.log" || { cat "$BENCH_DIR/postgres.log" >&2; die "postgres did not start"; }
"$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U mlflow -d postgres -qc "CREATE DATABASE mlflow" >/dev/null
# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the venv has psycopg2-binary.
PG_URI="postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow"
log "postgres $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"

mlflow_env=(env -i PATH="$GUARD_VENV/bin:/usr/bin:/bin" HOME="$BENCH_DIR/mlflow-home" LANG=C.UTF-8
    MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false)
mkdir -p "$BENCH_DIR/mlflow-home" "$BENCH_DIR/artifacts"
"${mlflow_env[@]}" "$GUARD_VENV/bin/mlflow" db upgrade "$PG_URI" >"$BENCH_DIR/db-upgrade.log" 2>&1 \
    || { tail -20 "$BENCH_DIR/db-upgrade.log" >&2; die "mlflow db upgrade failed"; }
MLFLOW_PORTS=()
for i in 1 2 3; do
    port=$(free_port)
    # One uvicorn worker each, as in tests/scale_out.rs: a server is one process, so N servers
    # are N processes' worth of Python.
    "${mlflow_env[@]}" "$GUARD_VENV/bin/mlflow" server --host 127.0.0.1 --port "$port" --workers 1 \
        --backend-store-uri "$PG_URI" --artifacts-destination "$BENCH_DIR/artifacts" --serve-artifacts \
        ${MLFLOW_UVICORN_OPTS:+--uvicorn-opts "$MLFLOW_UVICORN_OPTS"} >"$BENCH_DIR/mlflow-$i.log" 2>&1 &
    BENCH_PIDS+=("$!")
    MLFLOW_PORTS+=("$port")
done
for i in 1 2 3; do
    wait_http "http://127.0.0.1:${MLFLOW_PORTS[$((i - 1))]}/health" 200 120 \
        || { tail -30 "$BENCH_DIR/mlflow-$i.log" >&2; die "mlflow server $i did not start"; }
done
log "mlflow servers on ${MLFLOW_PORTS[*]}"
"$VENV_PY" "$BENCH_SRC/mlflow_reads.py" seed "http://127.0.0.1:${MLFLOW_PORTS[0]}" "$SEED_RUNS" "$BENCH_DIR/seed" \
    || die "seeding MLflow failed"

"$GUARD" adduser bench --users "$BENCH_DIR/users" --password-stdin --cost 4 <<<"bench-password" >/dev/null 2>&1 \
    || die "guard adduser failed"

# --- 1. MLflow reads through guard to 1, 2, 3 servers ----------------------------------------
for n in 1 2 3; do
    GUARD_UPSTREAMS=()
    for p in "${MLFLOW_PORTS[@]:0:$n}"; do GUARD_UPSTREAMS+=("127.0.0.1:$p"); done
    start_guard "mlflow-$n" --users "$BENCH_DIR/users" --lockout-failures 0
    url="https://localhost:$LAST_PORT"
    for round in $(seq "$MLFLOW_ROUNDS"); do
        log "mlflow reads via guard to $n server(s), round $round"
        [ "$round" = 1 ] && "$VENV_PY" "$BENCH_SRC/mlflow_reads.py" read "$url" "$CA" bench bench-password \
            "$BENCH_DIR/seed" "$MLFLOW_THREADS" 2 >/dev/null
        "$VENV_PY" "$BENCH_SRC/mlflow_reads.py" read "$url" "$CA" bench bench-password "$BENCH_DIR/seed" \
            "$MLFLOW_THREADS" "$MLFLOW_SECS" | sed -n 's/^RESULT //p' >>"$RES/mlflow-$n"
    done
    stop_pid "$LAST_PID"
done

fi

STATIC=()
if want static; then
# --- 2. guard's cost with 1 and with 3 static upstreams --------------------------------------
for i in 1 2 3; do
    start_upstream "static-$i"
    STATIC+=("127.0.0.1:$UPSTREAM_PORT")
done
declare -A GPID GPORT
GUARD_UPSTREAMS=("${STATIC[0]}")
start_guard static-1 --dangerous-no-auth
GPID[one]=$LAST_PID; GPORT[one]=$LAST_PORT
GUARD_UPSTREAMS=("${STATIC[@]}")
start_guard static-3 --dangerous-no-auth --metrics-listen 127.0.0.1:0
GPID[three]=$LAST_PID; GPORT[three]=$LAST_PORT
start_guard static-3-lc --dangerous-no-auth --upstream-balance least_connections --metrics-listen 127.0.0.1:0
GPID[three_lc]=$LAST_PID; GPORT[three_lc]=$LAST_PORT
# The control: three upstreams that are three ports of one nginx worker, so the upstream side is
# the same single process as in the 1-upstream row and only guard's side differs.
start_upstream static-ports 3
GUARD_UPSTREAMS=()
for p in "${UPSTREAM_PORTS[@]}"; do GUARD_UPSTREAMS+=("127.0.0.1:$p"); done
start_guard static-3-ports --dangerous-no-auth
GPID[three_ports]=$LAST_PID; GPORT[three_ports]=$LAST_PORT
CONTENDERS=(one three three_lc three_ports)
for round in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((${#CONTENDERS[@]} - 1))); do
        c=${CONTENDERS[$(((i + round - 1) % ${#CONTENDERS[@]}))]}
        log "round $round: guard $c"
        warm=$WARMUP
        [ "$round" -gt 1 ] && warm=0
        WARMUP=$warm CPU_PID=${GPID[$c]} run_wrk "https://127.0.0.1:${GPORT[$c]}/" >>"$RES/static-$c"
    done
done
fi

if want instructions; then
    if ((${#STATIC[@]} == 0)); then
        for i in 1 2 3; do
            start_upstream "static-$i"
            STATIC+=("127.0.0.1:$UPSTREAM_PORT")
        done
    fi
    GUARD_START_SECS=60
    for c in one three; do
        GUARD_UPSTREAMS=("${STATIC[0]}")
        [ "$c" = three ] && GUARD_UPSTREAMS=("${STATIC[@]}")
        GUARD_WRAPPER=(valgrind --tool=callgrind --callgrind-out-file="$BENCH_DIR/callgrind.$c.%p")
        start_guard "callgrind-$c" --dangerous-no-auth
        log "guard to ${#GUARD_UPSTREAMS[@]} upstream(s) under callgrind"
        callgrind_count "$c" "$LAST_PID" "$LAST_PORT"
        stop_pid "$LAST_PID"
    done
    GUARD_WRAPPER=()
fi

if want static; then
# The static nginx upstreams log nothing; guard's per-upstream counters show each had its share.
split_of() { # NAME: guard_upstream_requests_total of guard NAME, "upstream=count" per upstream
    local addr
    addr=$(sed -n 's|^guard: metrics on http://\([^/]*\)/metrics.*|\1|p' "$BENCH_DIR/guard-$1/stdout.log" | head -1)
    curl -s --max-time 5 "http://$addr/metrics" | awk '/^guard_upstream_requests_total\{/ {
        match($0, /upstream="[^"]*"/); printf "%s=%s ", substr($0, RSTART + 10, RLENGTH - 11), $NF }'
}
SPLIT_THREE=$(split_of static-3)
SPLIT_THREE_LC=$(split_of static-3-lc)
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -----------------------------------------------------------------------------------
echo "## bench/upstreams.sh  $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "guard $("$GUARD" --version | awk '{print $2}') ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')), $(want mlflow && echo "mlflow $("$VENV_PY" -c 'import mlflow; print(mlflow.__version__)'), postgres $("$PG_BIN/postgres" --version | awk '{print $3}'), ")$(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}'); $(nproc) cores"
echo "load average before: $LOAD_BEFORE, after: $LOAD_AFTER; access logs: $ACCESS_LOG"
echo
if want mlflow; then
echo "MLflow reads through guard (Basic auth, cached): $MLFLOW_THREADS threads of keep-alive requests,"
echo "search_runs (20 of $SEED_RUNS runs) and get_run alternating, ${MLFLOW_SECS}s per round, $MLFLOW_ROUNDS rounds"
echo "(median shown, each round in brackets); every mlflow server: 1 uvicorn worker, one PostgreSQL"
echo
python3 - "$RES" <<'EOF'
import os, statistics, sys
res = sys.argv[1]
rows = {}
for n in (1, 2, 3):
    runs = [list(map(float, l.split())) for l in open(os.path.join(res, f"mlflow-{n}")) if l.strip()]
    med = lambda i: statistics.median(r[i] for r in runs)
    rows[n] = (med(0), med(1), med(2), sum(r[4] for r in runs), [r[0] for r in runs])
base = rows[1][0]
print("| mlflow servers | req/s | p50 ms | p99 ms | errors | ÷ 1 server |")
print("|---:|---:|---:|---:|---:|---:|")
for n, (rps, p50, p99, err, each) in rows.items():
    b = f" ({', '.join(f'{x:.0f}' for x in each)})" if len(each) > 1 else ""
    print(f"| {n} | {rps:.0f}{b} | {p50:.1f} | {p99:.1f} | {int(err)} | {rps / base:.2f} |")
EOF
echo
fi
if want static; then
echo "guard's own cost: wrk -t$THREADS -c$CONNS --timeout $WRK_TIMEOUT, keep-alive, HTTP/1.1 over TLS, 1 KiB"
echo "response, --dangerous-no-auth; static upstreams are nginx (1 worker each; the last row's are 3 ports of one);"
echo "$ROUNDS rounds of ${DURATION}s in rotating order after one ${WARMUP}s warmup each; median shown, each round's req/s in brackets"
echo
python3 - "$RES" <<'EOF'
import os, statistics, sys
res = sys.argv[1]
names = {"one": "guard → 1 upstream", "three": "guard → 3 upstreams (round robin)",
         "three_lc": "guard → 3 upstreams (least_connections)",
         "three_ports": "guard → 3 ports of one nginx (round robin)"}
rows = {}
for c in names:
    runs = [list(map(float, l.split())) for l in open(os.path.join(res, f"static-{c}")) if l.strip()]
    med = lambda i: statistics.median(r[i] for r in runs)
    rows[c] = (med(1), med(2), med(3), sum(r[5] + r[6] + r[7] for r in runs), [r[1] for r in runs], med(8))
rps1, cpu1 = rows["one"][0], rows["one"][5]
print("| guard | req/s | p50 ms | p99 ms | errors | req/s ÷ 1 upstream | guard CPU µs/req | CPU ÷ 1 upstream |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for c, (rps, p50, p99, err, each, cpu) in rows.items():
    b = f" ({', '.join(f'{x:.0f}' for x in each)})" if len(each) > 1 else ""
    r = f"{rps / rps1:.2f}" if rps1 else "n/a"
    cr = f"{cpu / cpu1:.2f}" if cpu1 else "n/a"
    print(f"| {names[c]} | {rps:.0f}{b} | {p50:.2f} | {p99:.2f} | {int(err)} | {r} | {cpu:.1f} | {cr} |")
ok = lambda v: "ok" if v else "MISSED"
print()
# Against three nginx processes the upstream side differs too (three processes on the same 2
# cores); three ports of one nginx worker leave only guard's side different.
for c, what in (("three_ports", "guard's own cost, 3 ports of one nginx"), ("three", "3 nginx processes")):
    rps, cpu = rows[c][0], rows[c][5]
    print(f"target, 3 upstreams within 5 % of 1 ({what}): req/s {ok(rps >= 0.95 * rps1)} ({rps / rps1:.3f}×), "
          f"CPU per request {ok(cpu <= 1.05 * cpu1)} ({cpu / cpu1:.3f}×)")
EOF
echo
echo "requests per upstream (guard_upstream_requests_total): round robin: ${SPLIT_THREE:-none reported};"
echo "least_connections: ${SPLIT_THREE_LC:-none reported}"
fi
if want instructions; then
    echo
    echo "guard alone under callgrind (as bench/instructions.sh): wrk -t1 -c8 over TLS, keep-alive, 1 KiB"
    echo "response, --dangerous-no-auth; ${DURATION}s counted after 3s of warmup"
    echo
    echo "| guard | requests counted | instructions per request | ÷ 1 upstream |"
    echo "|---|---:|---:|---:|"
    for c in one three; do
        printf '| guard → %s | %s | %s | %s |\n' "$([ $c = one ] && echo "1 upstream" || echo "3 upstreams (round robin)")" \
            "${REQS[$c]}" "${IPR[$c]}" "$(awk -v a="${IPR[$c]}" -v b="${IPR[one]}" 'BEGIN {printf "%.3f", a / b}')"
    done
fi
