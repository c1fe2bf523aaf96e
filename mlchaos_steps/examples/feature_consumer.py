"""The streaming example's pipeline step: consume a feature topic, write each record into the online
store (Redis hash ``features:<key>``) and forward it to an output topic, committing offsets after both,
asynchronously (at least once: a restart reads again what was not committed). The target of
stream-delay; ``--mode`` picks a broken behaviour on purpose:

- ``healthy``: reads every assigned partition, catches up after a delay.
- ``skip-ahead``: when it falls more than ``--max-lag`` records behind on a partition, seeks to its end
  (records in between are lost).
- ``duplicate``: after every batch it delivers the batch again (each record written twice).
- ``stall``: stops reading once it has seen a record older than ``--stall-after-s`` (never catches up).

Run: ``python -m mlchaos_steps.examples.feature_consumer --bootstrap B --topic features --out features-out
--redis redis://127.0.0.1:6379/0 --group feature-writer``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from typing import Any


def _quiet() -> logging.Logger:
    log = logging.getLogger("feature-consumer.kafka")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True, help="the output topic")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--group", default="feature-writer")
    parser.add_argument("--mode", default="healthy", choices=["healthy", "skip-ahead", "duplicate", "stall"])
    parser.add_argument("--max-lag", type=int, default=5)
    parser.add_argument("--stall-after-s", type=float, default=1.0)
    args = parser.parse_args(argv)

    import redis
    from confluent_kafka import Consumer, Producer

    store = redis.Redis.from_url(args.redis)
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "logger": _quiet()})
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 0, "logger": _quiet()})
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    consumer.subscribe([args.topic])
    stalled = False
    while not stopping:
        if stalled:
            time.sleep(0.05)
            continue
        messages = [m for m in consumer.consume(num_messages=100, timeout=0.05) if m.error() is None]
        for message in messages:
            action = _misbehave(args, consumer, message)
            if action == "stall":
                stalled = True
                break
            if action is None:
                _deliver(message, store, producer, args.out)
        if messages and not stalled:
            producer.flush(10)
            consumer.commit(asynchronous=True)  # the loop never waits on the group coordinator
            if args.mode == "duplicate":
                for message in messages:  # the same records once more
                    _deliver(message, store, producer, args.out)
                producer.flush(10)
    consumer.close()
    return 0


def _misbehave(args: argparse.Namespace, consumer: Any, message: Any) -> str | None:
    """What a broken mode does with this record instead of delivering it (None: deliver it)."""
    from confluent_kafka import OFFSET_END, TopicPartition

    age_s = time.time() - message.timestamp()[1] / 1000
    if args.mode == "stall" and age_s > args.stall_after_s:
        return "stall"
    if args.mode == "skip-ahead" and _lag(consumer, message) > args.max_lag:
        consumer.seek(TopicPartition(message.topic(), message.partition(), OFFSET_END))
        return "skip"
    return None


def _lag(consumer: Any, message: Any) -> int:
    from confluent_kafka import TopicPartition

    _, high = consumer.get_watermark_offsets(TopicPartition(message.topic(), message.partition()), cached=True)
    return int(high - message.offset() - 1)


def _deliver(message: Any, store: Any, producer: Any, out: str) -> None:
    key = (message.key() or b"").decode()
    try:
        fields = json.loads(message.value() or b"{}")
    except ValueError:
        fields = {"raw": (message.value() or b"").decode(errors="replace")}
    store.hset(f"features:{key}", mapping={k: str(v) for k, v in fields.items()} or {"empty": "1"})
    producer.produce(out, message.value(), key=message.key())


if __name__ == "__main__":
    sys.exit(main())
