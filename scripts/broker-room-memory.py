#!/usr/bin/env python3
"""What an idle room costs RabbitMQ: declares N rooms' worth of broker objects (a durable
single-active-consumer queue, a fanout exchange bound to one inbox, a consumer on a channel
shared by 64, prefetch 256, as mess-chat makes them), reads `rabbitmq-diagnostics
memory_breakdown` of every node before and after, prints the difference per room, and deletes
everything it declared.

    ~/.cache/mess-chat-services/venv/bin/python3 scripts/broker-room-memory.py 2000
    ~/.cache/mess-chat-services/venv/bin/python3 scripts/broker-room-memory.py 2000 --quorum

Without `--quorum`: classic queues on the node at 127.0.0.1:5672. With it: quorum queues (and a
quorum inbox), as `--queue-type quorum` makes them, on the three-node cluster of
`scripts/rabbit-cluster.sh start` (mc1..3@localhost, 127.0.0.1:5681-5683); every queue has a
member on each node, so each node's share is printed, then the sum.

(the services' virtualenv has `pika`; `pip install pika` elsewhere). Run it on an idle broker.
"""
import json
import subprocess
import sys
import time

import pika

SKIP = ("reserved_unallocated", "allocated_unused")
CLUSTER = [("mc1@localhost", 5681), ("mc2@localhost", 5682), ("mc3@localhost", 5683)]


def breakdown(node):
    command = ["rabbitmq-diagnostics", "memory_breakdown", "--formatter", "json"]
    if node:
        command[1:1] = ["-n", node]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {k: v["bytes"] for k, v in json.loads(out).items() if isinstance(v, dict) and "bytes" in v}


def in_use(memory):
    return sum(v for k, v in memory.items() if k not in SKIP)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quorum = "--quorum" in sys.argv
    n = int(args[0]) if args else 2000
    nodes = CLUSTER if quorum else [(None, 5672)]
    kind = {"x-queue-type": "quorum"} if quorum else {}
    before = {node: breakdown(node) for node, _ in nodes}
    port = nodes[0][1]
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/%2f"))
    ch = conn.channel()
    names = [f"memprobe-{i:05d}" for i in range(n)]
    inbox = "inbox.memprobe"
    shared = []
    try:
        for name in names:
            ch.queue_declare(name, durable=True,
                             arguments={**kind, "x-single-active-consumer": True})
            ch.exchange_declare(name, "fanout", durable=True)
        ch.queue_declare(inbox, durable=True,
                         arguments={**kind, "x-max-length": 10000, "x-message-ttl": 604800000})
        for name in names:
            ch.queue_bind(inbox, name)
        for i, name in enumerate(names):
            if i % 64 == 0:
                shared.append(conn.channel())
                shared[-1].basic_qos(prefetch_count=256)
            shared[-1].basic_consume(name, lambda *args: None)
        time.sleep(3)
        after = {node: breakdown(node) for node, _ in nodes}
    finally:
        # Consumers go before their queues (RabbitMQ 3.10 closes the connection with an internal
        # error when a consumer of a deleted quorum queue is cancelled).
        for channel in shared:
            channel.close()
        for name in names:
            ch.queue_delete(name)
            ch.exchange_delete(name)
        ch.queue_delete(inbox)
        conn.close()
    total = 0
    for node, _ in nodes:
        a, b = after[node], before[node]
        if quorum:
            print(f"node {node}")
        for key in sorted(a, key=lambda k: a[k] - b.get(k, 0), reverse=True)[:6]:
            print(f"  {key:24} {(a[key] - b.get(key, 0)) / n / 1024:7.1f} KiB per room")
        used = in_use(a) - in_use(b)
        total += used
        print(f"  {'in use, total':24} {used / n / 1024:7.1f} KiB per room ({n} rooms)")
    if quorum:
        print(f"all three nodes            {total / n / 1024:7.1f} KiB per room ({n} rooms)")


if __name__ == "__main__":
    main()
