#!/usr/bin/env bash
# The fleet test (issue 13): the README's "Running a fleet" claims, checked
# on one machine with Linux network namespaces and no external network.
#
#   client 10.77.0.50 (and 10.77.0.51, outside the allowlist)
#     -> HAProxy 10.77.0.10:443 (TCP mode, send-proxy-v2, round-robin: an NLB)
#       -> 3 terminators 10.77.0.11-13:443 (this module, the same config)
#         -> Redis (FLEET_REDIS): single 10.77.0.20:6379; sentinel: primary
#            and 2 replicas 10.77.0.20-22:6379, sentinels 10.77.0.31-33:26379;
#            cluster: 3 primaries 10.77.0.20-22:6379, their replicas .23-.25
#
# Every node is a namespace of its own (names dcf-<pid>-<node>), plugged into
# a bridge in a hub namespace of this run: the addresses, the bridge and the
# iptables rules live in this run's namespaces only, so concurrent runs never
# collide. The clients are
# `dyncert-bench fleet ...` (full TLS handshakes, each leaf checked against
# the SNI) run inside the client namespaces. Scenarios, each with figures:
#
#   1. 10,000 names through the balancer: 0 failures, 0 mismatches.
#   2. A certificate renewed and published: every terminator serves the new
#      one within 100 ms of the PUBLISH (20 renewals, p50 and max each).
#   3. Client addresses come from PROXY v2: $remote_addr and dyncert_allow
#      see the client, never the balancer.
#   4. One terminator cut off from Redis: it keeps serving its cached names,
#      stale past valid=, logs and counts the errors, notices the dead
#      subscription by its PING, and serves the renewal published meanwhile
#      within the documented bound after the partition heals (re-subscribe,
#      then one fetch), not when valid= ends.
#   5. A terminator killed and restarted under load: only connections that
#      were on it fail.
#   6. Redis lost under load (single: killed and restarted 3 s later;
#      sentinel and cluster: the primary killed, a replica promoted):
#      cached names 0 failures, uncached names back within the outage (until
#      the restart, or the failover) plus one fetch timeout, invalidations
#      reach every terminator again, no terminator restarted.
#
# It prints a table of the scenarios with PASS/FAIL and exits 1 on any FAIL.
# Needs root (namespaces, iptables), haproxy, iptables and redis-server
# (scripts/deps.sh --fleet), and the release builds of the module (with the
# NGINX built alongside) and of dyncert-bench: cargo build --release &&
# cargo build --release -p dyncert-bench.
# Without root or network namespaces it fails: it never skips.
#
# Environment:
#   FLEET_REDIS   Redis topology: "single" (default; one redis-server,
#                 killed and restarted in scenario 6), "sentinel" (a primary,
#                 2 replicas and 3 sentinels: sentinel://), "cluster" (3
#                 primaries with a replica each: cluster://). CI runs
#                 sentinel, then cluster (scripts/test.sh).
#   FLEET_NAMES   names in the sweep (default 10000)
#   FLEET_KEEP    set to keep target/fleet/ (configs, logs) after a pass
#                 (it is always kept after a failure)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
RUN=$ROOT/target/fleet
BENCH=$ROOT/target/release/dyncert-bench
MODULE=$ROOT/target/release/libngx_http_dyncert_module.so

FLEET_REDIS=${FLEET_REDIS:-single}
FLEET_NAMES=${FLEET_NAMES:-10000}
# Names asked once each while Redis is down (scenario 6).
COLD=6000
# The terminators' cache and fetch settings; the bounds checked below are
# derived from them.
VALID_S=6
FETCH_TIMEOUT_MS=1000
REDIS_TIMEOUT_MS=500
# core/src/fetch/invalidate.rs: the longest wait between two attempts to
# subscribe to the invalidation channel (BACKOFF_MAX).
RESUBSCRIBE_MAX_MS=1000
# core/src/fetch/invalidate.rs: a dead subscription is noticed within one
# PING interval plus the PING's timeout, both dyncert_redis_timeout.
DETECTION_MAX_MS=$((2 * REDIS_TIMEOUT_MS))
# What seeing it in the error log adds (a 20 ms poll, grep, scheduling) and
# how late the fetcher's own timers may fire on a loaded 2-CPU machine: a run
# here saw detection at exactly the 1000 ms maximum.
LOG_POLL_SLACK_MS=500

NS=dcf-$$-
NET=10.77.0
LB_IP=$NET.10
T_IPS=("$NET.11" "$NET.12" "$NET.13")
REDIS_PORT=6379
C1_IP=$NET.50
C2_IP=$NET.51

started=$SECONDS
created_ns=()
failed=0
rows=()

say() { printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf 'fleet-test.sh: %s\n' "$*" >&2
    exit 1
}
now_ms() { date +%s%3N; }

