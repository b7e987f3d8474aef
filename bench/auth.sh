#!/usr/bin/env bash
# Issue 3 benchmark: what does authentication cost, and does it survive a password flood?
#
# One users file, one bcrypt cost-12 user made by `htpasswd -nbB -C 12`, shared by guard,
# nginx (auth_basic_user_file) and Caddy (basicauth takes the same $2y$ hash).
#
# Part 1, throughput: wrk -t2 -c64 with the correct `Authorization: Basic` header on every
# request (what the MLflow client does), side by side: guard without and with auth, guard with
# a browser's session cookie instead (signed in once on its page, no Authorization), the same
# guard with a JWT access token from an identity provider (tests/browser's oidc-provider, a
# client-credentials token; the row is left out when Node.js or `npm ci` is missing), nginx
# without auth and with auth_basic, Caddy without auth and with basicauth.
#
# Part 2, flood: 32 attacker addresses 127.0.0.2..127.0.0.33, 4 keep-alive connections each,
# a new wrong password on every request (bench/flood.py), while one correct-password wrk
# client runs from 127.0.0.1. Its req/s during the flood as a % of its undisturbed req/s, for
# guard (default lockout: 10 failures/min -> 429), guard --lockout-failures 0 (the bcrypt
# pool alone), nginx auth_basic and Caddy basicauth. Each flood gets fresh server processes.
#
# Usage: bench/auth.sh   (knobs: DURATION ROUNDS WARMUP THREADS CONNS NGINX_AUTH_SECS CALM_SECS
#                         FLOOD_SECS FLOOD_ROUNDS FLOOD_NICE FLOOD_ADDRS FLOOD_CONNS VICTIM_THREADS VICTIM_CONNS ACCESS_LOG
#                         KEEP GUARD_BIN; see bench/README.md)
# Exits non-zero if a contender fails to start or rejects the correct password.
WRK_TIMEOUT=${WRK_TIMEOUT:-30s} # nginx auth_basic answers in seconds: record those, do not drop them
DURATION=${DURATION:-5}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v htpasswd >/dev/null || { echo "bench: htpasswd (apache2-utils) is not installed" >&2; exit 2; }

ROUNDS=${ROUNDS:-3}
NGINX_AUTH_SECS=${NGINX_AUTH_SECS:-10}
CALM_SECS=${CALM_SECS:-8}
FLOOD_SECS=${FLOOD_SECS:-15}
FLOOD_ROUNDS=${FLOOD_ROUNDS:-2}   # undisturbed + flood pairs for each guard configuration
FLOOD_NICE=${FLOOD_NICE:-0}       # niceness of the attack client, which shares the CPUs
FLOOD_ADDRS=${FLOOD_ADDRS:-32}
FLOOD_CONNS=${FLOOD_CONNS:-4}
VICTIM_THREADS=${VICTIM_THREADS:-1}
VICTIM_CONNS=${VICTIM_CONNS:-8}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
make_certs
start_upstream

USER_NAME=bench
PASSWORD=$(openssl rand -hex 12)
USERS=$BENCH_DIR/users.htpasswd
htpasswd -nbB -C 12 "$USER_NAME" "$PASSWORD" | sed '/^$/d' >"$USERS"
HASH=$(cut -d: -f2- "$USERS")
AUTH_HEADER="Authorization: Basic $(printf '%s:%s' "$USER_NAME" "$PASSWORD" | base64 -w0)"
log "users file: $(cut -c1-20 "$USERS")... (bcrypt cost 12)"

# The server at $1 must refuse no and wrong credentials (401) and accept the right ones (200).
check_auth() {
    local name=$1 url=$2 code
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 "$url")
    [ "$code" = 401 ] || die "$name: no credentials gave $code, not 401"
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 -u "$USER_NAME:not-the-password" "$url")
    [ "$code" = 401 ] || die "$name: a wrong password gave $code, not 401"
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 -H "$AUTH_HEADER" "$url")
    [ "$code" = 200 ] || die "$name: the correct password gave $code, not 200 (see its logs in $BENCH_DIR)"
}

