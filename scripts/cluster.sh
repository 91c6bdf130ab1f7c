#!/usr/bin/env bash
# Run a mess-chat deployment on loopback: N `mess-chat serve` instances on one RabbitMQ and one
# MongoDB database (they behave as one: cluster events go over the broker, the store is the
# registry), behind an HAProxy load balancer.
#   instances on 127.0.0.1:$((PORT+1)) .. 127.0.0.1:$((PORT+N)), HAProxy on 127.0.0.1:$PORT,
#   PORT=${MESS_CHAT_CLUSTER_PORT:-8080}; state, pids, logs and haproxy.cfg in
#   ${MESS_CHAT_CLUSTER_DIR:-~/.cache/mess-chat-cluster}.
# Starts RabbitMQ and SecantusDB through scripts/services.sh and installs Debian's haproxy if it
# is missing (our own haproxy process and config; the system service is not used). The binary is
# ${MESS_CHAT_BIN:-target/release/mess-chat} (built if missing); every instance gets the
# database ${MESS_CHAT_MONGO_DB:-mess_chat} and the caller's other MESS_CHAT_* variables.
# `start` prints a shell-evaluable export line on stdout; all progress goes to stderr:
#   eval "$(scripts/cluster.sh start 3)"   # exports MESS_CHAT_SERVER (the load balancer)
# Subcommands: start [N] (default 3; idempotent), stop, status (exit 0 only if all is up).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${MESS_CHAT_CLUSTER_DIR:-$HOME/.cache/mess-chat-cluster}"
PORT="${MESS_CHAT_CLUSTER_PORT:-8080}"
STATE="$RUN_DIR/cluster.state"
HAPROXY_CFG="$RUN_DIR/haproxy.cfg"
HAPROXY_PID="$RUN_DIR/haproxy.pid"
HAPROXY_LOG="$RUN_DIR/haproxy.log"
WAIT_SECS=30
STOP_SECS=15

