#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on loopback, for testing mess-chat against a clustered broker:
#   mc1@localhost on 127.0.0.1:5681, mc2@localhost on :5682, mc3@localhost on :5683
#   (Erlang distribution on 127.0.0.1:25681..25683, epmd on 127.0.0.1).
# It runs beside the default node (rabbit@localhost on 127.0.0.1:5672, scripts/services.sh),
# which it never touches: every rabbitmqctl call names its node, /etc/rabbitmq/* is only read
# (by Debian's scripts). Each node has its own config, plugins file (none enabled), data and
# logs under ${MESS_CHAT_RABBIT_CLUSTER_DIR:-/var/lib/rabbitmq/mess-chat-cluster}/mcN
# (log: mcN/log/mcN@localhost.log). Uses Debian's rabbitmq-server (3.10); run as root.
#
# Usage: scripts/rabbit-cluster.sh COMMAND
#   start       start the nodes that are not running, join nodes 2 and 3 to node 1 if they are
#               not clustered with it, wait until all three run in one cluster; prints on stdout
#               the one line below (all progress goes to stderr). Idempotent, quick when all is up:
#                 eval "$(scripts/rabbit-cluster.sh start)"
#                 # export MESS_CHAT_CLUSTER_AMQP_URLS='amqp://...:5681/%2f,...:5682/%2f,...:5683/%2f'
#   stop        stop the three nodes cleanly; keeps their data (a later start brings back the
#               same cluster with its durable queues)
#   destroy     stop them and delete their data (a later start makes a fresh cluster)
#   kill N      SIGKILL node N's Erlang VM (beam.smp): a crashed host
#   stop-node N stop node N cleanly (rabbitmqctl stop)
#   revive N    start node N again and wait until it runs and is back among the cluster's running
#               nodes (its data dir remembers the cluster)
#   status      which nodes run, and the cluster's running nodes (exit 0 only if all three run)
#   urls        print the export line without starting anything
set -euo pipefail

BASE_DIR="${MESS_CHAT_RABBIT_CLUSTER_DIR:-/var/lib/rabbitmq/mess-chat-cluster}"
NODES=(1 2 3)
WAIT_SECS="${MESS_CHAT_RABBIT_CLUSTER_WAIT_SECS:-120}"  # bound of every wait: a start, a stop, a join, a revive
# Open files, as the default node has (/etc/security/limits.d/mess-chat-rabbitmq.conf, written
# by scripts/services.sh): 20,000, or the hard limit if lower.
NOFILE=20000
hard_nofile=$(ulimit -Hn)
if [ "$hard_nofile" != unlimited ] && [ "$hard_nofile" -lt "$NOFILE" ]; then
    NOFILE=$hard_nofile
fi

