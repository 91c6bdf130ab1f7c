#!/usr/bin/env python3
"""What an idle room costs RabbitMQ: declares N rooms' worth of broker objects on the node at
127.0.0.1:5672 (a durable single-active-consumer queue, a fanout exchange bound to one inbox, a
consumer on a channel shared by 64, prefetch 256, as mess-chat makes them), reads
`rabbitmq-diagnostics memory_breakdown` before and after, prints the difference per room, and
deletes everything it declared.

    ~/.cache/mess-chat-services/venv/bin/python3 scripts/broker-room-memory.py 2000

(the services' virtualenv has `pika`; `pip install pika` elsewhere). Run it on an idle broker.
"""
import json
import subprocess
import sys
import time

import pika

SKIP = ("reserved_unallocated", "allocated_unused")


def breakdown():
    out = subprocess.run(
        ["rabbitmq-diagnostics", "memory_breakdown", "--formatter", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    return {k: v["bytes"] for k, v in json.loads(out).items() if isinstance(v, dict) and "bytes" in v}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    before = breakdown()
    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f"))
    ch = conn.channel()
    names = [f"memprobe-{i:05d}" for i in range(n)]
    inbox = "inbox.memprobe"
    try:
        for name in names:
            ch.queue_declare(name, durable=True, arguments={"x-single-active-consumer": True})
            ch.exchange_declare(name, "fanout", durable=True)
        ch.queue_declare(inbox, durable=True,
                         arguments={"x-max-length": 10000, "x-message-ttl": 604800000})
        for name in names:
            ch.queue_bind(inbox, name)
        shared = None
        for i, name in enumerate(names):
            if i % 64 == 0:
                shared = conn.channel()
                shared.basic_qos(prefetch_count=256)
            shared.basic_consume(name, lambda *args: None)
        time.sleep(3)
        after = breakdown()
    finally:
        for name in names:
            ch.queue_delete(name)
            ch.exchange_delete(name)
        ch.queue_delete(inbox)
        conn.close()
    for key in sorted(after, key=lambda k: after[k] - before.get(k, 0), reverse=True)[:6]:
        print(f"{key:24} {(after[key] - before.get(key, 0)) / n / 1024:7.1f} KiB per room")
    used = sum(v for k, v in after.items() if k not in SKIP) - sum(
        v for k, v in before.items() if k not in SKIP)
    print(f"{'in use, total':24} {used / n / 1024:7.1f} KiB per room ({n} rooms)")


if __name__ == "__main__":
    main()
