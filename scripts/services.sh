#!/usr/bin/env bash
# Install (if missing) and start the services mess-chat needs, on loopback only:
#   RabbitMQ on 127.0.0.1:5672 and SecantusDB (MongoDB wire protocol) on
#   127.0.0.1:${MESS_CHAT_MONGO_PORT:-27017}.
# Prints shell-evaluable export lines on stdout; all progress goes to stderr:
#   eval "$(scripts/services.sh)"
# Subcommands: start (default), start-mongo, stop-mongo.
set -euo pipefail

SERVICES_DIR="${MESS_CHAT_SERVICES_DIR:-$HOME/.cache/mess-chat-services}"
VENV="$SERVICES_DIR/venv"
AMQP_PORT=5672
MONGO_PORT="${MESS_CHAT_MONGO_PORT:-27017}"
MONGO_DATA="$SERVICES_DIR/data-$MONGO_PORT"
MONGO_LOG="$SERVICES_DIR/secantusd-$MONGO_PORT.log"
MONGO_PID="$SERVICES_DIR/secantusd-$MONGO_PORT.pid"
WAIT_SECS=60
# Open files RabbitMQ needs: a durable queue can hold a few (index, journal), and Debian's default
# of 1,024 let a broker with 2,500 queues take over 10 minutes to restart. README "Operations".
# 65,536, or the machine's hard limit if lower.
RABBIT_NOFILE_MIN=65536
hard_nofile=$(ulimit -Hn)
if [ "$hard_nofile" != unlimited ] && [ "$hard_nofile" -lt "$RABBIT_NOFILE_MIN" ]; then
    RABBIT_NOFILE_MIN=$hard_nofile
fi

AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/?retryWrites=false&directConnection=true"

log() { echo "services.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

apt_install() {
    log "apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq -o Dpkg::Options::=--force-confold "$@" >&2
}

# ---------------------------------------------------------------- RabbitMQ
rabbit_ping() { timeout 20 rabbitmqctl -q ping >/dev/null 2>&1; }

# The running RabbitMQ node's soft open-files limit (empty if it cannot be read).
rabbit_nofile() {
    local pid
    pid=$(pgrep -o -f 'beam.smp.*rabbit' 2>/dev/null) || return 0
    awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null || true
}

# Raises the open-files limit of a RabbitMQ started from here. Debian's wrapper starts the node
# with `su rabbitmq`, whose PAM session applies /etc/security/limits*, so the limit goes there
# (and, for a node started by the init script, in /etc/default/rabbitmq-server).
raise_nofile() {
    ulimit -n "$RABBIT_NOFILE_MIN"
    if [ -d /etc/security/limits.d ] && [ -w /etc/security/limits.d ]; then
        printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' \
            "$RABBIT_NOFILE_MIN" "$RABBIT_NOFILE_MIN" >/etc/security/limits.d/mess-chat-rabbitmq.conf
    fi
    if [ -w /etc/default ]; then
        sed -i '/^ulimit -n/d' /etc/default/rabbitmq-server 2>/dev/null || true
        echo "ulimit -n $RABBIT_NOFILE_MIN" >>/etc/default/rabbitmq-server
    fi
}

ensure_rabbitmq() {
    if port_open "$AMQP_PORT"; then
        local nofile queues
        nofile=$(rabbit_nofile)
        if [ -z "$nofile" ] || [ "$nofile" -ge "$RABBIT_NOFILE_MIN" ]; then
            log "rabbitmq: already listening on 127.0.0.1:$AMQP_PORT (open files: ${nofile:-unknown})"
            return
        fi
        queues=$(timeout 30 rabbitmqctl -q list_queues --no-table-headers name 2>/dev/null | wc -l)
        if [ "$queues" -ne 0 ]; then
            log "rabbitmq: WARNING: running with $nofile open files (< $RABBIT_NOFILE_MIN) and $queues queues; left as it is: restart it with scripts/services.sh once it holds none (rabbitmqctl stop first)"
            return
        fi
        # An empty broker started with too few open files (Debian's default 1,024): restarted
        # once with enough. One holding queues is left alone (warned about above).
        log "rabbitmq: running with $nofile open files (< $RABBIT_NOFILE_MIN) and no queues -> restarting it with more"
        timeout 60 rabbitmqctl -q stop >&2 || die "rabbitmqctl stop failed"
        local deadline=$((SECONDS + WAIT_SECS))
        while port_open "$AMQP_PORT"; do
            [ "$SECONDS" -lt "$deadline" ] || die "rabbitmq did not stop within ${WAIT_SECS}s"
            sleep 1
        done
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        # Loopback-only config before the package exists, so even a start by
        # the package's postinst cannot bind 0.0.0.0. Never overwrite.
        mkdir -p /etc/rabbitmq
        [ -e /etc/rabbitmq/rabbitmq-env.conf ] || cat >/etc/rabbitmq/rabbitmq-env.conf <<'EOF'
NODENAME=rabbit@localhost
NODE_IP_ADDRESS=127.0.0.1
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
        [ -e /etc/rabbitmq/rabbitmq.conf ] || echo "listeners.tcp.local = 127.0.0.1:$AMQP_PORT" >/etc/rabbitmq/rabbitmq.conf
        apt_install rabbitmq-server
    fi
    raise_nofile
    if rabbit_ping; then
        # Node is up but the app was stopped (e.g. `rabbitmqctl stop_app`).
        log "rabbitmq: node up, app stopped -> rabbitmqctl start_app"
        timeout 60 rabbitmqctl -q start_app >&2 || die "rabbitmqctl start_app failed"
    else
        log "rabbitmq: starting rabbitmq-server -detached (loopback, $(ulimit -n) open files)"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$AMQP_PORT" \
            ERL_EPMD_ADDRESS=127.0.0.1 rabbitmq-server -detached >&2 \
            || die "rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
    fi
    local deadline=$((SECONDS + WAIT_SECS))
    until port_open "$AMQP_PORT"; do
        [ "$SECONDS" -lt "$deadline" ] || die "rabbitmq did not listen on 127.0.0.1:$AMQP_PORT within ${WAIT_SECS}s (see /var/log/rabbitmq/)"
        sleep 1
    done
    timeout "$WAIT_SECS" rabbitmqctl -q await_startup >&2 || die "rabbitmqctl await_startup failed"
    log "rabbitmq: up on 127.0.0.1:$AMQP_PORT (open files: $(rabbit_nofile))"
}

# -------------------------------------------------------------- SecantusDB
mongo_ping() {
    [ -x "$VENV/bin/python" ] || return 1
    timeout 10 "$VENV/bin/python" - "$MONGO_URL" >/dev/null 2>&1 <<'EOF'
import sys, pymongo
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=3000)
c.admin.command("ping")
EOF
}