# Kills every process of every namespace this run made (they are all ours:
# the namespaces are), then deletes the namespaces.
cleanup() {
    local rc=$? ns pids
    for ns in "${created_ns[@]}"; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [[ -n $pids ]]; then
            # shellcheck disable=SC2086 # one pid per word
            kill -9 $pids 2>/dev/null || true
        fi
    done
    for ns in "${created_ns[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    if [[ -z ${own_run:-} ]]; then
        : # target/fleet is another run's, or not made yet
    elif ((rc != 0 || failed)); then
        echo "fleet-test.sh: configurations and logs kept in $RUN" >&2
    elif [[ -z ${FLEET_KEEP:-} ]]; then
        rm -rf "$RUN"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- preconditions ------------------------------------------------------------

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, veth, iptables); in CI this is a failure, not a skip"
for tool in ip iptables haproxy redis-server redis-cli curl flock; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run scripts/deps.sh --fleet"
done
[[ -x $BENCH && -f $MODULE && -s $ROOT/target/release/nginx-build-dir.txt ]] ||
    die "release build missing: cargo build --release && cargo build --release -p dyncert-bench"
NGINX=$(<"$ROOT/target/release/nginx-build-dir.txt")/nginx
[[ -x $NGINX ]] || die "no nginx binary at $NGINX"
case $FLEET_REDIS in
    single | sentinel | cluster) ;;
    *) die "FLEET_REDIS=$FLEET_REDIS: unknown topology (single, sentinel, cluster)" ;;
esac
ip netns add "${NS}probe" 2>/dev/null || die "cannot create network namespaces (ip netns add): a container without CAP_SYS_ADMIN? In CI this is a failure"
ip netns del "${NS}probe"

# Runs in other trees have their own target/; two in this one would share
# target/fleet (their namespaces and addresses never meet: each run has its
# own hub namespace).
mkdir -p "$ROOT/target"
exec 9>"$ROOT/target/fleet.lock"
flock -n 9 || die "another fleet test is running in this tree (it holds $ROOT/target/fleet.lock); wait for it to finish"
own_run=1
rm -rf "$RUN"
mkdir -p "$RUN"

# --- network --------------------------------------------------------------------

say "network: namespaces ${NS}*, bridge in ${NS}hub, $NET.0/24"
ip netns add "${NS}hub"
created_ns+=("${NS}hub")
ip -n "${NS}hub" link add br0 type bridge
ip -n "${NS}hub" link set br0 up

# node NAME IP: a namespace with eth0 at IP on the bridge.
node() {
    local ns=$NS$1
    ip netns add "$ns"
    created_ns+=("$ns")
    ip -n "$ns" link set lo up
    ip -n "${NS}hub" link add "h-$1" type veth peer name eth0 netns "$ns"
    ip -n "${NS}hub" link set "h-$1" master br0 up
    ip -n "$ns" addr add "$2/24" dev eth0
    ip -n "$ns" link set eth0 up
}
node lb "$LB_IP"
for i in 1 2 3; do node "t$i" "${T_IPS[i - 1]}"; done
node c1 "$C1_IP"
node c2 "$C2_IP"

in_ns() {
    local ns=$NS$1
    shift
    ip netns exec "$ns" "$@"
}
# The fleet client, from the allowed client address (c1) or the other (c2).
client() { in_ns c1 "$BENCH" fleet "$@"; }
client2() { in_ns c2 "$BENCH" fleet "$@"; }

# --- Redis (the topology) -----------------------------------------------------------
#
# Each topology defines: redis_url (what the terminators get), redis_addr
# (IP:PORT the client writes and publishes through: the server, the current
# primary, or a Cluster node, whose MOVED answers the client follows),
# redis_start, redis_before_failure, redis_fail (the "down" mark: the
# primary lost at once, SIGKILL), redis_recover (returns at the "up" mark:
# Redis restarted, or the new primary named), redis_subscribers (workers
# subscribed to the invalidation channel), and REDIS_IPS (every address the
# terminators talk to, cut in the partition scenario).

CHANNEL=dyncert:invalidate

# rcli IP PORT ARGS...: redis-cli from the client namespace.
rcli() {
    local ip=$1 port=$2
    shift 2
    in_ns c1 redis-cli -h "$ip" -p "$port" "$@" 2>/dev/null
}

# wait_for WHAT TRIES CMD...: CMD until it succeeds, 50 ms apart.
wait_for() {
    local what=$1 tries=$2 i
    shift 2
    for ((i = 0; i < tries; i++)); do
        "$@" && return 0
        sleep 0.05
    done
    die "$what (logs in $RUN/redis)"
}

# redis_server NODE IP ARGS...: a redis-server on IP:REDIS_PORT in namespace
# NODE, its files in $RUN/redis/NODE (a Cluster node keeps nodes.conf there).
redis_server() {
    local n=$1 ip=$2
    shift 2
    mkdir -p "$RUN/redis/$n"
    in_ns "$n" redis-server --bind "$ip" --port "$REDIS_PORT" --protected-mode no \
        --save '' --appendonly no --dir "$RUN/redis/$n" --dbfilename dump.rdb \
        --daemonize yes --logfile "$RUN/redis/$n.log" "$@"
}

