#!/usr/bin/env bash
# Instructions per proxied request, guard against nginx, counted by callgrind.
#
# req/s and CPU seconds on a shared 2-core VM move by ±20–30 % from minute to minute; the number
# of instructions a server executes per request does not (valgrind counts them whatever else the
# machine does). This is the measure to settle a small difference between two builds. It says
# nothing about cycles per instruction (cache misses, cross-core traffic), so confirm a change
# with bench/proxy.sh too.
#
# Each server runs alone under `valgrind --tool=callgrind` (guard with its worker threads, nginx
# as one process: `master_process off`, one worker), proxying to the same plain-HTTP upstream as
# proxy.sh, with its access log on unless ACCESS_LOG=off. wrk -t1 -c8 warms it for 3 s; the
# counters are zeroed, wrk runs DURATION seconds more, the counters are dumped, and the
# instructions of that window are divided by the requests wrk completed in it.
#
# Usage: bench/instructions.sh   (knobs: DURATION (10), ACCESS_LOG, KEEP, GUARD_BIN)
DURATION=${DURATION:-10}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for tool in valgrind callgrind_control; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is not installed (Debian: valgrind)" >&2; exit 2; }
done

make_certs
start_upstream

# --- guard ---------------------------------------------------------------------------------
GUARD_WRAPPER=(valgrind --tool=callgrind --callgrind-out-file="$BENCH_DIR/callgrind.guard.%p")
GUARD_START_SECS=60
start_guard callgrind --dangerous-no-auth
callgrind_count guard "$LAST_PID" "$LAST_PORT"
stop_pid "$LAST_PID"

# --- nginx: proxy.sh's configuration, one process -------------------------------------------
start_nginx_proxy callgrind
NPORT=$LAST_PORT
stop_pid "$LAST_PID"
d=$BENCH_DIR/nginx-callgrind
sed -i 's/^worker_processes auto;/worker_processes 1;\nmaster_process off;/' "$d/nginx.conf"
valgrind --tool=callgrind --callgrind-out-file="$BENCH_DIR/callgrind.nginx.%p" \
    nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' >"$d/valgrind.log" 2>&1 &
NPID=$!
BENCH_PIDS+=("$NPID")
wait_http "https://127.0.0.1:$NPORT/" 200 60 "$NPID" || { cat "$d/valgrind.log" "$d/error.log" >&2; die "nginx did not start under valgrind"; }
log "nginx under callgrind on 127.0.0.1:$NPORT"
callgrind_count nginx "$NPID" "$NPORT"
stop_pid "$NPID"

# --- report -------------------------------------------------------------------------------
echo "## bench/instructions.sh  $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "guard $("$GUARD" --version | awk '{print $2}') ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')), $(nginx -v 2>&1 | sed 's/.*: //'), $(valgrind --version)"
echo "each server alone under callgrind; wrk -t1 -c8 over TLS, keep-alive, 1 KiB response;"
echo "${DURATION}s counted after 3s of warmup; access logs: $ACCESS_LOG"
echo
echo "| server | requests counted | instructions per request | ÷ nginx |"
echo "|---|---:|---:|---:|"
for c in guard nginx; do
    printf '| %s | %s | %s | %s |\n' "$c" "${REQS[$c]}" "${IPR[$c]}" \
        "$(awk -v a="${IPR[$c]}" -v b="${IPR[nginx]}" 'BEGIN {printf "%.2f", a / b}')"
done
