#!/usr/bin/env bash
# Issue 2 benchmark: how much does guard cost in front of the upstream, next to nginx and Caddy?
#
# Side by side in one invocation, same wrk settings for all (keep-alive, default -t2 -c64):
#   upstream  nginx on plain HTTP, a fixed 1 KiB body (the ceiling: no TLS, no proxy hop)
#   guard     TLS, --dangerous-no-auth, proxying to the upstream
#   nginx     TLS, proxy_pass to an upstream{} block with keepalive 64, HTTP/1.1
#   caddy     TLS, reverse_proxy to the upstream
# then guard's (and, for context, nginx's and Caddy's) resident memory idle and with 1,000
# open keep-alive TLS connections.
#
# Usage: bench/proxy.sh   (knobs: DURATION WARMUP THREADS CONNS ROUNDS ACCESS_LOG KEEP GUARD_BIN;
#                          see bench/README.md). Exits non-zero if a contender fails to start.
DURATION=${DURATION:-5}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
HOLD_CONNS=${HOLD_CONNS:-1000}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
make_certs
start_upstream

declare -A PORT PID URL
PID[upstream]=$UPSTREAM_PID
start_guard noauth --dangerous-no-auth
PORT[guard]=$LAST_PORT; PID[guard]=$LAST_PID
start_nginx_proxy noauth
PORT[nginx]=$LAST_PORT; PID[nginx]=$LAST_PID
start_caddy noauth
PORT[caddy]=$LAST_PORT; PID[caddy]=$LAST_PID
URL[upstream]="http://127.0.0.1:$UPSTREAM_PORT/"
for c in guard nginx caddy; do URL[$c]="https://127.0.0.1:${PORT[$c]}/"; done

sleep 1
declare -A RSS_IDLE RSS_HOLD RSS_PEAK RSS_AFTER HELD
for c in guard nginx caddy; do RSS_IDLE[$c]=$(tree_rss_kib "${PID[$c]}"); done
GUARD_IDLE_SPLIT=$(awk '/^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} END {printf "anonymous %.1f MiB, file-backed (binary and libc pages) %.1f MiB", a/1024, f/1024}' "/proc/${PID[guard]}/status")