redis_up() { rcli "$1" "$REDIS_PORT" ping | grep -q PONG; }

case $FLEET_REDIS in
single)
    REDIS_NODES=(redis)
    REDIS_IPS=("$NET.20")
    REDIS_DESC="Redis single"
    OUTAGE_ROW="Redis killed and restarted under load (single)"
    UP_MEANS="Redis answered again"
    redis_url() { echo "redis://${REDIS_IPS[0]}:$REDIS_PORT/0"; }
    redis_addr() { echo "${REDIS_IPS[0]}:$REDIS_PORT"; }
    redis_subscribers() { rcli "${REDIS_IPS[0]}" "$REDIS_PORT" pubsub numsub "$CHANNEL" | sed -n 2p; }
    redis_start() {
        # The records survive a restart through dump.rdb (see
        # redis_before_failure).
        redis_server redis "${REDIS_IPS[0]}"
        wait_for "redis-server did not answer on ${REDIS_IPS[0]}:$REDIS_PORT" 100 redis_up "${REDIS_IPS[0]}"
    }
    # The records must outlive the single server, as they outlive a
    # Sentinel primary on its replicas.
    redis_before_failure() { rcli "${REDIS_IPS[0]}" "$REDIS_PORT" save >/dev/null; }
    redis_fail() { kill_ns redis; }
    redis_recover() {
        sleep 3
        redis_start
    }
    ;;
sentinel)
    # A primary and two replicas, three sentinels (quorum 2), each on an
    # address of its own.
    REDIS_NODES=(r1 r2 r3 s1 s2 s3)
    REDIS_IPS=("$NET.20" "$NET.21" "$NET.22" "$NET.31" "$NET.32" "$NET.33")
    DATA_IPS=("${REDIS_IPS[@]:0:3}")
    SENTINEL_IPS=("${REDIS_IPS[@]:3:3}")
    SENTINEL_PORT=26379
    SERVICE=mymaster
    # A failover within a few seconds: down after 1 s unanswered.
    DOWN_AFTER_MS=1000
    REDIS_DESC="Redis Sentinel (primary + 2 replicas, 3 sentinels, quorum 2, down-after ${DOWN_AFTER_MS} ms)"
    OUTAGE_ROW="Redis primary killed under load (Sentinel)"
    UP_MEANS="the sentinels named the new primary"
    redis_url() {
        local s=() ip
        for ip in "${SENTINEL_IPS[@]}"; do s+=("$ip:$SENTINEL_PORT"); done
        echo "sentinel://$(
            IFS=,
            echo "${s[*]}"
        )/$SERVICE/0"
    }
    # The primary as the first sentinel that answers names it.
    redis_primary_ip() {
        local ip out
        for ip in "${SENTINEL_IPS[@]}"; do
            out=$(rcli "$ip" "$SENTINEL_PORT" sentinel get-master-addr-by-name "$SERVICE" | head -n 1)
            [[ -n $out ]] && echo "$out" && return 0
        done
        return 1
    }
    redis_addr() { echo "$(redis_primary_ip):$REDIS_PORT"; }
    # The workers subscribe on the primary (and move with it).
    redis_subscribers() { rcli "$(redis_primary_ip)" "$REDIS_PORT" pubsub numsub "$CHANNEL" | sed -n 2p; }
    replicas_linked() {
        local ip
        for ip in "${DATA_IPS[@]:1}"; do
            rcli "$ip" "$REDIS_PORT" info replication | grep -q 'master_link_status:up' || return 1
        done
    }
    # Every sentinel knows both replicas (to fail over to one) and the two
    # other sentinels (to agree on the failover).
    sentinels_ready() {
        local ip
        for ip in "${SENTINEL_IPS[@]}"; do
            [[ $(rcli "$ip" "$SENTINEL_PORT" sentinel replicas "$SERVICE" | grep -c '^name$') == 2 ]] || return 1
            [[ $(rcli "$ip" "$SENTINEL_PORT" sentinel sentinels "$SERVICE" | grep -c '^name$') == 2 ]] || return 1
        done
    }
    redis_start() {
        local i
        # No diskless-sync delay: replicas sync at once, here and after the
        # failover (the default waits 5 s for more replicas).
        redis_server r1 "${DATA_IPS[0]}" --repl-diskless-sync-delay 0
        for i in 2 3; do
            redis_server "r$i" "${DATA_IPS[i - 1]}" --repl-diskless-sync-delay 0 \
                --replicaof "${DATA_IPS[0]}" "$REDIS_PORT"
        done
        wait_for "the replicas did not sync with ${DATA_IPS[0]}" 200 replicas_linked
        for i in 1 2 3; do
            # Each sentinel rewrites its own configuration file.
            cat >"$RUN/redis/s$i.conf" <<CONF
port $SENTINEL_PORT
bind ${SENTINEL_IPS[i - 1]}
protected-mode no
daemonize yes
logfile $RUN/redis/s$i.log
dir $RUN/redis
sentinel monitor $SERVICE ${DATA_IPS[0]} $REDIS_PORT 2
sentinel down-after-milliseconds $SERVICE $DOWN_AFTER_MS
sentinel failover-timeout $SERVICE 5000
sentinel parallel-syncs $SERVICE 1
CONF
            in_ns "s$i" redis-server "$RUN/redis/s$i.conf" --sentinel
        done
        # Sentinels find each other by hello messages, every 2 s.
        wait_for "the sentinels did not discover the replicas and each other" 400 sentinels_ready
    }
    # Every write so far is on both replicas.
    redis_before_failure() { rcli "$(redis_primary_ip)" "$REDIS_PORT" wait 2 2000 >/dev/null; }
    redis_fail() {
        old_primary=$(redis_primary_ip)
        local i
        for i in 1 2 3; do
            if [[ ${DATA_IPS[i - 1]} == "$old_primary" ]]; then kill_ns "r$i"; fi
        done
    }
    new_primary_named() {
        local ip
        ip=$(redis_primary_ip) && [[ $ip != "$old_primary" ]] &&
            rcli "$ip" "$REDIS_PORT" role | head -n 1 | grep -q master
    }
    # The "up" mark: a sentinel names a promoted replica (+switch-master)
    # and it answers as primary. The dead one stays dead: nothing waits
    # for it.
    redis_recover() { wait_for "no failover within 20 s of the primary's kill" 400 new_primary_named; }
    ;;
