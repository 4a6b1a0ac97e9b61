#!/usr/bin/env bash
# End-to-end throughput ratios, measured in one run, loopback only, bounded in time.
#
#   scripts/loadtest.sh                 # 3 interleaved rounds of 4 s per target, 16 connections
#   ROUNDS=5 DURATION=3 scripts/loadtest.sh
#   ONLY="bare_proxy auth_none auth_required" ROUNDS=8 scripts/loadtest.sh   # a subset, more rounds
#
# On a small shared machine (wrk, the upstream and the proxy share the cores) one run of one
# target is at the mercy of the scheduler: targets are measured round-robin, ROUNDS times, and
# each keeps its best round (interference only ever takes throughput away), so every ratio
# compares figures taken under the same conditions.
#
# Targets: direct to a local upstream; a bare hyper pass-through proxy (the floor); tollgate with
# auth="none"; auth="required" (same valid token, cached validation, identity headers); an OBO
# route (cached exchange); the local API's cached /token/exchange and /introspect (one token and a
# pool of 1000 distinct tokens) against admin /healthz on the same process; and the API's I/O
# floor (examples/api_floor.rs: the same exchange request read and answered with as many bytes,
# no work) against its own /healthz. Both proxies and the floor run one tokio worker
# (TOKIO_WORKER_THREADS=1; the bare proxy and the floor are current-thread).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-16}
command -v wrk >/dev/null || { echo "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

# PIN=1: the proxy under test (tollgate or the bare proxy) gets CPU 1 to itself; wrk, the
# upstream and the dev IdP share CPU 0. Less scheduler noise, and CPU per request is then the
# proxy's own, not shared with a neighbour's wake-ups.
PIN=${PIN:-0}
if [ "$PIN" = 1 ]; then PROXY_CPU=(taskset -c 1); LOAD_CPU=(taskset -c 0); else PROXY_CPU=(); LOAD_CPU=(); fi

cargo build --release --quiet --bin tollgate --example bare_proxy --example hello_upstream --example api_floor
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

UP=127.0.0.1:18080; BARE=127.0.0.1:18081; PUB=127.0.0.1:18082; API=127.0.0.1:18083; ADMIN=127.0.0.1:18084; IDP=127.0.0.1:18085; FLOOR=127.0.0.1:18086
TID=11111111-2222-3333-4444-555555555555
"${LOAD_CPU[@]}" "$BIN/examples/hello_upstream" $UP >/dev/null & PIDS+=($!); UP_PID=$!
"${PROXY_CPU[@]}" "$BIN/examples/bare_proxy" $BARE http://$UP >/dev/null & PIDS+=($!); BARE_PID=$!
"${LOAD_CPU[@]}" "$BIN/tollgate" dev-idp --listen $IDP >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 50); do curl -sf http://$IDP/$TID/v2.0/.well-known/openid-configuration >/dev/null && break; sleep 0.1; done

cat > "$WORK/tollgate.toml" <<TOML
[listen]
public = "$PUB"
api = "$API"
admin = "$ADMIN"
[log]
level = "warn"
[upstream]
url = "http://$UP"
[[providers]]
name = "entra_id"
well_known_url = "http://$IDP/$TID/v2.0/.well-known/openid-configuration"
client_id = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
[[routes]]
path = "/none"
auth = "none"
[[routes]]
path = "/required"
auth = "required"
scopes = ["access_as_user"]
[[routes]]
path = "/obo"
obo = "api://eeeeeeee-6666-7777-8888-ffffffffffff/.default"
TOML
AZURE_APP_CLIENT_SECRET=dev-secret-tollgate TOKIO_WORKER_THREADS=1 "${PROXY_CPU[@]}" "$BIN/tollgate" serve --config "$WORK/tollgate.toml" >/dev/null 2>&1 & PIDS+=($!)
TG_PID=$!
for _ in $(seq 100); do curl -sf http://$ADMIN/readyz >/dev/null && break; sleep 0.1; done