# --- throughput ---------------------------------------------------------------------------
RES=$BENCH_DIR/results
mkdir -p "$RES"
CONTENDERS=(upstream guard nginx caddy)
for round in $(seq "$ROUNDS"); do
    # Rotate the order each round so no contender always runs first or last.
    for i in $(seq 0 $((${#CONTENDERS[@]} - 1))); do
        c=${CONTENDERS[$(((i + round - 1) % ${#CONTENDERS[@]}))]}
        log "round $round: $c"
        warm=$WARMUP
        [ "$round" -gt 1 ] && warm=0   # the servers stay up: one warmup each is enough
        WARMUP=$warm CPU_PID=${PID[$c]} run_wrk "${URL[$c]}" >>"$RES/$c"
    done
done

# --- memory -------------------------------------------------------------------------------
for c in guard nginx caddy; do
    log "memory: $c with $HOLD_CONNS idle keep-alive TLS connections"
    out=$BENCH_DIR/conns-$c.out
    timeout 120 python3 "$BENCH_SRC/conns.py" "${PORT[$c]}" -n "$HOLD_CONNS" --hold 6 >"$out" 2>"$out.err" &
    cpid=$!
    BENCH_PIDS+=("$cpid")
    for _ in $(seq 600); do grep -q '^READY' "$out" && break; kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
    grep -q '^READY' "$out" || { cat "$out" "$out.err" >&2; die "conns.py could not open connections to $c"; }
    sleep 1
    HELD[$c]=$(ss -Htn state established "( sport = :${PORT[$c]} )" | wc -l)
    peak=0
    for _ in 1 2 3 4; do r=$(tree_rss_kib "${PID[$c]}"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.25; done
    RSS_HOLD[$c]=$peak
    [ "$(awk '{print $2}' "$out")" = "$HOLD_CONNS" ] || log "only $(cat "$out") connections opened to $c"
    wait "$cpid" || true

    log "memory: $c under wrk -c$HOLD_CONNS"
    timeout 40 wrk -t"$THREADS" -c"$HOLD_CONNS" -d5s --timeout "$WRK_TIMEOUT" "${URL[$c]}" >"$BENCH_DIR/wrk1000-$c.out" 2>&1 &
    wpid=$!
    BENCH_PIDS+=("$wpid")
    peak=0
    while kill -0 "$wpid" 2>/dev/null; do
        r=$(tree_rss_kib "${PID[$c]}"); [ "$r" -gt "$peak" ] && peak=$r
        sleep 0.2
    done
    RSS_PEAK[$c]=$peak
    sleep 2
    RSS_AFTER[$c]=$(tree_rss_kib "${PID[$c]}")
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -------------------------------------------------------------------------------
echo "## bench/proxy.sh  $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "guard $("$GUARD" --version | awk '{print $2}') ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')), $(nginx -v 2>&1 | sed 's/.*: //'), caddy $(caddy version | awk '{print $1}'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}'); $(nproc) cores"
echo "wrk -t$THREADS -c$CONNS --timeout $WRK_TIMEOUT, keep-alive, HTTP/1.1, 1 KiB response: $ROUNDS rounds of ${DURATION}s in"
echo "rotating order after one ${WARMUP}s warmup each; median shown, each round's req/s in brackets"
echo "access logs: $ACCESS_LOG (guard, nginx, caddy alike); load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
echo
python3 - "$RES" <<'EOF'
import statistics, sys, os
res = sys.argv[1]
rows = {}
for c in ["upstream", "guard", "nginx", "caddy"]:
    runs = [list(map(float, l.split())) for l in open(os.path.join(res, c)) if l.strip()]
    med = lambda i: statistics.median(r[i] for r in runs)
    errors = sum(r[5] + r[6] + r[7] for r in runs)
    rows[c] = (med(1), med(2), med(3), errors, [r[1] for r in runs], med(8))
names = {"upstream": "upstream direct (plain HTTP)", "guard": "guard (TLS, --dangerous-no-auth)",
         "nginx": "nginx (TLS, proxy_pass keepalive)", "caddy": "caddy (TLS, reverse_proxy)"}
ng = rows["nginx"][0]
ngcpu = rows["nginx"][5]
print("| contender | req/s | p50 ms | p99 ms | errors | req/s ÷ nginx | server CPU µs/req | CPU ÷ nginx |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for c, (rps, p50, p99, err, allr, cpu) in rows.items():
    ratio = f"{rps / ng:.2f}" if ng > 0 else "n/a"
    cratio = f"{cpu / ngcpu:.2f}" if ngcpu > 0 else "n/a"
    each = "" if len(allr) == 1 else " (" + ", ".join(f"{x:.0f}" for x in allr) + ")"
    print(f"| {names[c]} | {rps:.0f}{each} | {p50:.2f} | {p99:.2f} | {int(err)} | {ratio} | {cpu:.0f} | {cratio} |")
EOF
echo
echo "Resident memory (VmRSS; nginx = master + workers). 'held' = $HOLD_CONNS idle keep-alive TLS"
echo "connections opened by bench/conns.py, one request served on each, sampled 1 s after the last"
echo "opened; 'under load' = peak sampled every 0.2 s during wrk -t$THREADS -c$HOLD_CONNS -d5s."
echo
echo "| server | idle at start | $HOLD_CONNS held (established) | under load, peak | idle after |"
echo "|---|---:|---:|---:|---:|"
for c in guard nginx caddy; do
    printf '| %s | %s MiB | %s MiB (%s) | %s MiB | %s MiB |\n' "$c" "$(mib "${RSS_IDLE[$c]}")" \
        "$(mib "${RSS_HOLD[$c]}")" "${HELD[$c]}" "$(mib "${RSS_PEAK[$c]}")" "$(mib "${RSS_AFTER[$c]}")"
done
echo
echo "guard idle at start: $GUARD_IDLE_SPLIT"
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v < t * 1024) ? "ok" : "MISSED" }'; }
echo "guard targets: idle < 10 MiB: $(verdict "${RSS_IDLE[guard]}" 10) ($(mib "${RSS_IDLE[guard]}") MiB);" \
    "$HOLD_CONNS connections < 64 MiB: $(verdict "${RSS_HOLD[guard]}" 64) held ($(mib "${RSS_HOLD[guard]}") MiB)," \
    "$(verdict "${RSS_PEAK[guard]}" 64) under load ($(mib "${RSS_PEAK[guard]}") MiB)"