cluster)
    # Three primaries sharing the slots, one replica each, every node on an
    # address of its own; a primary unanswered for cluster-node-timeout is
    # failed over to its replica.
    REDIS_NODES=(r1 r2 r3 r4 r5 r6)
    REDIS_IPS=("$NET.20" "$NET.21" "$NET.22" "$NET.23" "$NET.24" "$NET.25")
    NODE_TIMEOUT_MS=1000
    REDIS_DESC="Redis Cluster (3 primaries with 1 replica each, cluster-node-timeout ${NODE_TIMEOUT_MS} ms)"
    OUTAGE_ROW="Redis primary killed under load (Cluster)"
    UP_MEANS="the cluster promoted its replica"
    redis_url() { echo "cluster://${REDIS_IPS[0]}:$REDIS_PORT,${REDIS_IPS[1]}:$REDIS_PORT,${REDIS_IPS[2]}:$REDIS_PORT"; }
    # Any live node: the client follows MOVED to the owner of a key.
    redis_addr() {
        local ip
        for ip in "${REDIS_IPS[@]}"; do
            redis_up "$ip" && echo "$ip:$REDIS_PORT" && return 0
        done
        return 1
    }
    # A PUBLISH on any node reaches the subscribers of every node: the
    # workers subscribe on the first listed node that answers.
    redis_subscribers() {
        local ip n sum=0
        for ip in "${REDIS_IPS[@]}"; do
            n=$(rcli "$ip" "$REDIS_PORT" pubsub numsub "$CHANNEL" | sed -n 2p || true)
            sum=$((sum + ${n:-0}))
        done
        echo "$sum"
    }
    cluster_ok() {
        local ip
        for ip in "${REDIS_IPS[@]}"; do
            rcli "$ip" "$REDIS_PORT" cluster info | grep -q 'cluster_state:ok' || return 1
            rcli "$ip" "$REDIS_PORT" info replication | grep -q 'role:master\|master_link_status:up' || return 1
        done
    }
    redis_start() {
        local i nodes=()
        for i in 1 2 3 4 5 6; do
            redis_server "r$i" "${REDIS_IPS[i - 1]}" --cluster-enabled yes \
                --cluster-config-file nodes.conf --cluster-node-timeout "$NODE_TIMEOUT_MS" \
                --repl-diskless-sync-delay 0
            nodes+=("${REDIS_IPS[i - 1]}:$REDIS_PORT")
        done
        for i in 1 2 3 4 5 6; do
            wait_for "redis-server did not answer on ${REDIS_IPS[i - 1]}" 100 redis_up "${REDIS_IPS[i - 1]}"
        done
        # The first three listed are the primaries (r1 holds slots 0-5460).
        in_ns c1 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
            >"$RUN/redis/create.log" 2>&1 || die "redis-cli --cluster create failed (see $RUN/redis/create.log)"
        wait_for "the cluster did not reach cluster_state:ok with every replica synced" 400 cluster_ok
    }
    # Every write so far is on r1's replica.
    redis_before_failure() { rcli "${REDIS_IPS[0]}" "$REDIS_PORT" wait 1 2000 >/dev/null; }
    redis_fail() { kill_ns r1; }
    # Slots 0-5460 (r1's) served by another node that the others take as
    # a primary.
    promoted() {
        rcli "${REDIS_IPS[1]}" "$REDIS_PORT" cluster nodes |
            awk -v dead="${REDIS_IPS[0]}:" 'index($2, dead) != 1 && $3 ~ /master/ && $3 !~ /fail/ && $9 ~ /^0-/ { f = 1 } END { exit !f }'
    }
    redis_recover() { wait_for "no replica promoted within 20 s of the primary's kill" 400 promoted; }
    ;;
