"""The streaming example's Kafka cluster (examples/streaming.py): three real KRaft nodes from Maven
Central's jars, each behind its own toxiproxy proxy. What the stream stages rely on is checked here: clients
go through the proxies (a latency toxic on the proxy of one partition's leader delays that partition's
produce acknowledgements and no other), replication does not (the in-sync replicas stay whole)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT

from mlchaos_steps.examples import dependencies, streaming
from mlchaos_steps.targets.toxiproxy import Toxiproxy

QUIET = logging.getLogger("mlchaos.test-kafka-client")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Toxiproxy]]:
    root = tmp_path_factory.mktemp("kafka")
    proxy = dependencies.start_toxiproxy(ROOT / "build" / "bin" / "toxiproxy-server", root / "toxiproxy")
    try:
        kafka = streaming.start_kafka(ROOT / "build" / "kafka" / "jars", root / "kafka", Toxiproxy(proxy.url))
        try:
            yield kafka, Toxiproxy(proxy.url)
        finally:
            kafka.stop()
    finally:
        proxy.stop()


def _ack_seconds(producer: Any, topic: str, partition: int) -> float:
    started = time.perf_counter()
    done: list[float] = []
    producer.produce(topic, b"probe", partition=partition,
                     on_delivery=lambda err, _msg: done.append(time.perf_counter() if err is None else -1.0))
    producer.flush(30)
    assert done and done[0] > 0, "the record was not acknowledged"
    return done[0] - started


@pytest.mark.heavy(40)
def test_clients_go_through_each_brokers_proxy_and_replication_does_not(cluster: tuple[Any, Toxiproxy]) -> None:
    from confluent_kafka import Consumer, Producer, TopicCollection
    from confluent_kafka.admin import AdminClient, NewTopic

    kafka, proxies = cluster
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap, "logger": QUIET})
    for future in admin.create_topics([NewTopic("features", 6, 3)]).values():
        future.result(30)
    leaders = {p.id: p.leader.id for p in admin.describe_topics(TopicCollection(["features"]))["features"]
               .result(30).partitions}
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "linger.ms": 0, "logger": QUIET})
    baseline = {p: _ack_seconds(producer, "features", p) for p in leaders}  # every partition reachable

    slowed_node = leaders[0]
    proxies.add_toxic(kafka.proxy_of[slowed_node], "latency", {"latency": 400, "jitter": 0}, name="test-delay")
    try:
        slowed = _ack_seconds(producer, "features", 0)
        other = next(p for p, leader in leaders.items() if leader != slowed_node)
        fast = _ack_seconds(producer, "features", other)
    finally:
        proxies.remove_toxic(kafka.proxy_of[slowed_node], "test-delay")
    assert slowed >= 0.4 > fast, (slowed, fast, baseline)
    isr = {p.id: len(p.isr) for p in admin.describe_topics(TopicCollection(["features"]))["features"]
           .result(30).partitions}
    assert set(isr.values()) == {3}, isr  # replication never went through the delayed proxy

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "test", "auto.offset.reset": "earliest",
                         "logger": QUIET})
    consumer.subscribe(["features"])
    got = 0
    deadline = time.monotonic() + 30
    while got < 8 and time.monotonic() < deadline:  # 6 baseline + 2 during the fault
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got += 1
    consumer.close()
    assert got == 8