# Signs in on guard's page as a browser does; prints the Cookie header value it would send.
sign_in() {
    local url=$1 jar=$BENCH_DIR/cookies csrf session
    curl -sk -c "$jar" -o /dev/null -H 'Accept: text/html' "${url}_guard/login"
    csrf=$(awk '$6 == "__Host-guard_login" {print $7}' "$jar")
    curl -sk -b "$jar" -c "$jar" -o /dev/null -H "Origin: ${url%/}" --data-urlencode "user=$USER_NAME" \
        --data-urlencode "password=$PASSWORD" --data-urlencode "csrf=$csrf" "${url}_guard/login"
    session=$(awk '$6 == "__Host-guard_session" {print $7}' "$jar")
    [ -n "$session" ] || die "signing in on ${url}_guard/login set no session cookie"
    printf 'Cookie: __Host-guard_session=%s; mlflow_user=%s' "$session" "$USER_NAME"
}

declare -A PORT PID URL HDR
start_one() { # start_one KEY kind [args]
    local key=$1 kind=$2; shift 2
    case $kind in
        guard) start_guard "$key" "$@" ;;
        nginx) start_nginx_proxy "$key" "$@" ;;
        caddy) start_caddy "$key" "$@" ;;
    esac
    PORT[$key]=$LAST_PORT; PID[$key]=$LAST_PID; URL[$key]="https://127.0.0.1:$LAST_PORT/"
}

# An identity provider for the JWT row: the one the tests use, when Node.js and its packages are
# installed. guard-auth then accepts its tokens too (auth.jwt, from a file: no flag for it).
JWT_CFG=()
if command -v node >/dev/null && [ -d "$REPO/tests/browser/node_modules/oidc-provider" ]; then
    KEYS=$BENCH_DIR/idp-keys.json PORT=0 node "$REPO/tests/browser/oidc-provider.mjs" >"$BENCH_DIR/idp.out" 2>"$BENCH_DIR/idp.err" &
    BENCH_PIDS+=("$!")
    for _ in $(seq 100); do [ -s "$BENCH_DIR/idp.out" ] && break; sleep 0.1; done
    ISSUER=$(sed -n 's/.*"issuer":"\([^"]*\)".*/\1/p' "$BENCH_DIR/idp.out")
    [ -n "$ISSUER" ] || die "the OIDC provider did not start (see $BENCH_DIR/idp.err)"
    printf 'auth:\n  jwt:\n    - issuer: %s\n      audiences: [https://mlflow.test]\n' "$ISSUER" >"$BENCH_DIR/jwt.yaml"
    JWT_CFG=(--config "$BENCH_DIR/jwt.yaml")
    log "OIDC provider at $ISSUER"
else
    log "no Node.js or tests/browser/node_modules (npm ci there): no JWT row"
fi

# --- part 1: throughput ---------------------------------------------------------------------
start_one guard-noauth guard --dangerous-no-auth
start_one guard-auth guard --users "$USERS" "${JWT_CFG[@]}"
start_one nginx-noauth nginx
start_one nginx-auth nginx "$USERS"
start_one caddy-noauth caddy
start_one caddy-auth caddy "$USER_NAME" "$HASH"
for k in guard-auth nginx-auth caddy-auth; do check_auth "$k" "${URL[$k]}"; done
# The same guard, reached with a session cookie instead of the password.
URL[guard-session]=${URL[guard-auth]}; PID[guard-session]=${PID[guard-auth]}
HDR[guard-session]=$(sign_in "${URL[guard-auth]}")
code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 -H "${HDR[guard-session]}" "${URL[guard-session]}")
[ "$code" = 200 ] || die "guard-session: the session cookie gave $code, not 200"
ROTATION=(guard-noauth guard-auth guard-session nginx-noauth caddy-noauth caddy-auth)
# And with a JWT (valid 10 minutes, longer than the throughput part runs).
if [ -n "${JWT_CFG[*]}" ]; then
    URL[guard-jwt]=${URL[guard-auth]}; PID[guard-jwt]=${PID[guard-auth]}
    TOKEN=$(curl -s --max-time 10 -u ci-machine:ci-machine-secret -d grant_type=client_credentials -d scope=mlflow \
        -d resource=https://mlflow.test "$ISSUER/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
    [ -n "$TOKEN" ] || die "the OIDC provider gave no access token"
    HDR[guard-jwt]="Authorization: Bearer $TOKEN"
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 -H "${HDR[guard-jwt]}" "${URL[guard-jwt]}")
    [ "$code" = 200 ] || die "guard-jwt: the provider's token gave $code, not 200"
    ROTATION+=(guard-jwt)