*) die "FLEET_REDIS=$FLEET_REDIS: unknown topology (single, sentinel, cluster)" ;;
esac
for i in "${!REDIS_NODES[@]}"; do node "${REDIS_NODES[i]}" "${REDIS_IPS[i]}"; done

# Kills every process of node $1 and waits until they are gone.
# kill_ns NS: SIGKILL every process of a namespace, and return once its
# listening sockets are closed too. A process leaves `ip netns pids` when
# its main thread exits, but the other threads of a multi-threaded worker
# hold its sockets a little longer: a connection that arrives then is
# accepted into the dying listener's queue and reset, so "dead" would come
# too early.
kill_ns() {
    local pids i
    pids=$(ip netns pids "$NS$1")
    # shellcheck disable=SC2086 # one pid per word
    [[ -z $pids ]] || kill -9 $pids
    for ((i = 0; i < 200; i++)); do
        if [[ -z $(ip netns pids "$NS$1") && -z $(in_ns "$1" ss -Hltn) ]]; then
            return 0
        fi
        sleep 0.01
    done
    die "processes or listening sockets of $1 survived SIGKILL"
}

# --- terminators --------------------------------------------------------------------

write_terminator() {
    local n=$1 ip=$2 dir=$RUN/t$1
    mkdir -p "$dir/conf/certs" "$dir/logs" "$dir/html/allowed"
    cp "$RUN/certs/default.crt" "$RUN/certs/default.key" "$dir/conf/certs/"
    echo "allowed" >"$dir/html/allowed/index.html"
    cat >"$dir/conf/nginx.conf" <<CONF
# Terminator $n of scripts/fleet-test.sh; all three are the same but for
# their address.
load_module $MODULE;

worker_processes 1;
error_log logs/error.log notice;
pid       logs/nginx.pid;

events { worker_connections 4096; }

http {
    dyncert_redis         $(redis_url);
    dyncert_cache         max=50000 valid=${VALID_S}s stale=1h negative=2s;
    dyncert_fetch_timeout ${FETCH_TIMEOUT_MS}ms;
    dyncert_redis_timeout ${REDIS_TIMEOUT_MS}ms;

    log_format fleet '\$remote_addr \$proxy_protocol_addr \$ssl_server_name \$dyncert_source \$status';
    access_log logs/access.log fleet;
    default_type text/plain;

    server {
        listen $ip:443 ssl proxy_protocol;
        server_name _;
        ssl_certificate     certs/default.crt;
        ssl_certificate_key certs/default.key;
        dyncert on;

        # The balancer's PROXY v2 header is trusted from the balancer only.
        set_real_ip_from $LB_IP;
        real_ip_header   proxy_protocol;

        location / {
            return 200 "\$server_addr \$remote_addr \$dyncert_source\n";
        }
        location /allowed/ {
            dyncert_allow $C1_IP;
            root html;
        }
    }

    # Health checks of the balancer, and metrics.
    server {
        listen $ip:8081;
        location = /healthz { return 200 "ok\n"; }
        location = /metrics { dyncert_metrics; }
    }
}
CONF
}

healthy() { in_ns c1 curl -fsS --max-time 1 "http://$1:8081/healthz" >/dev/null 2>&1; }

start_terminator() {
    local n=$1 ip=${T_IPS[$1 - 1]} i
    in_ns "t$n" "$NGINX" -p "$RUN/t$n" -c conf/nginx.conf
    for ((i = 0; i < 100; i++)); do
        healthy "$ip" && return 0
        sleep 0.05
    done
    die "terminator $n did not come up (see $RUN/t$n/logs/error.log)"
}

master_pid() { cat "$RUN/t$1/logs/nginx.pid"; }

# metric N NAME: the sum of a metric's series on terminator N.
metric() {
    { in_ns c1 curl -fsS --max-time 2 "http://${T_IPS[$1 - 1]}:8081/metrics" || true; } |
        awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}

write_haproxy() {
    cat >"$RUN/haproxy.cfg" <<CONF
# What an NLB does: TCP, round-robin, the client's address in PROXY v2, and
# a connection that cannot reach a dead terminator retried on another.
global
    maxconn 4000

defaults
    mode tcp
    timeout connect 500ms
    timeout client  30s
    timeout server  30s
    retries 2
    option redispatch 1

frontend tls
    bind $LB_IP:443
    default_backend terminators

backend terminators
    balance roundrobin
    default-server send-proxy-v2 check port 8081 inter 200ms fall 1 rise 1
    server t1 ${T_IPS[0]}:443
    server t2 ${T_IPS[1]}:443
    server t3 ${T_IPS[2]}:443
CONF
    in_ns lb haproxy -D -f "$RUN/haproxy.cfg" -p "$RUN/haproxy.pid"
}

