"""stream-delay against a real Kafka cluster (three KRaft nodes, each behind toxiproxy), a real Redis as the
feature store and the example pipeline consumer (examples/feature_consumer.py) in each of its modes: a
healthy consumer passes; one that skips ahead and loses records, one that duplicates against an
exactly-once contract and one that stalls after the fault fail. The proxies are clean after every run."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT

from mlchaos_steps.api import run_stage
from mlchaos_steps.examples import dependencies, streaming
from mlchaos_steps.stages import parse_stage
from mlchaos_steps.targets.toxiproxy import Toxiproxy


@pytest.fixture(scope="module")
def pipeline_parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("streams")
    proxy = dependencies.start_toxiproxy(ROOT / "build" / "bin" / "toxiproxy-server", root / "toxiproxy")
    redis = dependencies.start_redis(root / "redis")
    try:
        kafka = streaming.start_kafka(ROOT / "build" / "kafka" / "jars", root / "kafka", Toxiproxy(proxy.url))
        try:
            yield {"api": proxy.url, "kafka": kafka, "redis": f"redis://127.0.0.1:{redis.port}/0", "root": root}
        finally:
            kafka.stop()
    finally:
        redis.stop()
        proxy.stop()


def _topics(kafka: Any, *names: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for future in admin.create_topics([NewTopic(n, 3, 3) for n in names]).values():
        future.result(60)


def _wait_until_consuming(parts: dict[str, Any], kafka: Any, topic: str, group_id: str, tag: str) -> None:
    """The consumer joined its group (every partition assigned) and writes: a record produced to each
    partition since has reached the store."""
    import redis
    from confluent_kafka import ConsumerGroupState, KafkaException, Producer
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    deadline = time.monotonic() + 60
    state: Any = None
    while True:
        try:  # the coordinator may still be moving (NOT_COORDINATOR): asked again
            group = admin.describe_consumer_groups([group_id])[group_id].result(30)
            state = group.state
            assigned = sum(len(m.assignment.topic_partitions) for m in group.members if m.assignment)
            if state == ConsumerGroupState.STABLE and assigned == 3:
                break
        except KafkaException:
            pass
        assert time.monotonic() < deadline, f"the example consumer never joined its group: {state}"
        time.sleep(0.2)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for partition in range(3):
        producer.produce(topic, b'{"warm": 1}', key=f"warm-{tag}-{partition}".encode(), partition=partition)
    producer.flush(30)
    store = redis.Redis.from_url(parts["redis"])
    deadline = time.monotonic() + 30
    while not all(store.exists(f"features:warm-{tag}-{p}") for p in range(3)):
        assert time.monotonic() < deadline, "the example consumer never wrote to the store"
        time.sleep(0.1)


def _run(parts: dict[str, Any], mode: str, delivery: str = "at_least_once", extra: list[str] | None = None,
         latency_ms: int = 1500) -> Any:
    kafka = parts["kafka"]
    tag = uuid.uuid4().hex[:6]
    topic, out, group = f"features-{tag}", f"features-out-{tag}", f"writer-{tag}"
    _topics(kafka, topic, out)
    consumer = subprocess.Popen(
        [sys.executable, "-m", "mlchaos_steps.examples.feature_consumer", "--bootstrap", kafka.bootstrap,
         "--topic", topic, "--out", out, "--redis", parts["redis"], "--group", group, "--mode", mode,
         *(extra or [])], stdout=subprocess.DEVNULL, stderr=open(parts["root"] / f"consumer-{tag}.log", "wb"))
    _wait_until_consuming(parts, kafka, topic, group, tag)
    doc = {"kind": "StreamDelay", "spec": {
        "kafka": {"bootstrap": kafka.bootstrap, "proxy_api": parts["api"],
                  "proxies": {n: p for n, p in kafka.proxy_of.items()}, "topic": topic, "partitions": [0]},
        "fault": {"kind": "latency", "latency_ms": latency_ms}, "duration_s": 3,
        "arrival": {"redis": parts["redis"], "out_topic": out}, "consumer_group": group,
        "freshness_slo_s": 3, "delivery": delivery, "canary_interval_ms": 200, "control_partitions": 1,
        "stable_s": 1}}
    try:
        outcome = run_stage(parse_stage(doc), f"stream-{tag}")
    finally:
        consumer.terminate()
        consumer.wait(30)
    assert outcome.restored, outcome.restore_error
    proxies = Toxiproxy(parts["api"])
    assert all(proxies.toxics(p) == [] for p in kafka.proxy_of.values())
    return outcome


@pytest.mark.heavy(60)
def test_a_healthy_consumer_passes(pipeline_parts: dict[str, Any]) -> None:
    outcome = _run(pipeline_parts, "healthy")
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.verdict.metrics["max_lag_during_s"] >= 1.0  # the fault reached the partition


@pytest.mark.heavy(60)
@pytest.mark.parametrize(("mode", "delivery", "extra", "latency_ms", "says"), [
    ("skip-ahead", "at_least_once", ["--max-lag", "2"], 1500, "never reached"),
    ("duplicate", "exactly_once", [], 1500, "duplicate"),
    ("stall", "at_least_once", ["--stall-after-s", "1.0"], 1500, "freshness not back"),
], ids=["skips-ahead", "duplicates", "stalls"])
def test_broken_consumers_fail(pipeline_parts: dict[str, Any], mode: str, delivery: str, extra: list[str],
                               latency_ms: int, says: str) -> None:
    outcome = _run(pipeline_parts, mode, delivery, extra, latency_ms)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert says in outcome.verdict.reason, outcome.verdict.reason