ensure_venv() {
    if [ ! -x "$VENV/bin/secantusd-py" ]; then
        mkdir -p "$SERVICES_DIR"
        if [ ! -x "$VENV/bin/python" ]; then
            log "secantusdb: creating venv $VENV"
            python3 -m venv "$VENV" >&2 || {
                rm -rf "$VENV"; apt_install python3-venv; python3 -m venv "$VENV" >&2
            } || die "cannot create venv $VENV"
        fi
        log "secantusdb: pip install --pre SecantusDB"
        "$VENV/bin/pip" install -q --disable-pip-version-check --pre SecantusDB >&2 \
            || die "pip install --pre SecantusDB failed"
    fi
    # pymongo is used for the readiness ping (SecantusDB depends on it).
    "$VENV/bin/python" -c 'import pymongo' 2>/dev/null \
        || "$VENV/bin/pip" install -q --disable-pip-version-check pymongo >&2
}

mongo_pid_alive() {
    local pid
    [ -f "$MONGO_PID" ] && pid="$(cat "$MONGO_PID")" && [ -n "$pid" ] \
        && kill -0 "$pid" 2>/dev/null && grep -q secantusd "/proc/$pid/cmdline" 2>/dev/null
}

ensure_mongo() {
    ensure_venv
    if port_open "$MONGO_PORT"; then
        mongo_ping && { log "secantusdb: already up on 127.0.0.1:$MONGO_PORT"; return; }
        mongo_pid_alive || die "127.0.0.1:$MONGO_PORT is taken by something that does not answer a mongo ping"
        log "secantusdb: our daemon is listening but not answering yet; waiting"
    elif mongo_pid_alive; then
        log "secantusdb: our daemon (pid $(cat "$MONGO_PID")) is starting; waiting"
    else
        mkdir -p "$MONGO_DATA"
        # Empty config + --config: no stray ./ or ~/.secantus secantusd.toml is picked up.
        : >"$SERVICES_DIR/secantusd.toml"
        log "secantusdb: starting on 127.0.0.1:$MONGO_PORT (data $MONGO_DATA, log $MONGO_LOG)"
        rm -f "$MONGO_PID"
        # `setsid --fork` returns at once, leaving no process of ours waiting on the daemon. The
        # inner shell writes its own pid, closes every descriptor it inherited beyond stdio (a
        # process holding a caller's pipe open makes that caller wait forever), then execs (same
        # pid) the daemon.
        (cd "$SERVICES_DIR" && setsid --fork bash -c '
            echo $$ >"$0"
            for fd in /proc/$$/fd/*; do
                fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"
            done
            exec nohup "$@"' "$MONGO_PID" \
            "$VENV/bin/secantusd-py" --config "$SERVICES_DIR/secantusd.toml" \
            --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$MONGO_DATA" \
            --log-level WARNING >>"$MONGO_LOG" 2>&1 </dev/null)
    fi
    local started=$SECONDS deadline=$((SECONDS + WAIT_SECS))
    until port_open "$MONGO_PORT" && mongo_ping; do
        if [ "$SECONDS" -ge "$deadline" ] || { [ "$SECONDS" -ge $((started + 5)) ] && ! mongo_pid_alive; }; then
            tail -n 20 "$MONGO_LOG" >&2 2>/dev/null || true
            die "secantusdb did not answer a ping on 127.0.0.1:$MONGO_PORT (log: $MONGO_LOG)"
        fi
        sleep 0.3
    done
    log "secantusdb: up on 127.0.0.1:$MONGO_PORT (pid $(cat "$MONGO_PID"))"
}

stop_mongo() {
    if ! mongo_pid_alive; then
        rm -f "$MONGO_PID"
        port_open "$MONGO_PORT" && die "127.0.0.1:$MONGO_PORT is served by a process this script did not start; not stopping it"
        log "secantusdb: not running"
        return
    fi
    local pid; pid="$(cat "$MONGO_PID")"
    log "secantusdb: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then log "secantusdb: SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null || true; break; fi
        sleep 0.2
    done
    rm -f "$MONGO_PID"
    log "secantusdb: stopped"
}

case "${1:-start}" in
    start)
        ensure_rabbitmq
        ensure_mongo
        printf "export MESS_CHAT_AMQP_URL='%s'\n" "$AMQP_URL"
        printf "export MESS_CHAT_MONGO_URL='%s'\n" "$MONGO_URL"
        ;;
    start-mongo)
        ensure_mongo
        printf "export MESS_CHAT_MONGO_URL='%s'\n" "$MONGO_URL"
        ;;
    stop-mongo) stop_mongo ;;
    *) die "usage: $0 [start|start-mongo|stop-mongo]" ;;
esac