# --- results ----------------------------------------------------------------------

# record NAME VERDICT FIGURES
record() {
    rows+=("$1"$'\t'"$2"$'\t'"$3")
    [[ $2 == PASS ]] || failed=1
    printf '    %s: %s %s\n' "$1" "$2" "$3" >&2
}

# from_result NAME FILE: the RESULT line of a client run as a row.
from_result() {
    local line
    line=$(grep '^RESULT ' "$2" | tail -n 1 || true)
    if [[ -z $line ]]; then
        record "$1" FAIL "no result: $(tail -n 1 "$2")"
        return
    fi
    line=${line#RESULT }
    record "$1" "${line%% *}" "${line#* }"
}

# field KEY LINE: the value of KEY=... in a line of key=value words.
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }

# --- bring-up -------------------------------------------------------------------------

say "Redis ($FLEET_REDIS) at $(redis_url)"
redis_start
say "records: $FLEET_NAMES names + $COLD for the outage, loaded pipelined"
client setup --redis "$(redis_addr)" --names "$FLEET_NAMES" --cold "$COLD" --certs "$RUN/certs" >&2
say "3 terminators, HAProxy"
for i in 1 2 3; do
    write_terminator "$i" "${T_IPS[i - 1]}"
    start_terminator "$i"
done
write_haproxy
# Up when a TLS request through it gets an answer (a plain-HTTP probe would
# leave a 400 in the access logs, which nginx logs with the balancer's
# address: see the README's "Running a fleet").
for ((i = 0; i < 100; i++)); do
    client get --to "$LB_IP:443" --name n0.fleet.test >/dev/null 2>&1 && break
    sleep 0.05
done
masters=("$(master_pid 1)" "$(master_pid 2)" "$(master_pid 3)")

# --- 1. names through the balancer -------------------------------------------------------

say "1. $FLEET_NAMES names through the balancer"
client sweep --to "$LB_IP:443" --names "n:0:$FLEET_NAMES" --concurrency 8 >"$RUN/sweep.out" 2>&1 || true
from_result "$FLEET_NAMES names through the balancer (SAN checked)" "$RUN/sweep.out"

# --- 2. renewal reaches every terminator ----------------------------------------------------

say "2. renewals published: time until every terminator serves the new certificate"
client invalidate --redis "$(redis_addr)" --direct "$(
    IFS=,
    echo "${T_IPS[*]}"
)" --port 443 --from "$C1_IP" --name n1.fleet.test --rounds 20 --bound-ms 100 >"$RUN/invalidate.out" 2>&1 || true
from_result "renewal served by all 3 within 100 ms" "$RUN/invalidate.out"

# --- 3. client addresses through PROXY v2 --------------------------------------------------

say "3. client addresses as the terminators see them"
# Six of each in a row: round-robin spreads each kind over all three.
addr_ok=0 addr_bad=0 allowed=0 denied=0 seen=""
for ((i = 0; i < 6; i++)); do
    out=$(client get --to "$LB_IP:443" --name n2.fleet.test --path / 2>&1 || true)
    read -r server remote _ <<<"$(sed -n 's/.* body=//p' <<<"$out")"
    if [[ $remote == "$C1_IP" ]]; then addr_ok=$((addr_ok + 1)); else addr_bad=$((addr_bad + 1)); fi
    if [[ " $seen " != *" $server "* ]]; then seen="$seen $server"; fi
done
for ((i = 0; i < 6; i++)); do
    out=$(client get --to "$LB_IP:443" --name n2.fleet.test --path /allowed/ 2>&1 || true)
    if [[ $(field status "$out") == 200 ]]; then allowed=$((allowed + 1)); fi
done
for ((i = 0; i < 6; i++)); do
    out=$(client2 get --to "$LB_IP:443" --name n2.fleet.test --path /allowed/ 2>&1 || true)
    if [[ $(field status "$out") == 403 ]]; then denied=$((denied + 1)); fi
done
from_lb=$(cat "$RUN"/t?/logs/access.log | awk -v lb="$LB_IP" '$1 == lb' | wc -l)
logged=$(cat "$RUN"/t?/logs/access.log | wc -l)
terminators_seen=$(wc -w <<<"$seen")
verdict=FAIL
if ((addr_ok == 6 && allowed == 6 && denied == 6 && from_lb == 0 && terminators_seen == 3)); then
    verdict=PASS
