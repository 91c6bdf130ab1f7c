#!/usr/bin/env bash
# The test command: installs and starts RabbitMQ and SecantusDB on loopback (scripts/services.sh),
# then runs the whole suite against them. A service that cannot be started fails the run; no test
# is skipped for want of one. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
services=$(scripts/services.sh start)
eval "$services"
# The broker-cluster tests (tests/rabbit_cluster_test.rs) run on three RabbitMQ nodes of their own
# (scripts/rabbit-cluster.sh; not the node above), stopped again when the run ends.
cluster=$(scripts/rabbit-cluster.sh start)
eval "$cluster"
trap 'scripts/rabbit-cluster.sh stop >/dev/null 2>&1 || true' EXIT
# Hosts only: no credentials in the output.
host() { local rest="${1#*://}"; rest="${rest%%/*}"; echo "${rest##*@}"; }
echo "test.sh: RabbitMQ at $(host "$MESS_CHAT_AMQP_URL"), MongoDB-protocol server at $(host "$MESS_CHAT_MONGO_URL")" >&2
# schemathesis (the API fuzzer of tests/fuzz_test.rs) lives in the services' virtualenv.
venv="${MESS_CHAT_SERVICES_DIR:-$HOME/.cache/mess-chat-services}/venv"
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "test.sh: installing schemathesis into $venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check schemathesis >&2
fi
export MESS_CHAT_SCHEMATHESIS="$venv/bin/schemathesis"
# The browser test (tests/web_test.rs) needs Debian's Chromium and playwright-core from the lock;
# the README test (tests/readme_test.rs) runs the README's commands, which use curl and jq; the
# deployment test uses HAProxy (scripts/cluster.sh installs it if missing).
missing=()
for tool in chromium jq curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -d tests/web/node_modules ] || [ tests/web/package-lock.json -nt tests/web/node_modules ]; then
    npm ci --prefix tests/web --no-audit --no-fund >&2
fi
# Every test removes the queues and exchanges it declared: the broker must hold no more after the
# suite than before it (the cluster events exchange, mess-chat.events, is the deployment's own).
broker_names() {
    local node
    for node in rabbit@localhost mc1@localhost; do
        { rabbitmqctl -n "$node" -q list_queues --no-table-headers name
          rabbitmqctl -n "$node" -q list_exchanges --no-table-headers name; } 2>/dev/null \
            | { grep -v -e '^amq\.' -e '^mess-chat\.events$' -e '^$' || true; } \
            | sed "s/^/$node: /"
    done | sort
}
before="$(broker_names)"
status=0
cargo test --locked --no-fail-fast "$@" || status=$?
# The whole suite ran with classic queues; the conformance and fault suites run once more with
# quorum queues (on the one node above), as a deployment with --queue-type quorum would.
if [ "$#" -eq 0 ]; then
    echo "test.sh: the conformance and fault suites again, with --queue-type quorum" >&2
    MESS_CHAT_QUEUE_TYPE=quorum cargo test --locked --no-fail-fast --test mess_chat_test \
        --test broker_conformance --test faults || status=$?
    # The store writes the batches of many rooms together in one bulkWrite (MongoDB 8.0+); the
    # store conformance suite runs once more writing each room alone, as before 8.0.
    echo "test.sh: the store conformance suite again, writing each room alone" >&2
    MESS_CHAT_TEST_STORE_WRITES=alone cargo test --locked --no-fail-fast \
        --test store_conformance || status=$?
fi
left="$(comm -13 <(echo "$before") <(broker_names))"
if [ -n "$left" ]; then
    echo "test.sh: the suite left $(echo "$left" | wc -l) queues or exchanges on RabbitMQ:" >&2
    echo "$left" | head -20 >&2
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