log() { echo "rabbit-cluster.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

node_name() { echo "mc$1@localhost"; }
node_port() { echo "568$1"; }
dist_port() { echo "2568$1"; }
node_dir() { echo "$BASE_DIR/mc$1"; }
node_log() { echo "$BASE_DIR/mc$1/log/mc$1@localhost.log"; }
node_pidfile() { echo "$BASE_DIR/mc$1/mc$1.pid"; }

export_line() {
    local n urls=""
    for n in "${NODES[@]}"; do
        urls="${urls:+$urls,}amqp://guest:guest@127.0.0.1:$(node_port "$n")/%2f"
    done
    echo "export MESS_CHAT_CLUSTER_AMQP_URLS='$urls'"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# rabbitmqctl / rabbitmq-diagnostics against node N only (never the default node).
ctl() { local n=$1; shift; timeout 60 rabbitmqctl -q -n "$(node_name "$n")" "$@"; }

# The pid of node N's Erlang VM, if it runs: the beam.smp started by `rabbit boot` whose
# environment names the node (the command line does not: 3.10 names the node at boot).
node_pid() {
    local pid
    for pid in $(pgrep -x beam.smp 2>/dev/null); do
        alive "$pid" || continue
        grep -qzxF boot "/proc/$pid/cmdline" 2>/dev/null || continue
        grep -qzxF "RABBITMQ_NODENAME=$(node_name "$1")" "/proc/$pid/environ" 2>/dev/null || continue
        echo "$pid"
        return 0
    done
    return 1
}

# True if process $1 exists and is not a zombie (a killed VM may linger unreaped).
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; }

# True if node N's VM runs and its AMQP listener accepts connections (the app is up).
node_up() { node_pid "$1" >/dev/null && port_open "$(node_port "$1")"; }

# The running nodes of the cluster as node N sees them, one per line.
running_nodes() {
    ctl "$1" cluster_status --formatter json 2>/dev/null | jq -r '.running_nodes[]?'
}
# All nodes (running or not) of node N's cluster, one per line.
member_nodes() {
    ctl "$1" cluster_status --formatter json 2>/dev/null | jq -r '(.disk_nodes // [])[], (.ram_nodes // [])[]'
}

# Directories, config and plugins file of node N (rewritten each time: idempotent).
prepare_node() {
    local n=$1 dir
    dir=$(node_dir "$n")
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/mc$n.conf" <<EOF
# Written by scripts/rabbit-cluster.sh: node $(node_name "$n") of the loopback test cluster.
listeners.tcp.local = 127.0.0.1:$(node_port "$n")
cluster_name = mess-chat-cluster
EOF
    # No plugins at all (so no management or prometheus listener).
    echo '[].' >"$dir/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$dir"
}

# Launches node N in the background (does not wait). Debian's wrapper drops to user rabbitmq
# (HOME=/var/lib/rabbitmq, so the Erlang cookie is the default node's) and sources
# /etc/rabbitmq/rabbitmq-env.conf, whose NODENAME the RABBITMQ_* variables below override.
# RABBITMQ_CONFIG_FILE is given without its .conf extension (3.10 adds it).
launch_node() {
    local n=$1 dir
    dir=$(node_dir "$n")
    prepare_node "$n"
    log "$(node_name "$n"): starting on 127.0.0.1:$(node_port "$n") ($NOFILE open files, log $(node_log "$n"))"
    echo "=== $(date -Is) rabbit-cluster.sh: rabbitmq-server -detached" >>"$dir/startup.log"
    (
        exec 9>&-  # the lock (see lock()): a node must not hold it for its lifetime
        ulimit -n "$NOFILE"
        cd /
        exec env \
            RABBITMQ_NODENAME="$(node_name "$n")" \
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_NODE_PORT="$(node_port "$n")" \
            RABBITMQ_DIST_PORT="$(dist_port "$n")" \
            RABBITMQ_CONFIG_FILE="$dir/mc$n" \
            RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
            RABBITMQ_MNESIA_BASE="$dir/mnesia" \
            RABBITMQ_LOG_BASE="$dir/log" \
            RABBITMQ_PID_FILE="$(node_pidfile "$n")" \
            ERL_EPMD_ADDRESS=127.0.0.1 \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
            rabbitmq-server -detached
    ) >>"$dir/startup.log" 2>&1 </dev/null || die "$(node_name "$n"): rabbitmq-server -detached failed (see $dir/startup.log)"
}

# Waits (until the epoch second $2) for node N's app to run: its AMQP port open, then
# `await_startup`. Fails naming the node and its log if the VM exits or time runs out.
wait_node_up() {
    local n=$1 deadline=$2 name log_file
    name=$(node_name "$n")
    log_file=$(node_log "$n")
    local since=$SECONDS
    until port_open "$(node_port "$n")"; do
        if [ $((SECONDS - since)) -ge 5 ] && ! node_pid "$n" >/dev/null; then
            die "$name: its Erlang VM exited while starting (see $log_file and $(node_dir "$n")/startup.log)"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            local hint=""
            if tail -n 3 "$log_file" 2>/dev/null | grep -q 'Waiting for Mnesia tables'; then
                hint="; it waits for the other nodes of its cluster to come up: \`$0 start\` starts them all"
            fi
            die "$name: not up on 127.0.0.1:$(node_port "$n") within ${WAIT_SECS}s (see $log_file$hint)"
        fi
        sleep 1
    done
    ctl "$n" await_startup --timeout 60 >&2 || die "$name: await_startup failed (see $log_file)"
}

# A node whose VM runs but whose app was stopped (`stop_app`, e.g. a join that failed half-way)
# gets `start_app`; one still booting is left to finish.
start_app_if_stopped() {
    local n=$1 state
    state=$(ctl "$n" eval 'rabbit:is_booting() orelse rabbit:is_running().' 2>/dev/null) || return 0
    if [ "$state" = false ]; then
        log "$(node_name "$n"): VM up, app stopped -> start_app"
        ctl "$n" start_app >&2 || die "$(node_name "$n"): start_app failed (see $(node_log "$n"))"
    fi
}

# Makes node N (2 or 3) a member of node 1's cluster unless it already is. A node of another
# cluster (or a fresh one) is reset first: its data is not the cluster's.
join_node() {
    local n=$1 name
    name=$(node_name "$n")
    local members
    members=$(member_nodes 1) || die "$(node_name 1): cluster_status failed (see $(node_log 1))"
    if grep -qx "$name" <<<"$members"; then
        return 0
    fi
    log "$name: joining the cluster of $(node_name 1) (stop_app, reset, join_cluster, start_app)"
    local step out
    for step in stop_app reset "join_cluster $(node_name 1)" start_app; do
        # Their output is shown only on failure: a join prints harmless warnings and errors in
        # 3.10 (feature flags file, "Failed to create a tracked connection table").
        # shellcheck disable=SC2086 # $step is a command and its argument
        out=$(ctl "$n" $step 2>&1) || { echo "$out" >&2; die "$name: rabbitmqctl $step failed (see $(node_log "$n"))"; }
    done
}

# Waits (until the epoch second $3) for node N to be among the running nodes that node $2 sees.
wait_running_in_cluster() {
    local n=$1 asked=$2 deadline=$3
    until grep -qx "$(node_name "$n")" <<<"$(running_nodes "$asked")"; do
        [ "$(date +%s)" -lt "$deadline" ] || die "$(node_name "$n"): not among the running nodes of $(node_name "$asked") within ${WAIT_SECS}s (see $(node_log "$n"))"
        sleep 2
    done
}

# Stops node N cleanly (rabbitmqctl stop waits for its VM to exit); a no-op if it is not running.
stop_node() {
    local n=$1 name pid
    name=$(node_name "$n")
    if ! pid=$(node_pid "$n"); then
        log "$name: not running"
        return 0
    fi
    log "$name: stopping (pid $pid)"
    local deadline=$((SECONDS + WAIT_SECS))
    timeout "$WAIT_SECS" rabbitmqctl -q -n "$name" stop >&2 \
        || die "$name: rabbitmqctl stop failed (see $(node_log "$n"); \`$0 kill $n\` kills it)"
    while alive "$pid"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$name: pid $pid still alive ${WAIT_SECS}s after rabbitmqctl stop (see $(node_log "$n"); \`$0 kill $n\` kills it)"
        sleep 0.5
    done
}

kill_node() {
    local n=$1 name pid
    name=$(node_name "$n")
    pid=$(node_pid "$n") || { log "$name: not running"; return 0; }
    log "$name: kill -9 $pid (beam.smp)"
    kill -9 "$pid"
    local deadline=$((SECONDS + 30))
    while alive "$pid"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$name: pid $pid still alive 30s after SIGKILL"
        sleep 0.2
    done
}

# Serialises the commands that change the cluster (two `start`s at once would launch a node twice).
lock() {
    mkdir -p "$BASE_DIR"
    exec 9>"$BASE_DIR/.lock"
    flock -w $((WAIT_SECS * 3)) 9 || die "another rabbit-cluster.sh holds $BASE_DIR/.lock"
}

check_n() {
    case "${1:-}" in
        1 | 2 | 3) ;;
        *) die "expected a node number 1, 2 or 3, got '${1:-}'" ;;
    esac
}

need_root() {
    [ "$(id -u)" = 0 ] || die "run as root (Debian's rabbitmq scripts drop to user rabbitmq from root)"
    command -v rabbitmq-server >/dev/null 2>&1 || die "rabbitmq-server is not installed (scripts/services.sh installs it)"
    command -v jq >/dev/null 2>&1 || die "jq is missing (apt-get install jq)"
}

cmd_start() {
    local n all_up=1 deadline running
    for n in "${NODES[@]}"; do
        node_up "$n" || all_up=0
    done
    # Fast path: all up and node 1 sees all three running.
    if [ "$all_up" = 1 ] && running=$(running_nodes 1) \
        && [ "$(grep -c '^mc[123]@localhost$' <<<"$running")" = 3 ]; then
        log "cluster already up: $(tr '\n' ' ' <<<"$running")"
        export_line
        return 0
    fi
    deadline=$(($(date +%s) + WAIT_SECS))
    # Launch every stopped node at once: after a `stop`, a node waits at boot for the peers it
    # last saw running, so the three must come up together.
    for n in "${NODES[@]}"; do
        if node_pid "$n" >/dev/null; then
            port_open "$(node_port "$n")" || start_app_if_stopped "$n"
        else
            launch_node "$n"
        fi
    done
    for n in "${NODES[@]}"; do
        wait_node_up "$n" "$deadline"
        log "$(node_name "$n"): up (pid $(node_pid "$n"))"
    done
    deadline=$(($(date +%s) + WAIT_SECS))
    join_node 2
    join_node 3
    for n in "${NODES[@]}"; do
        wait_running_in_cluster "$n" 1 "$deadline"
    done
    log "cluster up: $(running_nodes 1 | tr '\n' ' ')"
    export_line
}

cmd_stop() {
    local n
    # Node 1 last: it is the one `start` joins the others to.
    for n in 3 2 1; do
        stop_node "$n"
    done
}

cmd_destroy() {
    local n
    for n in 3 2 1; do
        # A node that does not stop cleanly is killed: its data goes anyway.
        (stop_node "$n") || kill_node "$n"
    done
    case "$BASE_DIR" in
        "" | /) die "refusing to delete under '$BASE_DIR'" ;;
    esac
    for n in "${NODES[@]}"; do
        log "$(node_name "$n"): deleting $(node_dir "$n")"
        rm -rf -- "$(node_dir "$n")"
    done
}

cmd_revive() {
    local n=$1 name other="" m deadline
    name=$(node_name "$n")
    deadline=$(($(date +%s) + WAIT_SECS))
    if node_pid "$n" >/dev/null; then
        port_open "$(node_port "$n")" || start_app_if_stopped "$n"
    else
        [ -d "$(node_dir "$n")/mnesia/$name" ] || log "$name: WARNING: no data dir, it starts as a fresh node outside the cluster (use start)"
        launch_node "$n"
    fi
    # Its boot waits for a running peer of its cluster, so with all the others down this times out.
    wait_node_up "$n" "$deadline"
    log "$name: up (pid $(node_pid "$n"))"
    # Ask node 1 whether it counts N among its running nodes, or another node if node 1 is N or down.
    for m in 1 2 3; do
        if [ "$m" != "$n" ] && node_up "$m"; then
            other=$m
            break
        fi
    done
    if [ -z "$other" ]; then
        log "$name: no other node runs; it is the only running node"
        other=$n
    fi
    wait_running_in_cluster "$n" "$other" "$deadline"
    log "$name: running in the cluster; $(node_name "$other") sees: $(running_nodes "$other" | tr '\n' ' ')"
}

cmd_status() {
    local n pid up=0 asked=""
    for n in "${NODES[@]}"; do
        if pid=$(node_pid "$n"); then
            if port_open "$(node_port "$n")"; then
                echo "$(node_name "$n") 127.0.0.1:$(node_port "$n") running (pid $pid)"
                up=$((up + 1))
                [ -n "$asked" ] || asked=$n
            else
                echo "$(node_name "$n") 127.0.0.1:$(node_port "$n") VM up (pid $pid), AMQP port closed (booting or app stopped)"
            fi
        else
            echo "$(node_name "$n") 127.0.0.1:$(node_port "$n") not running"
        fi
    done
    if [ -n "$asked" ]; then
        echo "running nodes seen by $(node_name "$asked"): $(running_nodes "$asked" | tr '\n' ' ')"
    fi
    [ "$up" = 3 ]
}

case "${1:-}" in
    start) need_root; lock; cmd_start ;;
    stop) need_root; lock; cmd_stop ;;
    destroy) need_root; lock; cmd_destroy ;;
    kill) check_n "${2:-}"; need_root; lock; kill_node "$2" ;;
    stop-node) check_n "${2:-}"; need_root; lock; stop_node "$2" ;;
    revive) check_n "${2:-}"; need_root; lock; cmd_revive "$2" ;;
    status) need_root; cmd_status ;;
    urls) export_line ;;
    *) usage ;;
esac