fi
record "client address from PROXY v2, dyncert_allow" "$verdict" \
    "\$remote_addr = $C1_IP in $addr_ok/6 (other $addr_bad) on $terminators_seen terminators; /allowed/ (allow $C1_IP): $C1_IP 200 x$allowed/6, $C2_IP 403 x$denied/6; access-log lines with the balancer's address $LB_IP: $from_lb of $logged"

# --- 4. partition between terminator 1 and Redis ---------------------------------------------

say "4. terminator 1 cut off from Redis"
t1=${T_IPS[0]}
direct1=(--direct "$t1" --port 443 --from "$C1_IP")
client sweep "${direct1[@]}" --names n:300:10 >/dev/null 2>&1 || true
old=$(field serial "$(client get "${direct1[@]}" --name n300.fleet.test 2>&1 || true)")
errors_before=$(metric 1 dyncert_redis_errors_total)
warn_before=$(grep -c '\[warn\].*dyncert' "$RUN/t1/logs/error.log" || true)
ping_before=$(grep -c 'redis PING timed out' "$RUN/t1/logs/error.log" || true)
resub_before=$(grep -c 'subscribed again' "$RUN/t1/logs/error.log" || true)
# Every Redis node and sentinel: nothing reaches terminator 1, nothing
# from it gets through (dropped, not refused, as a network partition does).
for i in "${!REDIS_NODES[@]}"; do
    in_ns t1 iptables -A INPUT -s "${REDIS_IPS[i]}" -j DROP
    in_ns "${REDIS_NODES[i]}" iptables -A INPUT -s "$t1" -j DROP
done
cut=$(now_ms)
# When t1's worker logs that its subscription's PING went unanswered.
(
    for ((i = 0; i < 400; i++)); do
        if (($(grep -c 'redis PING timed out' "$RUN/t1/logs/error.log" || true) > ping_before)); then
            now_ms >"$RUN/partition-noticed"
            exit 0
        fi
        sleep 0.02
    done
) &
noticed_pid=$!
new=$(field serial "$(client publish --redis "$(redis_addr)" --name n300.fleet.test --serial 77000001 2>&1 || true)")
# Longer than valid=, so every cached entry is stale and refreshes fail.
client load "${direct1[@]}" --warm n:300:10 --seconds $((VALID_S + 3)) --concurrency 4 >"$RUN/partition-load.out" 2>&1 || true
during=$(grep '^RESULT ' "$RUN/partition-load.out" | tail -n 1 || true)
on_t1=$(field serial "$(client get "${direct1[@]}" --name n300.fleet.test 2>&1 || true)")
on_t2=$(field serial "$(client get --direct "${T_IPS[1]}" --port 443 --from "$C1_IP" --name n300.fleet.test 2>&1 || true)")
errors=$(($(metric 1 dyncert_redis_errors_total) - errors_before))
warns=$(($(grep -c '\[warn\].*dyncert' "$RUN/t1/logs/error.log" || true) - warn_before))
wait "$noticed_pid" || true
noticed=""
[[ -s $RUN/partition-noticed ]] && noticed=$(($(cat "$RUN/partition-noticed") - cut))
for i in "${!REDIS_NODES[@]}"; do
    in_ns t1 iptables -D INPUT -s "${REDIS_IPS[i]}" -j DROP
    in_ns "${REDIS_NODES[i]}" iptables -D INPUT -s "$t1" -j DROP
done
healed=$(now_ms)
# Once the partition heals the worker subscribes again (at most one
# backoff plus one connect and SUBSCRIBE), marks every cached certificate
# due, and the next handshake's refresh fetches the renewal (one fetch).
bound=$((RESUBSCRIBE_MAX_MS + REDIS_TIMEOUT_MS + FETCH_TIMEOUT_MS))
catchup=$(field elapsed_ms "$(client wait-serial "${direct1[@]}" --name n300.fleet.test --serial "$new" --timeout-ms $((bound * 3)) 2>&1 || true)")
resubs=$(($(grep -c 'subscribed again' "$RUN/t1/logs/error.log" || true) - resub_before))
verdict=FAIL
if [[ $during == "RESULT PASS "* && -n $old && -n $new && $on_t1 == "$old" && $on_t2 == "$new" ]] &&
    ((errors > 0 && warns > 0 && resubs > 0)) && [[ $noticed =~ ^[0-9]+$ ]] && ((noticed <= DETECTION_MAX_MS + LOG_POLL_SLACK_MS)) &&
    [[ $catchup =~ ^[0-9]+$ ]] && ((catchup <= bound)); then
    verdict=PASS
fi
record "partition terminator 1 / Redis" "$verdict" \
    "cut $(((healed - cut) / 1000)) s (valid=${VALID_S}s): cached names ${during#RESULT * }; renewal published meanwhile: t1 served ${on_t1:-?} (old ${old:-?}), t2 ${on_t2:-?} (new); t1 counted $errors redis errors, logged $warns warnings; dead subscription noticed ${noticed:-"not within 8000"} ms after the cut (bound $DETECTION_MAX_MS ms + $LOG_POLL_SLACK_MS ms to read the log); subscribed again $resubs time(s); new certificate on t1 ${catchup:-?} ms after the heal (bound $bound ms: re-subscribe backoff + subscribe + one fetch)"