log() { echo "cluster.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# The HTTP status of GET http://127.0.0.1:$1$2 ("000" if nothing answers).
http_status() {
    local code
    if command -v curl >/dev/null 2>&1; then
        # --noproxy: loopback only, whatever http_proxy says.
        code="$(curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 3 \
            "http://127.0.0.1:$1$2" 2>/dev/null)" || true
    else
        code="$(timeout 3 bash -c '
            exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
            printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$1" >&3
            read -r _ code _ <&3 && echo "$code"' "$1" "$2" 2>/dev/null)" || true
    fi
    echo "${code:-000}"
}
answers_200() { [ "$(http_status "$1" "$2")" = 200 ]; }

# The pid recorded in file $1, if that process is alive and its command line contains $2.
live_pid() {
    local pid
    [ -f "$1" ] && pid="$(cat "$1" 2>/dev/null)" && [[ "$pid" =~ ^[0-9]+$ ]] \
        && kill -0 "$pid" 2>/dev/null \
        && grep -qa -- "$2" "/proc/$pid/cmdline" 2>/dev/null \
        && echo "$pid"
}

instance_port() { echo $((PORT + $1)); }
instance_pid_file() { echo "$RUN_DIR/instance-$1.pid"; }
instance_log() { echo "$RUN_DIR/instance-$1.log"; }
instance_pid() { live_pid "$(instance_pid_file "$1")" mess-chat; }
haproxy_pid() { live_pid "$HAPROXY_PID" haproxy; }

# ------------------------------------------------------------------ prerequisites
ensure_services() {
    local exports
    exports="$("$ROOT/scripts/services.sh" start)" || die "scripts/services.sh start failed"
    eval "$exports"
    [ -n "${MESS_CHAT_AMQP_URL:-}" ] && [ -n "${MESS_CHAT_MONGO_URL:-}" ] \
        || die "scripts/services.sh did not export MESS_CHAT_AMQP_URL and MESS_CHAT_MONGO_URL"
    export MESS_CHAT_AMQP_URL MESS_CHAT_MONGO_URL
    export MESS_CHAT_MONGO_DB="${MESS_CHAT_MONGO_DB:-mess_chat}"
}

# Debian's haproxy package, without its system service: ours is a separate process with its own
# config. While installing, a policy-rc.d that forbids every start keeps the package's postinst
# from starting the service (unless the machine already has a policy-rc.d, which is then obeyed).
POLICY_RC_D=/usr/sbin/policy-rc.d
ensure_haproxy() {
    command -v haproxy >/dev/null 2>&1 && return
    log "apt-get install haproxy"
    local ours=""
    if [ ! -e "$POLICY_RC_D" ]; then
        printf '#!/bin/sh\n# scripts/cluster.sh: no service starts while it installs haproxy\nexit 101\n' >"$POLICY_RC_D"
        chmod 755 "$POLICY_RC_D"
        ours=1
        trap 'rm -f "$POLICY_RC_D"' EXIT
    fi
    local rc=0
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >&2 \
        || rc=$?
    if [ -n "$ours" ]; then rm -f "$POLICY_RC_D"; trap - EXIT; fi
    [ "$rc" -eq 0 ] || die "apt-get install haproxy failed"
    command -v haproxy >/dev/null 2>&1 || die "haproxy is still not on PATH after installing it"
}

# Sets BIN to an absolute path of the mess-chat binary, building it if it is the default one
# and missing.
ensure_binary() {
    if [ -n "${MESS_CHAT_BIN:-}" ]; then
        BIN="$(realpath -m -- "$MESS_CHAT_BIN")"
        [ -x "$BIN" ] || die "MESS_CHAT_BIN=$MESS_CHAT_BIN is not an executable file"
        return
    fi
    BIN="$ROOT/target/release/mess-chat"
    if [ ! -e "$BIN" ]; then
        log "building $BIN (cargo build --release)"
        (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed"
    fi
    [ -x "$BIN" ] || die "$BIN is not an executable file"
}

# ------------------------------------------------------------------ daemons
# Runs "$@" as a daemon: `setsid --fork` returns at once, leaving no process of ours waiting on
# it. The inner shell writes its own pid to $1, closes every descriptor it inherited beyond stdio
# (a process holding a caller's pipe open makes that caller, say `cargo test`, wait forever),
# then execs (same pid) the command, with stdout and stderr appended to $2.
daemon() {
    local pid_file=$1 log_file=$2; shift 2
    rm -f "$pid_file"
    (cd "$RUN_DIR" && setsid --fork bash -c '
        echo $$ >"$0"
        for fd in /proc/$$/fd/*; do
            fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"
        done
        exec nohup "$@"' "$pid_file" "$@" >>"$log_file" 2>&1 </dev/null)
}

start_instance() {
    local i=$1 port; port="$(instance_port "$1")"
    if instance_pid "$i" >/dev/null; then
        log "instance $i: already running (pid $(instance_pid "$i"))"
        return
    fi
    port_open "$port" && die "127.0.0.1:$port (instance $i) is taken by a process this script did not start"
    log "instance $i: starting on 127.0.0.1:$port (log $(instance_log "$i"))"
    daemon "$(instance_pid_file "$i")" "$(instance_log "$i")" "$BIN" serve --listen "127.0.0.1:$port"
}

wait_instance() {
    local i=$1 port started=$SECONDS deadline=$((SECONDS + WAIT_SECS))
    port="$(instance_port "$1")"
    until answers_200 "$port" /healthz; do
        if [ "$SECONDS" -ge $((started + 2)) ] && ! instance_pid "$i" >/dev/null; then
            tail -n 30 "$(instance_log "$i")" >&2 2>/dev/null || true
            die "instance $i exited without answering GET http://127.0.0.1:$port/healthz (log: $(instance_log "$i"))"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$(instance_log "$i")" >&2 2>/dev/null || true
            die "instance $i did not answer GET http://127.0.0.1:$port/healthz within ${WAIT_SECS}s (log: $(instance_log "$i"))"
        fi
        sleep 0.2
    done
}

write_haproxy_cfg() {
    local n=$1 i
    {
        cat <<EOF
# Written by scripts/cluster.sh: HAProxy in front of $n mess-chat instances, loopback only.
global
    maxconn 4096
    # No stats page and no admin socket: nothing listens but the frontend below.

defaults
    mode http
    option redispatch
    retries 2
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    # WebSockets (a room's live feed): once upgraded, a connection is a tunnel.
    timeout tunnel 1h
    timeout http-request 10s
    # A /readyz pings the broker and the store: give it more than the 1s between checks.
    timeout check 2s

frontend mess_chat
    bind 127.0.0.1:$PORT
    default_backend mess_chat_instances

backend mess_chat_instances
    balance roundrobin
    option httpchk GET /readyz
EOF
        for ((i = 1; i <= n; i++)); do
            echo "    server instance$i 127.0.0.1:$(instance_port "$i") check inter 1s fall 2 rise 1"
        done
    } >"$HAPROXY_CFG"
}

start_haproxy() {
    local n=$1
    if haproxy_pid >/dev/null; then
        log "haproxy: already running (pid $(haproxy_pid))"
    else
        port_open "$PORT" && die "127.0.0.1:$PORT (load balancer) is taken by a process this script did not start"
        write_haproxy_cfg "$n"
        haproxy -c -q -f "$HAPROXY_CFG" >&2 || die "haproxy rejects $HAPROXY_CFG"
        log "haproxy: starting on 127.0.0.1:$PORT (config $HAPROXY_CFG)"
        rm -f "$HAPROXY_PID"
        # haproxy -D forks its daemon and exits (non-zero if it cannot bind). It runs in a
        # subshell that closes every descriptor beyond stdio first, so the daemon holds no pipe of
        # our caller's.
        (
            for fd in /proc/$BASHPID/fd/*; do
                fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"
            done
            exec haproxy -D -p "$HAPROXY_PID" -f "$HAPROXY_CFG"
        ) >>"$HAPROXY_LOG" 2>&1 </dev/null || {
            tail -n 20 "$HAPROXY_LOG" >&2 2>/dev/null || true
            die "haproxy did not start (log: $HAPROXY_LOG)"
        }
    fi
    local deadline=$((SECONDS + WAIT_SECS))
    until answers_200 "$PORT" /healthz; do
        if [ "$SECONDS" -ge "$deadline" ] || ! haproxy_pid >/dev/null; then
            tail -n 20 "$HAPROXY_LOG" >&2 2>/dev/null || true
            die "GET http://127.0.0.1:$PORT/healthz through haproxy did not answer 200 within ${WAIT_SECS}s"
        fi
        sleep 0.2
    done
}

# What the running deployment was started with: N, the ports, the binary and the instances'
# environment (hashed: the URLs may hold passwords). A change means stop and start again.
fingerprint() {
    {
        echo "n=$1 port=$PORT bin=$BIN"
        env | grep '^MESS_CHAT_' | grep -v -e '^MESS_CHAT_SERVER=' -e '^MESS_CHAT_TOKEN=' \
            | LC_ALL=C sort || true
    } | sha256sum | cut -d' ' -f1
}

start() {
    local n=$1 i
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '$n'"
    [[ "$PORT" =~ ^[1-9][0-9]*$ ]] && [ $((PORT + n)) -le 65535 ] \
        || die "MESS_CHAT_CLUSTER_PORT=$PORT leaves no room for $n instances above it"
    mkdir -p "$RUN_DIR"
    chmod 700 "$RUN_DIR"
    ensure_services
    ensure_haproxy
    ensure_binary
    local want; want="$(fingerprint "$n")"
    if [ -f "$STATE" ] && [ "$(recorded fingerprint)" != "$want" ]; then
        log "the deployment in $RUN_DIR was started with other settings; restarting it"
        stop
    elif [ ! -f "$STATE" ] && any_recorded; then
        log "pid files without a record of their settings in $RUN_DIR; restarting"
        stop
    fi
    printf 'fingerprint=%s\nport=%s\nn=%s\n' "$want" "$PORT" "$n" >"$STATE"
    for ((i = 1; i <= n; i++)); do
        start_instance "$i"
        wait_instance "$i"
    done
    start_haproxy "$n"
    for ((i = 1; i <= n; i++)); do
        log "instance $i on http://127.0.0.1:$(instance_port "$i") (pid $(instance_pid "$i"), log $(instance_log "$i"))"
    done
    log "haproxy on http://127.0.0.1:$PORT (pid $(haproxy_pid), config $HAPROXY_CFG), database $MESS_CHAT_MONGO_DB"
    printf "export MESS_CHAT_SERVER='http://127.0.0.1:%s'\n" "$PORT"
}

# A value (fingerprint, port, n) recorded in $STATE by the last start.
recorded() { sed -n "s/^$1=//p" "$STATE" 2>/dev/null || true; }

any_recorded() { compgen -G "$RUN_DIR/instance-*.pid" >/dev/null || [ -f "$HAPROXY_PID" ]; }

# SIGTERM to the process recorded in pid file $1 if it is alive and its command line contains
# $2 (else the file is only removed); prints the pid signalled.
signal_pid_file() {
    local pid_file=$1 pattern=$2 name=$3 pid
    [ -f "$pid_file" ] || return 0
    if ! pid="$(live_pid "$pid_file" "$pattern")"; then
        log "$name: not running"
        rm -f "$pid_file"
        return
    fi
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    echo "$pid"
}

# Waits up to STOP_SECS for pid $1 to exit, then SIGKILLs it; removes pid file $2.
reap() {
    local pid=$1 pid_file=$2 name=$3 deadline=$((SECONDS + STOP_SECS))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$name: SIGKILL $pid"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$pid_file"
}

stop() {
    [ -d "$RUN_DIR" ] || { log "nothing recorded in $RUN_DIR"; return; }
    local pid pid_file i pids=() files=() names=()
    # The load balancer first, so no request reaches an instance on its way out.
    pid="$(signal_pid_file "$HAPROXY_PID" haproxy haproxy)"
    [ -z "$pid" ] || reap "$pid" "$HAPROXY_PID" haproxy
    # Then every instance at once (each takes a moment to leave gracefully), waiting for each.
    for pid_file in "$RUN_DIR"/instance-*.pid; do
        [ -e "$pid_file" ] || continue
        i="${pid_file##*/instance-}"; i="${i%.pid}"
        pid="$(signal_pid_file "$pid_file" mess-chat "instance $i")"
        [ -z "$pid" ] || { pids+=("$pid"); files+=("$pid_file"); names+=("instance $i"); }
    done
    for i in "${!pids[@]}"; do
        reap "${pids[$i]}" "${files[$i]}" "${names[$i]}"
    done
    rm -f "$STATE"
    log "stopped"
}

status() {
    local n=0 down=0 pid_file i pid port
    # The ports the deployment was started with, whatever MESS_CHAT_CLUSTER_PORT says now.
    port="$(recorded port)"; PORT="${port:-$PORT}"
    for pid_file in "$RUN_DIR"/instance-*.pid; do
        [ -e "$pid_file" ] || continue
        i="${pid_file##*/instance-}"; i="${i%.pid}"
        port="$(instance_port "$i")"
        n=$((n + 1))
        if pid="$(instance_pid "$i")" && answers_200 "$port" /healthz; then
            echo "instance $i http://127.0.0.1:$port pid $pid: up (readyz $(http_status "$port" /readyz))"
        else
            echo "instance $i http://127.0.0.1:$port: down"
            down=$((down + 1))
        fi
    done
    if pid="$(haproxy_pid)" && answers_200 "$PORT" /healthz; then
        echo "haproxy http://127.0.0.1:$PORT pid $pid: up"
    else
        echo "haproxy http://127.0.0.1:$PORT: down"
        down=$((down + 1))
    fi
    [ "$n" -gt 0 ] || { echo "no instance recorded in $RUN_DIR"; return 1; }
    [ "$down" -eq 0 ]
}

case "${1:-}" in
    start)
        [ $# -le 2 ] || die "usage: $0 start [N] | stop | status"
        start "${2:-3}"
        ;;
    stop) [ $# -eq 1 ] || die "usage: $0 start [N] | stop | status"; stop ;;
    status) [ $# -eq 1 ] || die "usage: $0 start [N] | stop | status"; status ;;
    *) die "usage: $0 start [N] | stop | status" ;;
esac