token() {
  curl -s http://$IDP/$TID/oauth2/v2.0/token -d grant_type=password -d client_id=cccccccc-3333-4444-5555-dddddddddddd \
    -d username=alice -d password=dev -d scope=api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/access_as_user \
    | sed -E 's/.*"access_token":"([^"]+)".*/\1/'
}
TOKEN=$(token)
# The API's I/O floor answers what a cached exchange answers, byte for byte in size.
EXCHANGED=$(curl -s http://$API/api/v1/token/exchange -d identity_provider=entra_id \
  -d target=api://eeeeeeee-6666-7777-8888-ffffffffffff/.default -d "user_token=$TOKEN" | wc -c)
"${PROXY_CPU[@]}" "$BIN/examples/api_floor" $FLOOR "$EXCHANGED" >/dev/null & PIDS+=($!); FLOOR_PID=$!
for _ in $(seq 50); do curl -sf http://$FLOOR/healthz >/dev/null && break; sleep 0.1; done
if [ -z "${ONLY:-}" ] || [[ "$ONLY" == *_pool* ]]; then
  echo "minting 1000 distinct user tokens for the pool run..."
  { echo "tokens = {"; for _ in $(seq 1000); do printf '"%s",\n' "$(token)"; done; echo "}"; } > "$WORK/pool.lua"
else
  echo "tokens = {}" > "$WORK/pool.lua"
fi

cat > "$WORK/exchange.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "identity_provider=entra_id&target=api://eeeeeeee-6666-7777-8888-ffffffffffff/.default&user_token=$TOKEN"
LUA
cat > "$WORK/introspect.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "identity_provider=entra_id&token=$TOKEN"
LUA
cat "$WORK/pool.lua" > "$WORK/exchange_pool.lua"; cat >> "$WORK/exchange_pool.lua" <<'LUA'
request = function()
  local t = tokens[math.random(#tokens)]
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"},
    "identity_provider=entra_id&target=api://eeeeeeee-6666-7777-8888-ffffffffffff/.default&user_token=" .. t)
end
LUA
cat "$WORK/pool.lua" > "$WORK/introspect_pool.lua"; cat >> "$WORK/introspect_pool.lua" <<'LUA'
request = function()
  local t = tokens[math.random(#tokens)]
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"}, "identity_provider=entra_id&token=" .. t)
end
LUA

declare -A RPS P50 P99 CPU
# CPU time (user + system, in clock ticks) the process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
measure() { # name pid url [wrk args...]: one round; keeps the best requests/s seen for name
  local name=$1 pid=$2 url=$3; shift 3
  local before; before=$(cpu_ticks "$pid")
  local out; out=$("${LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url")
  local used=$(( $(cpu_ticks "$pid") - before ))
  if echo "$out" | grep -q "Non-2xx"; then echo "$name: non-2xx answers:"; echo "$out"; exit 1; fi
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local reqs; reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  # CPU the serving process spent per request: what the throughput would be bound by if the
  # process had a core to itself, free of wrk's and the upstream's share of this machine.
  local us; us=$(awk -v t="$used" -v k="$TICK_US" -v n="$reqs" 'BEGIN { printf "%.2f", t * k / n }')
  if [ -z "${CPU[$name]:-}" ] || awk -v a="$us" -v b="${CPU[$name]}" 'BEGIN { exit !(a < b) }'; then
    CPU[$name]=$us
  fi
  if [ -z "${RPS[$name]:-}" ] || awk -v a="$rps" -v b="${RPS[$name]}" 'BEGIN { exit !(a > b) }'; then
    RPS[$name]=$rps
    P50[$name]=$(echo "$out" | awk '$1=="50%" {print $2}')
    P99[$name]=$(echo "$out" | awk '$1=="99%" {print $2}')
  fi
}
AUTH=(-H "Authorization: Bearer $TOKEN")
# name|serving process|url|extra wrk arguments
TARGETS=(
  "direct|up|http://$UP/x"
  "bare_proxy|bare|http://$BARE/x"
  # The same request the token routes get: a ~1.2 KB Authorization header costs the bare proxy too.
  "bare_proxy_token|bare|http://$BARE/x|auth"
  "auth_none|tg|http://$PUB/none/x"
  "auth_required|tg|http://$PUB/required/x|auth"
  "obo_route|tg|http://$PUB/obo/x|auth"
  "healthz|tg|http://$ADMIN/healthz"
  "exchange|tg|http://$API/api/v1/token/exchange|$WORK/exchange.lua"
  "introspect|tg|http://$API/api/v1/introspect|$WORK/introspect.lua"
  "exchange_pool|tg|http://$API/api/v1/token/exchange|$WORK/exchange_pool.lua"
  "introspect_pool|tg|http://$API/api/v1/introspect|$WORK/introspect_pool.lua"
  # The same exchange request against a handler that only reads it and answers as many bytes.
  "floor_healthz|floor|http://$FLOOR/healthz"
  "floor_post|floor|http://$FLOOR/post|$WORK/exchange.lua"
)
pid_of() { case "$1" in up) echo "$UP_PID" ;; bare) echo "$BARE_PID" ;; floor) echo "$FLOOR_PID" ;; *) echo "$TG_PID" ;; esac; }
args_for() { # extra -> wrk arguments
  case "$1" in
    "") ;;
    auth) printf '%s\0' "${AUTH[@]}" ;;
    *) printf '%s\0' -s "$1" ;;
  esac
}
if [ -n "${ONLY:-}" ]; then
  KEEP=()
  for t in "${TARGETS[@]}"; do if [[ " $ONLY " == *" ${t%%|*} "* ]]; then KEEP+=("$t"); fi; done
  [ ${#KEEP[@]} -gt 0 ] || { echo "ONLY names no target (names: direct bare_proxy auth_none ...)"; exit 1; }
  TARGETS=("${KEEP[@]}")
fi
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS..."
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name who url extra <<<"$t"
    mapfile -d '' ARGS < <(args_for "${extra:-}")
    # Warm caches (validation, OBO, the token pool) before the first measurement.
    [ "$round" -eq 1 ] && { wrk -t1 -c"$CONNS" -d2s "${ARGS[@]}" "$url" >/dev/null 2>&1 || true; }
    measure "$name" "$(pid_of "$who")" "$url" "${ARGS[@]}"
  done
done
for t in "${TARGETS[@]}"; do
  name=${t%%|*}
  printf '%-18s %12s req/s   p50 %-9s p99 %-9s %8s us CPU/request\n' "$name" "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}" "${CPU[$name]}"
done
RSS=$(awk '/VmRSS/ {print $2}' /proc/$TG_PID/status)

# ratio_of MAP a b: MAP[a] / MAP[b], or n/a when ONLY left either target out.
ratio_of() {
  local -n m=$1
  [ -n "${m[$2]:-}" ] && [ -n "${m[$3]:-}" ] || { printf "n/a "; return; }
  awk -v a="${m[$2]}" -v b="${m[$3]}" 'BEGIN { printf "%.2f", a / b }'
}
ratio() { ratio_of RPS "$1" "$2"; }
echo
echo "ratios, best of $ROUNDS rounds each (targets in parentheses):"
echo "  auth_none      / bare_proxy = $(ratio auth_none bare_proxy)   (>= 0.90)"
echo "  auth_required  / bare_proxy = $(ratio auth_required bare_proxy)   (>= 0.85)"
echo "  obo_route      / bare_proxy = $(ratio obo_route bare_proxy)   (>= 0.80)"
echo "  same request through the bare proxy (with the token's Authorization header):"
echo "  auth_required  / bare_proxy_token = $(ratio auth_required bare_proxy_token)"
echo "  obo_route      / bare_proxy_token = $(ratio obo_route bare_proxy_token)"
echo "  bare_proxy_token / bare_proxy     = $(ratio bare_proxy_token bare_proxy)"
echo "  exchange       / healthz    = $(ratio exchange healthz)   (>= 0.80)"
echo "  introspect     / healthz    = $(ratio introspect healthz)   (>= 0.80)"
echo "  exchange_pool  / healthz    = $(ratio exchange_pool healthz)"
echo "  introspect_pool/ healthz    = $(ratio introspect_pool healthz)"
echo "  the bytes alone (api_floor: read the form, answer as many bytes, nothing else):"
echo "  floor_post     / floor_healthz = $(ratio floor_post floor_healthz)"
echo "  exchange       / floor_post    = $(ratio exchange floor_post)"
echo "  introspect     / floor_post    = $(ratio introspect floor_post)"
echo "  bare_proxy     / direct     = $(ratio bare_proxy direct)"
# The same ratios from CPU per request (floor's CPU / tollgate's CPU): the throughput ratio the
# two would show if each had a core to itself, which a 2-core box shared with wrk cannot give.
cpu_ratio() { ratio_of CPU "$2" "$1"; }
echo
echo "ratios from CPU per request of the serving process (best of $ROUNDS rounds each):"
echo "  auth_none      / bare_proxy = $(cpu_ratio auth_none bare_proxy)   (>= 0.90)"
echo "  auth_required  / bare_proxy = $(cpu_ratio auth_required bare_proxy)   (>= 0.85)"
echo "  obo_route      / bare_proxy = $(cpu_ratio obo_route bare_proxy)   (>= 0.80)"
echo "  auth_required  / bare_proxy_token = $(cpu_ratio auth_required bare_proxy_token)"
echo "  obo_route      / bare_proxy_token = $(cpu_ratio obo_route bare_proxy_token)"
echo "  exchange       / healthz    = $(cpu_ratio exchange healthz)   (>= 0.80)"
echo "  introspect     / healthz    = $(cpu_ratio introspect healthz)   (>= 0.80)"
echo "  floor_post     / floor_healthz = $(cpu_ratio floor_post floor_healthz)"
echo "  exchange       / floor_post    = $(cpu_ratio exchange floor_post)"
echo "tollgate RSS after the run: ${RSS} kB"