# --- 5. terminator killed and restarted under load ----------------------------------------------

say "5. terminator 2 killed and restarted under load"
all_direct=(--direct "$(
    IFS=,
    echo "${T_IPS[*]}"
)" --port 443 --from "$C1_IP")
client sweep "${all_direct[@]}" --names n:0:200 >/dev/null 2>&1 || true
marks=$RUN/marks-terminator
: >"$marks"
client load --to "$LB_IP:443" --warm n:0:200 --seconds 8 --concurrency 8 \
    --marks "$marks" --judge terminator >"$RUN/terminator-load.out" 2>&1 &
load_pid=$!
sleep 2
echo "kill $(now_ms)" >>"$marks"
kill_ns t2
echo "dead $(now_ms)" >>"$marks"
sleep 2
start_terminator 2
echo "back $(now_ms)" >>"$marks"
masters[1]=$(master_pid 2)
wait "$load_pid" || true
from_result "terminator killed and restarted under load" "$RUN/terminator-load.out"
served=$(metric 2 dyncert_handshakes_total)
if ((served == 0)); then
    record "restarted terminator back in rotation" FAIL "terminator 2 served no handshake after its restart"
fi

# --- 6. Redis lost under load ------------------------------------------------------------

say "6. Redis ($FLEET_REDIS) lost under load"
client sweep "${all_direct[@]}" --names n:0:200 >/dev/null 2>&1 || true
marks=$RUN/marks-redis
: >"$marks"
client load --to "$LB_IP:443" --warm n:0:200 --cold "c:0:$COLD" --seconds 10 --concurrency 8 \
    --marks "$marks" --judge redis --fetch-timeout-ms "$FETCH_TIMEOUT_MS" --up-means "$UP_MEANS" >"$RUN/redis-load.out" 2>&1 &
load_pid=$!
sleep 2
redis_before_failure
echo "down $(now_ms)" >>"$marks"
redis_fail
redis_recover
up=$(now_ms)
echo "up $up" >>"$marks"
# Invalidations reach a terminator again once its worker has subscribed
# again (backoff up to 1 s, core/src/fetch/invalidate.rs).
subscribed=""
for ((i = 0; i < 500; i++)); do
    if [[ $(redis_subscribers) == 3 ]]; then
        subscribed=$(($(now_ms) - up))
        break
    fi
    sleep 0.02
done
wait "$load_pid" || true
from_result "$OUTAGE_ROW" "$RUN/redis-load.out"
verdict=FAIL
if [[ -n $subscribed ]] && ((subscribed <= RESUBSCRIBE_MAX_MS + FETCH_TIMEOUT_MS)); then
    client invalidate --redis "$(redis_addr)" "${all_direct[@]}" --name n1.fleet.test \
        --rounds 3 --bound-ms 100 >"$RUN/invalidate-after.out" 2>&1 || true
    if grep -q '^RESULT PASS ' "$RUN/invalidate-after.out"; then verdict=PASS; fi
fi
record "invalidations again after the Redis outage" "$verdict" \
    "all 3 terminators (one worker each) subscribed again ${subscribed:-"not within 10 000"} ms after $UP_MEANS (bound $((RESUBSCRIBE_MAX_MS + FETCH_TIMEOUT_MS)) ms); then $(sed -n 's/^RESULT //p' "$RUN/invalidate-after.out" 2>/dev/null)"
restarted=0
for i in 1 2 3; do
    [[ $(master_pid "$i") == "${masters[i - 1]}" ]] && kill -0 "${masters[i - 1]}" 2>/dev/null ||
        restarted=$((restarted + 1))
done
probe=$(client sweep "${all_direct[@]}" --names "c:$((COLD - 3)):3" 2>&1 | grep '^RESULT ' || true)
verdict=FAIL
[[ $restarted == 0 && $probe == "RESULT PASS "* ]] && verdict=PASS
record "no terminator restarted after the Redis outage" "$verdict" \
    "masters unchanged: $((3 - restarted))/3; new names on each terminator afterwards: ${probe#RESULT }"

# --- table ---------------------------------------------------------------------------------

echo
echo "fleet test: 3 terminators behind HAProxy (TCP, send-proxy-v2, round-robin), $REDIS_DESC, $FLEET_NAMES names, $(nproc) CPUs, $((SECONDS - started)) s"
printf '%-52s %-6s %s\n' scenario result figures
for row in "${rows[@]}"; do
    IFS=$'\t' read -r name verdict figures <<<"$row"
    printf '%-52s %-6s %s\n' "$name" "$verdict" "$figures"
done
if ((failed)); then
    echo "fleet-test.sh: FAIL"
    exit 1
fi
echo "fleet-test.sh: all scenarios passed"