fi

RES=$BENCH_DIR/results
mkdir -p "$RES"
# Rounds in rotating order, so background load on a shared machine hits every contender; the
# report shows the median. The warmup runs in round 1 only (the servers stay up).
for round in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((${#ROTATION[@]} - 1))); do
        k=${ROTATION[$(((i + round - 1) % ${#ROTATION[@]}))]}
        log "throughput round $round: $k"
        warm=$WARMUP
        [ "$round" -gt 1 ] && warm=0
        WARMUP=$warm CPU_PID=${PID[$k]} run_wrk "${URL[$k]}" -H "${HDR[$k]:-$AUTH_HEADER}" >>"$RES/$k"
    done
done
# nginx-auth once, last, with no warmup, and stopped right after: it has no cache, so every
# request is a bcrypt check (~0.5 s) inside a worker's event loop, and the checks still queued
# when wrk stops would burn both cores through whatever ran next.
log "throughput: nginx-auth (one ${NGINX_AUTH_SECS}s run)"
WARMUP=0 DURATION=$NGINX_AUTH_SECS CPU_PID=${PID[nginx-auth]} run_wrk "${URL[nginx-auth]}" -H "$AUTH_HEADER" >"$RES/nginx-auth"
for k in "${ROTATION[@]}" nginx-auth; do
    case $k in guard-session | guard-jwt) ;; *) stop_pid "${PID[$k]}" ;; esac
done

# --- part 2: flood ----------------------------------------------------------------------------
FLOOD_KEYS=(flood-guard flood-guard-nolockout flood-nginx flood-caddy)
run_flood() { # run_flood KEY ROUNDS
    local key=$1 rounds=$2 fpid round warm
    check_auth "$key" "${URL[$key]}"
    for round in $(seq "$rounds"); do
        log "flood: $key round $round undisturbed"
        warm=$WARMUP
        # nginx: a warmup would leave a bcrypt backlog; later rounds: the server is warm.
        [ "$key" = flood-nginx ] || [ "$round" -gt 1 ] && warm=0
        WARMUP=$warm DURATION=$CALM_SECS THREADS=$VICTIM_THREADS CONNS=$VICTIM_CONNS \
            run_wrk "${URL[$key]}" -H "$AUTH_HEADER" >>"$RES/$key.calm"
        log "flood: $key round $round under attack ($FLOOD_ADDRS addresses x $FLOOD_CONNS connections)"
        timeout $((FLOOD_SECS + 30)) nice -n "$FLOOD_NICE" python3 "$BENCH_SRC/flood.py" "${PORT[$key]}" \
            --user "$USER_NAME" --addrs "$FLOOD_ADDRS" --conns "$FLOOD_CONNS" --duration $((FLOOD_SECS + 3)) \
            >>"$RES/$key.attack" 2>"$RES/$key.attack.err" &
        fpid=$!
        BENCH_PIDS+=("$fpid")
        sleep 2
        THREADS=$VICTIM_THREADS CONNS=$VICTIM_CONNS WARMUP=0 DURATION=$FLOOD_SECS \
            run_wrk "${URL[$key]}" -H "$AUTH_HEADER" >>"$RES/$key.flood"
        wait "$fpid" || true
        [ "$(grep -c . "$RES/$key.attack")" = "$round" ] \
            || { cat "$RES/$key.attack.err" >&2; die "flood.py failed against $key"; }
        # A wrong password must never get a 2xx: that would mean the flood missed the auth check.
        ! grep -q '"2[0-9][0-9]"' "$RES/$key.attack" || die "$key answered a wrong password with 2xx: $(cat "$RES/$key.attack")"
        # guard drops queued checks when the attackers hang up; give it a second to settle.
        sleep 1
    done
    stop_pid "${PID[$key]}"
}
start_one flood-guard guard --users "$USERS"
run_flood flood-guard "$FLOOD_ROUNDS"
start_one flood-guard-nolockout guard --users "$USERS" --lockout-failures 0
run_flood flood-guard-nolockout "$FLOOD_ROUNDS"
start_one flood-nginx nginx "$USERS"
run_flood flood-nginx 1   # nginx and Caddy keep checking queued passwords after the attackers
start_one flood-caddy caddy "$USER_NAME" "$HASH"
run_flood flood-caddy 1   # hang up, which would spoil a next round: one round, then stopped
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -----------------------------------------------------------------------------------
echo "## bench/auth.sh  $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "guard $("$GUARD" --version | awk '{print $2}') ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')), $(nginx -v 2>&1 | sed 's/.*: //'), caddy $(caddy version | awk '{print $1}'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}'); $(nproc) cores"
echo "one user, bcrypt cost 12 (htpasswd -nbB -C 12), correct Basic credentials on every request"
echo "access logs: $ACCESS_LOG (guard, nginx, caddy alike); load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
echo
echo "### Throughput: wrk -t$THREADS -c$CONNS --timeout $WRK_TIMEOUT, keep-alive: $ROUNDS rounds of ${DURATION}s in rotating order"
echo "### (after one ${WARMUP}s warmup), median shown, each round in brackets; nginx auth_basic: one ${NGINX_AUTH_SECS}s run at the end"
echo
python3 - "$RES" "$FLOOD_ADDRS" "$FLOOD_CONNS" "$VICTIM_THREADS" "$VICTIM_CONNS" "$FLOOD_SECS" "$CALM_SECS" \
    "$FLOOD_ROUNDS" "$FLOOD_NICE" <<'EOF'
import collections, json, os, statistics, sys
res, addrs, conns, vt, vc, secs, calm_secs, rounds, nice = sys.argv[1:]
def runs(name):
    return [list(map(float, l.split())) for l in open(os.path.join(res, name)) if l.strip()]
def load(name):
    rs = runs(name)
    med = [statistics.median(r[i] for r in rs) for i in range(5)]
    return med + [sum(r[i] for r in rs) for i in (5, 6, 7)] + [[r[1] for r in rs], statistics.median(r[8] for r in rs)]
names = {"guard-noauth": "guard, no auth", "guard-auth": "guard, Basic auth",
         "guard-session": "guard, session cookie", "guard-jwt": "guard, JWT bearer (cached)",
         "nginx-noauth": "nginx, no auth", "nginx-auth": "nginx, auth_basic",
         "caddy-noauth": "caddy, no auth", "caddy-auth": "caddy, basicauth"}
names = {k: v for k, v in names.items() if os.path.exists(os.path.join(res, k))}
r = {k: load(k) for k in names}
print("| contender | req/s (2xx) | p50 ms | p99 ms | non-2xx | timeouts | socket errors | server CPU µs/req |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for k, label in names.items():
    x = r[k]
    each = "" if len(x[8]) == 1 else " (" + ", ".join(f"{v:.0f}" for v in x[8]) + ")"
    print(f"| {label} | {x[1]:.0f}{each} | {x[2]:.2f} | {x[3]:.2f} | {int(x[5])} | {int(x[6])} | {int(x[7])} | {x[9]:.0f} |")
print()
def ratio(a, b, target=None):
    va, vb = r[a][1], r[b][1]
    v = va / vb if vb > 0 else float("nan")
    t = "" if target is None else f" (target ≥ {target}: {'ok' if v >= target else 'MISSED'})"
    ca, cb = r[a][9], r[b][9]
    c = f"{ca / cb:.2f}" if ca > 0 and cb > 0 else "n/a"
    return f"{v:.2f}{t} | {c}"
print("| ratio | req/s | server CPU µs/req |")
print("|---|---|---|")
print(f"| guard auth ÷ guard no auth | {ratio('guard-auth', 'guard-noauth', 0.9)} |")
print(f"| guard auth ÷ nginx no auth | {ratio('guard-auth', 'nginx-noauth', 1.0)} |")
print(f"| guard session ÷ guard Basic (cached) | {ratio('guard-session', 'guard-auth', 0.95)} |")
if "guard-jwt" in r:
    print(f"| guard JWT ÷ guard Basic (cached) | {ratio('guard-jwt', 'guard-auth', 0.95)} |")
print(f"| guard auth ÷ caddy basicauth | {ratio('guard-auth', 'caddy-auth', 1.0)} |")
print(f"| guard auth ÷ nginx auth_basic | {ratio('guard-auth', 'nginx-auth')} |")
print(f"| nginx auth_basic ÷ nginx no auth | {ratio('nginx-auth', 'nginx-noauth')} |")
print(f"| caddy basicauth ÷ caddy no auth | {ratio('caddy-auth', 'caddy-noauth')} |")
print()
print(f"### Flood: {addrs} attacker addresses x {conns} connections, a new wrong password per request,")
print(f"### against one correct client: wrk -t{vt} -c{vc}, {calm_secs} s undisturbed, then {secs} s during the flood;")
print(f"### guard: {rounds} such pairs (median, each in brackets); nginx, caddy: one. Attack client niceness: {nice}")
print()
fnames = {"flood-guard": "guard (lockout 10/min, default)", "flood-guard-nolockout": "guard --lockout-failures 0",
          "flood-nginx": "nginx auth_basic", "flood-caddy": "caddy basicauth"}
print("| server | undisturbed req/s | during flood req/s | % kept | p99 ms in flood | attacker answers/s | attacker statuses | attacker CPU s |")
print("|---|---:|---:|---:|---:|---:|---|---:|")
for k, label in fnames.items():
    calm, flood = runs(k + ".calm"), runs(k + ".flood")
    atts = [json.loads(l) for l in open(os.path.join(res, k + ".attack")) if l.strip()]
    pcts = [100 * f[1] / c[1] if c[1] > 0 else float("nan") for c, f in zip(calm, flood)]
    pct = statistics.median(pcts)
    mark = (" ✓" if pct >= 50 else " ✗") if k.startswith("flood-guard") else ""
    def col(vals, fmt):
        m = fmt.format(statistics.median(vals))
        return m if len(vals) == 1 else m + " (" + ", ".join(fmt.format(v) for v in vals) + ")"
    status = collections.Counter()
    errors = 0
    for a in atts:
        status.update(a["status"])
        errors += a["errors"]
    st = ", ".join(f"{s}: {n}" for s, n in sorted(status.items()))
    if errors:
        st += f", errors: {errors}"
    st = st.lstrip(", ") or "none in time"
    print(f"| {label} | {col([c[1] for c in calm], '{:.1f}')} | {col([f[1] for f in flood], '{:.1f}')} | "
          f"{col(pcts, '{:.0f}%')}{mark} | {statistics.median(f[3] for f in flood):.0f} | "
          f"{col([a['per_s'] for a in atts], '{:.0f}')} | {st} | {col([a['cpu_s'] for a in atts], '{:.1f}')} |")
print()
print("guard target: the correct client keeps ≥ 50% of its undisturbed req/s during the flood (✓/✗).")
EOF
