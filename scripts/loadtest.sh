#!/usr/bin/env bash
# CPU per request and throughput ratios, measured in one run, loopback only, bounded in time.
#
#   PIN=1 scripts/loadtest.sh           # the headline: CPU time per request of the process under
#                                       # test, pinned alone on CPU 1, and its ratio to the bare proxy
#   CALLGRIND=1 scripts/loadtest.sh     # instructions per request under callgrind (deterministic)
#   scripts/loadtest.sh                 # 3 interleaved rounds of 4 s per target, 16 connections
#   ROUNDS=5 DURATION=3 scripts/loadtest.sh
#   ONLY="bare_proxy auth_none auth_required" ROUNDS=8 scripts/loadtest.sh   # a subset, more rounds
#   FLOOD=20000 ONLY=flood scripts/loadtest.sh   # the memory flood alone: RSS before and after
#   PROFILE=perf scripts/loadtest.sh    # [profile.perf] (thin LTO): quick rebuilds while iterating
#
# On a small shared machine (wrk, the upstream and the proxy share the cores) one run of one
# target is at the mercy of the scheduler: targets are measured round-robin, ROUNDS times, and
# each keeps its best round (interference only ever takes throughput away), so every ratio
# compares figures taken under the same conditions.
#
# Targets: direct to a local upstream; a bare hyper pass-through proxy (the floor); nginx
# `proxy_pass` without auth (a reference, when /usr/sbin/nginx is installed); tollgate with
# auth="none"; auth="required" (same valid token, cached validation, identity headers); an OBO
# route (cached exchange); first-sight tokens (FIRST distinct valid tokens per round, each sent
# once); invalid tokens sent once each at the same count (a bad signature; an unknown kid); the
# local API's cached /token/exchange and /introspect (one token and a pool of 1000 distinct
# tokens) against admin /healthz on the same process; and the API's I/O floor
# (examples/api_floor.rs: the same exchange request read and answered with as many bytes, no
# work) against its own /healthz. The proxies and the floor run one tokio worker
# (TOKIO_WORKER_THREADS=1; the bare proxy and the floor are current-thread; nginx one worker).
#
# CPU per request: the serving process's utime+stime from /proc/PID/stat before and after each
# bounded run, divided by the requests wrk reports for that run. With PIN=1 the process under
# test has CPU 1 to itself; wrk, the upstream, the dev IdP and nginx's upstream share CPU 0.
# Besides the ratio of the best rounds, the headline gives the median over rounds of each
# target's ratio to the bare proxy's same round ("median x"): on a VM whose speed drifts
# between rounds, the pairing cancels the drift that the best rounds of each may not share.
#
# CALLGRIND=1: each target's process is started under `valgrind --tool=callgrind`, warmed with
# CG_WARM requests, sent CG_REQUESTS more (CG_FIRST for the first-sight and invalid-token
# scenarios) on one connection, and stopped; instructions are counted from the end of the
# warm-up (start-up is not counted), and an idle baseline run of the same process does
# everything but the CG_REQUESTS. Instructions per request = (Ir of the run - Ir of the baseline)
# / requests. The profiles stay in CG_DIR (default target/callgrind) for callgrind_annotate.
# Work bounded by wall time rather than by requests (timers tick, moka's housekeeping) does not
# cancel out entirely: figures move by a few instructions per request from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-16}
PROFILE=${PROFILE:-release}
PIN=${PIN:-0}
CALLGRIND=${CALLGRIND:-0}
# Distinct valid tokens per round of the first-sight scenario (and of each invalid one): enough
# for a run of a few hundred ms, as /proc/PID/stat counts CPU time in 10 ms ticks.
FIRST=${FIRST:-6000}
# Distinct users the dev IdP knows (the first-sight and flood tokens cycle through them).
USERS=${USERS:-1000}
# Tokens sent once each through the proxy's OBO route and the API's exchange in the memory flood.
FLOOD=${FLOOD:-5000}
CG_WARM=${CG_WARM:-20}
CG_REQUESTS=${CG_REQUESTS:-2000}
CG_FIRST=${CG_FIRST:-500}
CG_DIR=${CG_DIR:-target/callgrind}
need() { command -v "$1" >/dev/null || { echo "installing $2"; apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need curl curl
[ "$CALLGRIND" = 1 ] && need valgrind valgrind
NGINX=/usr/sbin/nginx
[ -x "$NGINX" ] || { echo "nginx not installed (apt-get install nginx-light): no nginx row"; NGINX=; }

if [ "$PIN" = 1 ]; then PROXY_CPU=(taskset -c 1); LOAD_CPU=(taskset -c 0); else PROXY_CPU=(); LOAD_CPU=(); fi

cargo build --profile "$PROFILE" --quiet --bin tollgate --example bare_proxy --example hello_upstream --example api_floor
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
[ "$PROFILE" = dev ] && BIN=${CARGO_TARGET_DIR:-target}/debug
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

UP=127.0.0.1:18080; BARE=127.0.0.1:18081; PUB=127.0.0.1:18082; API=127.0.0.1:18083; ADMIN=127.0.0.1:18084; IDP=127.0.0.1:18085; FLOOR=127.0.0.1:18086; NGX=127.0.0.1:18087
TID=11111111-2222-3333-4444-555555555555
CLIENT=cccccccc-3333-4444-5555-dddddddddddd
SCOPE=api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/access_as_user
OBO_TARGET=api://eeeeeeee-6666-7777-8888-ffffffffffff/.default
wait_for() { for _ in $(seq "${2:-100}"); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "not ready: $1"; return 1; }

"${LOAD_CPU[@]}" "$BIN/examples/hello_upstream" $UP >/dev/null & PIDS+=($!); UP_PID=$!
# The dev IdP with USERS extra users (user1..userN, password "dev"), so that first-sight and
# flood tokens belong to many distinct users as they would in production.
{ for i in $(seq "$USERS"); do printf '[[users]]\nusername = "user%d"\n' "$i"; done; } > "$WORK/devidp.toml"
"${LOAD_CPU[@]}" "$BIN/tollgate" dev-idp --listen $IDP --config "$WORK/devidp.toml" >/dev/null 2>&1 & PIDS+=($!)
wait_for http://$IDP/$TID/v2.0/.well-known/openid-configuration

# tollgate_config FILE PUBLIC API ADMIN: the sidecar's configuration, listening where it is told.
tollgate_config() {
  cat > "$1" <<TOML
[listen]
public = "$2"
api = "$3"
admin = "$4"
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
obo = "$OBO_TARGET"
TOML
}
# nginx_config FILE LISTEN: one process, one worker, no access log, keep-alive to the upstream
# (the bare proxy's client pools its upstream connections too).
nginx_config() {
  mkdir -p "$WORK/nginx"
  cat > "$1" <<NGINX
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream up { server $UP; keepalive 32; }
  server {
    listen $2;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
}

# mint N FILE [FIRST_USER]: N access tokens from the dev IdP, one a line, cycling through the
# users from FIRST_USER; one curl process, 4 requests in flight, connections reused.
mint() {
  local n=$1 file=$2 u=${3:-1} cfg="$WORK/mint.curl"
  : > "$cfg"
  for i in $(seq "$n"); do
    [ "$i" -gt 1 ] && echo next >> "$cfg"
    printf 'silent\nurl = "http://%s/%s/oauth2/v2.0/token"\ndata = "grant_type=password&client_id=%s&username=user%d&password=dev&scope=%s"\n' \
      "$IDP" "$TID" "$CLIENT" $(( (u + i - 2) % USERS + 1 )) "$SCOPE" >> "$cfg"
  done
  "${LOAD_CPU[@]}" curl -s --parallel --parallel-max 4 -K "$cfg" 2>/dev/null | grep -o '"access_token":"[^"]*"' | cut -d'"' -f4 > "$file"
  [ "$(wc -l < "$file")" -eq "$n" ] || { echo "minted $(wc -l < "$file") of $n tokens"; exit 1; }
}
token() {
  curl -s http://$IDP/$TID/oauth2/v2.0/token -d grant_type=password -d client_id=$CLIENT \
    -d username=alice -d password=dev -d scope=$SCOPE | sed -E 's/.*"access_token":"([^"]+)".*/\1/'
}
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
# The invalid twins of a token file: the same tokens with the signature's 11th character
# changed (a bad signature that still parses and is below the modulus, so the check is the full
# RSA verification), and with a header naming a key the IdP never published.
bad_signature() { sed -E 's/^([^.]*\.[^.]*\.[^.]{10})A/\1B/; t; s/^([^.]*\.[^.]*\.[^.]{10})./\1A/' "$1"; }
unknown_kid() {
  local header; header=$(printf '{"typ":"JWT","alg":"RS256","kid":"no-such-key"}' | b64url)
  sed -E "s/^[^.]*\./$header./" "$1"
}

TOKEN=$(token)
BADSIG=$(echo "$TOKEN" | bad_signature /dev/stdin)

# Lua for wrk. once.lua sends the tokens of TOKEN_FILE from line TOKEN_OFFSET+1, each once, as
# a bearer token (or as the exchange's user_token with EXCHANGE=1), and stops wrk after
# TOKEN_COUNT answers; counted.lua stops after TOKEN_COUNT answers of the fixed request. wrk's
# main thread sleeps for the whole -d whatever its threads do, and a SIGINT ends that sleep
# (wrk then prints the figures of the requests done). It is sent until wrk is gone: wrk
# ignores SIGINT until its threads have started, which a short run can outpace.
cat > "$WORK/finish.lua" <<'LUA'
local function finish()
  wrk.thread:stop()
  local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
  io.popen("(i=0; while [ $i -lt 50 ] && kill -INT " .. pid ..
    "; do i=$((i+1)); sleep 0.1; done) >/dev/null 2>&1 &"):close()
end
LUA
cat "$WORK/finish.lua" > "$WORK/once.lua"; cat >> "$WORK/once.lua" <<'LUA'
local file, offset = os.getenv("TOKEN_FILE"), tonumber(os.getenv("TOKEN_OFFSET") or "0")
local count, exchange = tonumber(os.getenv("TOKEN_COUNT")), os.getenv("EXCHANGE") == "1"
local target = os.getenv("OBO_TARGET")
local tokens, i = {}, 0
for line in io.lines(file) do
  i = i + 1
  if i > offset then tokens[#tokens + 1] = line end
end
local sent, answered = 0, 0
request = function()
  sent = sent + 1
  local t = tokens[(sent - 1) % #tokens + 1]
  if exchange then
    return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"},
      "identity_provider=entra_id&target=" .. target .. "&user_token=" .. t)
  end
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. t})
end
response = function()
  answered = answered + 1
  if answered == count then finish() end
end
LUA
cat "$WORK/finish.lua" > "$WORK/counted.lua"; cat >> "$WORK/counted.lua" <<'LUA'
local count, answered = tonumber(os.getenv("TOKEN_COUNT")), 0
response = function()
  answered = answered + 1
  if answered == count then finish() end
end
LUA
cat > "$WORK/exchange.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "identity_provider=entra_id&target=$OBO_TARGET&user_token=$TOKEN"
LUA
cat > "$WORK/introspect.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "identity_provider=entra_id&token=$TOKEN"
LUA

# wrk_count N URL [wrk args...]: exactly N answers on one connection (no time bound but 600 s).
wrk_count() {
  local n=$1 url=$2; shift 2
  TOKEN_COUNT=$n "${LOAD_CPU[@]}" wrk -t1 -c1 -d600s "$@" "$url"
}
requests_of() { awk '/requests in/ {print $1}'; }
ir_of() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }

# ---------------------------------------------------------------------------------------------
if [ "$CALLGRIND" = 1 ]; then
  mkdir -p "$CG_DIR"
  CG_PORTS=(127.0.0.1:18092 127.0.0.1:18093 127.0.0.1:18094)
  tollgate_config "$WORK/cg.toml" "${CG_PORTS[@]}"
  nginx_config "$WORK/cg-nginx.conf" "${CG_PORTS[0]}"
  # The API floor answers as many bytes as a cached exchange: ask a tollgate run natively once.
  AZURE_APP_CLIENT_SECRET=dev-secret-tollgate "$BIN/tollgate" serve --config "$WORK/cg.toml" >/dev/null 2>&1 & pid=$!
  wait_for "http://${CG_PORTS[2]}/readyz"
  EXCHANGED=$(curl -s "http://${CG_PORTS[1]}/api/v1/token/exchange" -d identity_provider=entra_id \
    -d target=$OBO_TARGET -d "user_token=$TOKEN" | wc -c)
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  echo "minting $((CG_FIRST + CG_WARM)) tokens for the first-sight scenario..."
  mint $((CG_FIRST + CG_WARM)) "$WORK/cg-first.tokens"
  bad_signature "$WORK/cg-first.tokens" > "$WORK/cg-badsig.tokens"
  unknown_kid "$WORK/cg-first.tokens" > "$WORK/cg-kid.tokens"
  # name|process|path|requests|extra: extra is "auth" (the cached token), a Lua file, or
  # "once:FILE" (the tokens of FILE, each once: the warm-up takes the first CG_WARM).
  CG_TARGETS=(
    "bare_proxy|bare|/x|$CG_REQUESTS|"
    "bare_proxy_token|bare|/x|$CG_REQUESTS|auth"
    "nginx|nginx|/x|$CG_REQUESTS|"
    "auth_none|tg|/none/x|$CG_REQUESTS|"
    "auth_required|tg|/required/x|$CG_REQUESTS|auth"
    "obo_route|tg|/obo/x|$CG_REQUESTS|auth"
    "first_sight|tg|/required/x|$CG_FIRST|once:$WORK/cg-first.tokens"
    "bad_signature|tg|/required/x|$CG_FIRST|once:$WORK/cg-badsig.tokens"
    "unknown_kid|tg|/required/x|$CG_FIRST|once:$WORK/cg-kid.tokens"
    "healthz|tg_admin|/healthz|$CG_REQUESTS|"
    "exchange|tg_api|/api/v1/token/exchange|$CG_REQUESTS|$WORK/exchange.lua"
    "floor_healthz|floor|/healthz|$CG_REQUESTS|"
    "floor_post|floor|/post|$CG_REQUESTS|$WORK/exchange.lua"
  )
  declare -A IR
  # cg_run NAME KIND PATH WARM MORE EXTRA: one process under callgrind, WARM + MORE requests.
  cg_run() {
    local name=$1 kind=$2 path=$3 warm=$4 more=$5 extra=$6 out=$CG_DIR/$1.$5.out port=${CG_PORTS[0]} ready
    # Counting starts after the warm-up (`callgrind_control -i on`): start-up work bounded by
    # wall time (quanta's clock calibration runs for a fixed time) would otherwise move the
    # figures by thousands of instructions per request from one run to the next.
    local cmd=(valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no --instr-atstart=no)
    case "$kind" in
      bare) "${PROXY_CPU[@]}" "${cmd[@]}" "$BIN/examples/bare_proxy" "$port" "http://$UP" >/dev/null 2>&1 & ready=http://$port/x ;;
      floor) "${PROXY_CPU[@]}" "${cmd[@]}" "$BIN/examples/api_floor" "$port" "$EXCHANGED" >/dev/null 2>&1 & ready=http://$port/healthz ;;
      nginx) "${PROXY_CPU[@]}" "${cmd[@]}" "$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/cg-nginx.conf" >/dev/null 2>&1 & ready=http://$port/x ;;
      tg*) AZURE_APP_CLIENT_SECRET=dev-secret-tollgate TOKIO_WORKER_THREADS=1 "${PROXY_CPU[@]}" "${cmd[@]}" "$BIN/tollgate" serve --config "$WORK/cg.toml" >/dev/null 2>&1 &
           ready=http://${CG_PORTS[2]}/readyz
           case "$kind" in tg_api) port=${CG_PORTS[1]} ;; tg_admin) port=${CG_PORTS[2]} ;; esac ;;
    esac
    local pid=$!
    wait_for "$ready" 600
    local args=()
    case "$extra" in
      "") ;;
      auth) args=(-H "Authorization: Bearer $TOKEN" -s "$WORK/counted.lua") ;;
      once:*) args=(-s "$WORK/once.lua") ;;
      *) cat "$extra" "$WORK/counted.lua" > "$WORK/cg-req.lua"; args=(-s "$WORK/cg-req.lua") ;;
    esac
    [ -z "$extra" ] && args=(-s "$WORK/counted.lua")
    local got=0
    TOKEN_FILE=${extra#once:} TOKEN_OFFSET=0 wrk_count "$warm" "http://$port$path" "${args[@]}" >/dev/null
    callgrind_control -i on "$pid" >/dev/null
    if [ "$more" -gt 0 ]; then
      got=$(TOKEN_FILE=${extra#once:} TOKEN_OFFSET=$warm wrk_count "$more" "http://$port$path" "${args[@]}" | requests_of)
    fi
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    [ "$got" -eq "$more" ] || { echo "$name: $got answers of $more"; exit 1; }
  }
  for t in "${CG_TARGETS[@]}"; do
    IFS='|' read -r name kind path n extra <<<"$t"
    if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then continue; fi
    if [ "$kind" = nginx ] && [ -z "$NGINX" ]; then continue; fi
    echo "callgrind: $name ($n requests, and an idle baseline)..."
    cg_run "$name" "$kind" "$path" "$CG_WARM" 0 "$extra"
    base=$(ir_of "$CG_DIR/$name.0.out")
    cg_run "$name" "$kind" "$path" "$CG_WARM" "$n" "$extra"
    run=$(ir_of "$CG_DIR/$name.$n.out")
    IR[$name]=$(( (run - base) / n ))
  done
  echo
  printf '%-18s %12s %10s\n' target "Ir/request" "x bare"
  for t in "${CG_TARGETS[@]}"; do
    name=${t%%|*}
    [ -n "${IR[$name]:-}" ] || continue
    ratio=n/a; [ -n "${IR[bare_proxy]:-}" ] && ratio=$(awk -v a="${IR[$name]}" -v b="${IR[bare_proxy]}" 'BEGIN { printf "%.2f", a / b }')
    printf '%-18s %12s %10s\n' "$name" "${IR[$name]}" "$ratio"
  done
  echo "profiles: $CG_DIR/NAME.REQUESTS.out (callgrind_annotate --inclusive=yes FILE | head -60)"
  exit 0
fi
# ---------------------------------------------------------------------------------------------

"${PROXY_CPU[@]}" "$BIN/examples/bare_proxy" $BARE http://$UP >/dev/null & PIDS+=($!); BARE_PID=$!
NGINX_PID=
if [ -n "$NGINX" ]; then
  nginx_config "$WORK/nginx.conf" $NGX
  "${PROXY_CPU[@]}" "$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx.conf" >/dev/null 2>&1 & PIDS+=($!); NGINX_PID=$!
  wait_for http://$NGX/x || { cat "$WORK/nginx/error.log"; exit 1; }
fi
tollgate_config "$WORK/tollgate.toml" $PUB $API $ADMIN
AZURE_APP_CLIENT_SECRET=dev-secret-tollgate TOKIO_WORKER_THREADS=1 "${PROXY_CPU[@]}" "$BIN/tollgate" serve --config "$WORK/tollgate.toml" >/dev/null 2>&1 & PIDS+=($!)
TG_PID=$!
wait_for http://$ADMIN/readyz

# The API's I/O floor answers what a cached exchange answers, byte for byte in size.
EXCHANGED=$(curl -s http://$API/api/v1/token/exchange -d identity_provider=entra_id \
  -d target=$OBO_TARGET -d "user_token=$TOKEN" | wc -c)
"${PROXY_CPU[@]}" "$BIN/examples/api_floor" $FLOOR "$EXCHANGED" >/dev/null & PIDS+=($!); FLOOR_PID=$!
wait_for http://$FLOOR/healthz
wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
wanted_like() { [ -z "${ONLY:-}" ] || [[ "$ONLY" == *$1* ]]; }
if wanted_like _pool; then
  echo "minting 1000 distinct user tokens for the pool run..."
  mint 1000 "$WORK/pool.tokens"
  { echo "tokens = {"; sed 's/.*/"&",/' "$WORK/pool.tokens"; echo "}"; } > "$WORK/pool.lua"
else
  echo "tokens = {}" > "$WORK/pool.lua"
fi
# Each round of the first-sight scenario takes FIRST + CONNS fresh tokens (the CONNS extra are
# the requests in flight when wrk stops; they are not counted, a CONNS/FIRST overstatement).
SLICE=$((FIRST + CONNS))
if wanted first_sight || wanted bad_signature || wanted unknown_kid; then
  echo "minting $((SLICE * ROUNDS)) distinct user tokens for the first-sight scenario..."
  mint $((SLICE * ROUNDS)) "$WORK/first.tokens"
  bad_signature "$WORK/first.tokens" > "$WORK/badsig.tokens"
  unknown_kid "$WORK/first.tokens" > "$WORK/kid.tokens"
fi

cat "$WORK/pool.lua" > "$WORK/exchange_pool.lua"; cat >> "$WORK/exchange_pool.lua" <<LUA
request = function()
  local t = tokens[math.random(#tokens)]
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"},
    "identity_provider=entra_id&target=$OBO_TARGET&user_token=" .. t)
end
LUA
cat "$WORK/pool.lua" > "$WORK/introspect_pool.lua"; cat >> "$WORK/introspect_pool.lua" <<'LUA'
request = function()
  local t = tokens[math.random(#tokens)]
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"}, "identity_provider=entra_id&token=" .. t)
end
LUA

declare -A RPS P50 P99 CPU
# CPU per request of each target in each round ("name,round"): rounds interleave the targets,
# so a target's round and the bare proxy's same round ran under the same conditions.
declare -A ROUND_CPU
# CPU time (user + system, in clock ticks) the process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
measure() { # name pid expect url [wrk args...]: one round; keeps the best figures seen for name
  local name=$1 pid=$2 expect=$3 url=$4; shift 4
  local before; before=$(cpu_ticks "$pid")
  local out; out=$("${LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url")
  local used=$(( $(cpu_ticks "$pid") - before ))
  local reqs; reqs=$(echo "$out" | requests_of)
  if [ "$expect" = 2xx ] && echo "$out" | grep -q "Non-2xx"; then echo "$name: non-2xx answers:"; echo "$out"; exit 1; fi
  # An invalid token must be refused, every time (401 is a non-2xx answer to wrk).
  if [ "$expect" = 401 ] && [ "$(echo "$out" | awk '/Non-2xx/ {print $NF}')" != "$reqs" ]; then echo "$name: not all refused:"; echo "$out"; exit 1; fi
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  # CPU the serving process spent per request: what the throughput would be bound by if the
  # process had a core to itself, free of wrk's and the upstream's share of this machine.
  local us; us=$(awk -v t="$used" -v k="$TICK_US" -v n="$reqs" 'BEGIN { printf "%.2f", t * k / n }')
  ROUND_CPU["$name,${round:-1}"]=$us
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
  # FIRST tokens never seen before, each sent once, then wrk stops.
  "first_sight|tg|http://$PUB/required/x|once:$WORK/first.tokens"
  "bad_signature|tg|http://$PUB/required/x|once:$WORK/badsig.tokens"
  "unknown_kid|tg|http://$PUB/required/x|once:$WORK/kid.tokens"
  "healthz|tg|http://$ADMIN/healthz"
  "exchange|tg|http://$API/api/v1/token/exchange|$WORK/exchange.lua"
  "introspect|tg|http://$API/api/v1/introspect|$WORK/introspect.lua"
  "exchange_pool|tg|http://$API/api/v1/token/exchange|$WORK/exchange_pool.lua"
  "introspect_pool|tg|http://$API/api/v1/introspect|$WORK/introspect_pool.lua"
  # The same exchange request against a handler that only reads it and answers as many bytes.
  "floor_healthz|floor|http://$FLOOR/healthz"
  "floor_post|floor|http://$FLOOR/post|$WORK/exchange.lua"
)
[ -n "$NGINX" ] && TARGETS+=("nginx|nginx|http://$NGX/x")
pid_of() { case "$1" in up) echo "$UP_PID" ;; bare) echo "$BARE_PID" ;; floor) echo "$FLOOR_PID" ;; nginx) echo "$NGINX_PID" ;; *) echo "$TG_PID" ;; esac; }
args_for() { # extra -> wrk arguments
  case "$1" in
    "") ;;
    auth) printf '%s\0' "${AUTH[@]}" ;;
    once:*) printf '%s\0' -s "$WORK/once.lua" ;;
    *) printf '%s\0' -s "$1" ;;
  esac
}
if [ -n "${ONLY:-}" ]; then
  KEEP=()
  for t in "${TARGETS[@]}"; do if [[ " $ONLY " == *" ${t%%|*} "* ]]; then KEEP+=("$t"); fi; done
  [ ${#KEEP[@]} -gt 0 ] || [[ " $ONLY " == *" flood "* ]] || { echo "ONLY names no target (names: direct bare_proxy nginx auth_none first_sight flood ...)"; exit 1; }
  TARGETS=("${KEEP[@]}")
fi
for round in $(seq "$ROUNDS"); do
  [ ${#TARGETS[@]} -gt 0 ] || break
  echo "round $round of $ROUNDS..."
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name who url extra <<<"$t"
    mapfile -d '' ARGS < <(args_for "${extra:-}")
    expect=2xx
    case "$name" in bad_signature|unknown_kid) expect=401 ;; esac
    if [[ "${extra:-}" == once:* ]]; then
      # A fresh slice of tokens each round; no warm-up (it would spend them).
      TOKEN_FILE=${extra#once:} TOKEN_OFFSET=$(( (round - 1) * SLICE )) TOKEN_COUNT=$FIRST \
        measure "$name" "$(pid_of "$who")" "$expect" "$url" "${ARGS[@]}"
      continue
    fi
    # Warm caches (validation, OBO, the token pool) before the first measurement.
    [ "$round" -eq 1 ] && { wrk -t1 -c"$CONNS" -d2s "${ARGS[@]}" "$url" >/dev/null 2>&1 || true; }
    measure "$name" "$(pid_of "$who")" "$expect" "$url" "${ARGS[@]}"
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
# paired_median NAME REF: the median over rounds of NAME's CPU per request over REF's in the
# same round; steadier than the ratio of the best rounds when the machine's speed drifts.
paired_median() {
  local r values=()
  for r in $(seq "$ROUNDS"); do
    local a=${ROUND_CPU["$1,$r"]:-} b=${ROUND_CPU["$2,$r"]:-}
    [ -n "$a" ] && [ -n "$b" ] && values+=("$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.4f", a / b }')")
  done
  [ ${#values[@]} -gt 0 ] || { printf "n/a "; return; }
  printf '%s\n' "${values[@]}" | sort -g | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f", m }'
}
if [ ${#TARGETS[@]} -gt 0 ] && [ "$PIN" = 1 ]; then
  # The headline: CPU per request of the process under test, alone on CPU 1, against the bare
  # proxy of the same run (issue #18's targets in parentheses).
  echo
  echo "CPU per request of the process under test, pinned alone on CPU 1 (best of $ROUNDS rounds; \"median x\": the median over rounds of the ratio to the bare proxy in the same round):"
  printf '  %-18s %10s %10s %10s  %s\n' target "us/request" "x bare" "median x" "target"
  for t in "${TARGETS[@]}"; do
    name=${t%%|*}
    case "$name" in
      auth_none) goal="<= 1.05x" ;; auth_required) goal="<= 1.10x" ;; obo_route) goal="<= 1.12x" ;;
      first_sight) goal="<= bare + 1.5 x RS256 verify" ;; bad_signature|unknown_kid) goal="<= first_sight" ;;
      exchange) goal="<= floor_post + 3 us" ;; *) goal= ;;
    esac
    printf '  %-18s %10s %10s %10s  %s\n' "$name" "${CPU[$name]}" "$(ratio_of CPU "$name" bare_proxy)" "$(paired_median "$name" bare_proxy)" "$goal"
  done
  if [ -n "${CPU[first_sight]:-}" ] && [ -n "${CPU[bare_proxy]:-}" ]; then
    echo "  first_sight - bare_proxy = $(awk -v a="${CPU[first_sight]}" -v b="${CPU[bare_proxy]}" 'BEGIN { printf "%.1f", a - b }') us"
  fi
  if [ -n "${CPU[exchange]:-}" ] && [ -n "${CPU[floor_post]:-}" ]; then
    echo "  exchange - floor_post   = $(awk -v a="${CPU[exchange]}" -v b="${CPU[floor_post]}" 'BEGIN { printf "%.1f", a - b }') us"
  fi
  # One RS256 verification, on the same CPU in the same run (VERIFY=0 skips the bench build).
  if [ "${VERIFY:-1}" = 1 ] && wanted first_sight; then
    verify=$("${PROXY_CPU[@]}" cargo bench --profile "$PROFILE" --quiet --bench validate -- rs256_verify 2>/dev/null \
      | awk '/time:/ {print $(NF-3), $(NF-2); exit}' || true)
    echo "  one RS256 verification (criterion, CPU 1): ${verify:-n/a}"
  fi
fi
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
echo "  nginx          / bare_proxy = $(ratio nginx bare_proxy)"
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

# The memory flood: FLOOD distinct tokens of USERS users, each sent once through the OBO route
# (validated-token and exchange caches) and once through the API's exchange; RSS before/after.
if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" flood "* ]]; then exit 0; fi
[ "$FLOOD" -gt 0 ] || exit 0
echo
echo "memory flood: minting $FLOOD tokens of $USERS users..."
mint "$FLOOD" "$WORK/flood.tokens"
before=$(awk '/VmRSS/ {print $2}' /proc/$TG_PID/status)
TOKEN_FILE=$WORK/flood.tokens TOKEN_OFFSET=0 TOKEN_COUNT=$FLOOD \
  "${LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d300s -s "$WORK/once.lua" "http://$PUB/obo/x" | grep -E 'requests in|Non-2xx' || true
TOKEN_FILE=$WORK/flood.tokens TOKEN_OFFSET=0 TOKEN_COUNT=$FLOOD EXCHANGE=1 OBO_TARGET=$OBO_TARGET \
  "${LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d300s -s "$WORK/once.lua" "http://$API/api/v1/token/exchange" | grep -E 'requests in|Non-2xx' || true
after=$(awk '/VmRSS/ {print $2}' /proc/$TG_PID/status)
echo "tollgate RSS: $before kB before, $after kB after $FLOOD distinct tokens ($(( (after - before) * 1024 / FLOOD )) bytes per token, proxy + API)"
