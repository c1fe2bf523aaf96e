"""stream-delay: delay, pause or throttle the Kafka brokers that lead chosen partitions of a topic (through
the toxiproxy proxy in front of each broker), and follow canary records to the end of the pipeline.

Hypothesis: "when a partition falls behind, fresh features still reach the store within their SLO once
the fault ends, and nothing is lost (nor duplicated beyond the pipeline's delivery contract)". Evidence:
marked, timestamped canary records the stage produces into the affected partitions and into others (the
control), found by the stage itself in the feature store the pipeline writes (their end-to-end lag over
time), counted in the pipeline's output topic (duplicates), and the consumer group's lag from Kafka's
admin API.

Example::

    kind: StreamDelay
    spec:
      kafka: {bootstrap: "127.0.0.1:9092", proxy_api: "http://127.0.0.1:8474",
              proxies: {1: kafka-1, 2: kafka-2, 3: kafka-3}, topic: features, partitions: [0]}
      fault: {kind: latency, latency_ms: 800}          # latency | pause | throttle
      duration_s: 10
      arrival: {redis: "redis://127.0.0.1:6379/0", key_prefix: "features:", out_topic: features-out}
      consumer_group: feature-writer
      freshness_slo_s: 5
      delivery: at_least_once
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, ClassVar, Literal

from pydantic import Field

from mlchaos_steps.core.context import PhaseContext, check_kill_switch
from mlchaos_steps.core.records import Action
from mlchaos_steps.core.spec import StageSpec, StrictModel
from mlchaos_steps.core.strict import HttpUrlText
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.errors import InfrastructureError
from mlchaos_steps.targets.toxiproxy import Toxiproxy

POLL_S = 0.01


class KafkaTarget(StrictModel):
    bootstrap: str = Field(min_length=1, description="the brokers' advertised (proxied) addresses")
    proxy_api: HttpUrlText = Field(description="toxiproxy's HTTP API")
    proxies: dict[int, str] = Field(min_length=1, description="broker id -> the toxiproxy proxy in front of it")
    topic: str = Field(min_length=1)
    partitions: list[int] = Field(min_length=1, description="the partitions whose leaders get the fault")


class StreamFault(StrictModel):
    kind: Literal["latency", "pause", "throttle"]
    latency_ms: int = Field(default=800, ge=1, le=600_000)
    jitter_ms: int = Field(default=0, ge=0, le=600_000)
    bandwidth_kbps: int = Field(default=1, ge=1)

    def toxic(self) -> tuple[str, dict[str, int]]:
        return {"latency": ("latency", {"latency": self.latency_ms, "jitter": self.jitter_ms}),
                "pause": ("timeout", {"timeout": 0}),
                "throttle": ("bandwidth", {"rate": self.bandwidth_kbps})}[self.kind]


class Arrival(StrictModel):
    redis: str = Field(description="the feature store the pipeline writes: redis://host:port/db")
    key_prefix: str = Field(default="features:", description="a record with key K lands at <key_prefix>K")
    out_topic: str | None = Field(default=None, description="the pipeline's output topic: duplicates are counted")


class StreamDelay(StageSpec):
    kind: ClassVar[str] = "StreamDelay"
    stage_id: ClassVar[str] = "stream-delay"
    title: ClassVar[str] = "Delay the Kafka partitions a pipeline reads, follow canary records to its end"

    kafka: KafkaTarget
    fault: StreamFault
    duration_s: float = Field(default=10, gt=0, le=600)
    arrival: Arrival
    consumer_group: str = Field(min_length=1)
    freshness_slo_s: float = Field(default=5, gt=0, le=3600)
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    canary_interval_ms: float = Field(default=200, ge=10, le=60_000)
    control_partitions: int = Field(default=2, ge=0, le=64, description="unaffected partitions also canaried")
    stable_s: float = Field(default=2, gt=0, le=600)

    def target_ids(self) -> list[str]:
        return [f"kafka:{self.kafka.bootstrap}/{self.kafka.topic}"]

    def describe(self) -> str:
        return (f"{self.fault.kind} on the leaders of {self.kafka.topic} {self.kafka.partitions} "
                f"for {self.duration_s:g}s")

    # -- phases -----------------------------------------------------------------------------------
    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        leaders = _leaders(self.kafka)
        return {"leaders": leaders, "proxies": sorted({self.kafka.proxies[leaders[p]] for p in self.kafka.partitions})}

    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        leaders = _leaders(self.kafka)
        missing = [p for p in self.kafka.partitions if p not in leaders]
        if missing:
            raise InfrastructureError(f"topic {self.kafka.topic} has no partition {missing}")
        unproxied = sorted({leaders[p] for p in self.kafka.partitions} - set(self.kafka.proxies))
        if unproxied:
            raise InfrastructureError(f"brokers {unproxied} lead chosen partitions but have no proxy in kafka.proxies")
        control = [p for p in sorted(leaders) if leaders[p] not in {leaders[q] for q in self.kafka.partitions}]
        watch = CanaryWatch(self, ctx.run_key, "steady")
        try:
            sent = [watch.send(p) for p in [*self.kafka.partitions, *control[: self.control_partitions]]]
            watch.wait_all(time.time() + self.freshness_slo_s)
        finally:
            watch.close()
        late = [c for c in sent if watch.lag(c) is None or watch.lag(c) > self.freshness_slo_s]  # type: ignore[operator]
        if late:
            raise InfrastructureError(f"steady state does not hold: {len(late)} of {len(sent)} canaries did not "
                                      f"reach {self.arrival.key_prefix}<key> within {self.freshness_slo_s:g}s "
                                      "before the fault")
        out_start = _end_offsets(self.kafka.bootstrap, self.arrival.out_topic) if self.arrival.out_topic else None
        ctx.save(leaders={str(k): v for k, v in leaders.items()}, control=control[: self.control_partitions],
                 baseline_lag=consumer_lag(self.kafka, self.consumer_group),
                 out_start={str(k): v for k, v in out_start.items()} if out_start else None)
        return {"leaders": leaders, "steady_lag_s": [round(watch.lag(c) or 0, 3) for c in sent]}

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        leaders = {int(k): v for k, v in ctx.state["leaders"].items()}
        proxies = Toxiproxy(self.kafka.proxy_api)
        name = f"mlchaos-{hashlib.sha256(ctx.run_key.encode()).hexdigest()[:16]}"
        kind, attributes = self.fault.toxic()
        for broker in sorted({leaders[p] for p in self.kafka.partitions}):
            proxy = self.kafka.proxies[broker]
            with ctx.destructive("toxic", proxy, {"api": self.kafka.proxy_api, "proxy": proxy, "toxic": name}):
                proxies.add_toxic(proxy, kind, attributes, name=name)
        ctx.save(injected_at=time.time())
        return {"toxic": name, "brokers": sorted({leaders[p] for p in self.kafka.partitions})}

    def verify(self, ctx: PhaseContext) -> Verdict:
        state = ctx.state
        ends = float(state["injected_at"]) + self.duration_s
        partitions = [*self.kafka.partitions, *state.get("control", [])]
        out_start = {int(k): v for k, v in state["out_start"].items()} if state.get("out_start") else None
        watch = CanaryWatch(self, ctx.run_key, "run", out_start)
        try:
            while time.time() < ends:
                watch.send_round(partitions)
                watch.sleep(self.canary_interval_ms / 1000)
            ended_at = time.time()
            ctx.undo_now(lambda action: self.restore_action(action, ctx))  # the fault lasts duration_s
            fresh_from = ended_at + self.freshness_slo_s
            while time.time() < fresh_from + self.stable_s:
                watch.send_round(partitions)
                watch.sleep(self.canary_interval_ms / 1000)
            watch.wait_all(time.time() + self.freshness_slo_s)
            duplicates = watch.duplicates()
        finally:
            watch.close()
        lag_now = consumer_lag(self.kafka, self.consumer_group)
        return self._judge(watch, ended_at, fresh_from, duplicates, state.get("baseline_lag") or 0, lag_now)

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        removed = Toxiproxy(action.undo["api"]).remove_toxic(action.undo["proxy"], action.undo["toxic"])
        return {"proxy": action.undo["proxy"], "toxic": action.undo["toxic"], "removed": removed}

    # -- the verdict ------------------------------------------------------------------------------
    def _judge(self, watch: CanaryWatch, ended_at: float, fresh_from: float, duplicates: dict[str, int] | None,
               baseline_lag: int, lag_now: int) -> Verdict:
        affected = set(self.kafka.partitions)
        canaries = watch.sent
        lost = [c for c in canaries if watch.arrived.get(c["id"]) is None]
        during = [watch.lag(c) for c in canaries if c["partition"] in affected and c["at"] < ended_at
                  and watch.lag(c) is not None]
        after = [watch.lag(c) for c in canaries if c["at"] >= fresh_from]
        stale_after = [lag for lag in after if lag is None or lag > self.freshness_slo_s]
        metrics: dict[str, float] = {"canaries": len(canaries), "lost_canaries": len(lost),
                                     "consumer_lag_after": lag_now}
        if during:
            metrics["max_lag_during_s"] = round(max(during), 3)  # type: ignore[type-var]
        if after and not stale_after:
            metrics["freshness_after_s"] = round(max(after), 3)  # type: ignore[type-var]
        if duplicates is not None:
            metrics["duplicate_canaries"] = sum(n - 1 for n in duplicates.values() if n > 1)
        evidence = {"lag_over_time": [[round(c["at"], 3), c["partition"], watch.lag(c)] for c in canaries][-600:],
                    "lost": [c["id"] for c in lost][:50], "baseline_consumer_lag": baseline_lag}
        if not during and not lost:
            return Verdict.inconclusive("no canary in an affected partition was sent and arrived during the fault",
                                        metrics=metrics, evidence=evidence)
        problems = []
        if lost:
            parts = sorted({c["partition"] for c in lost})
            problems.append(f"{len(lost)} of {len(canaries)} canary records never reached the store "
                            f"(partitions {parts})")
        if stale_after:
            problems.append(f"freshness not back within {self.freshness_slo_s:g}s after the fault: "
                            f"{len(stale_after)} of {len(after)} canaries sent since arrived late or not at all")
        if self.delivery == "exactly_once" and metrics.get("duplicate_canaries"):
            problems.append(f"{metrics['duplicate_canaries']:g} duplicate canary records in {self.arrival.out_topic}, "
                            "against an exactly_once contract")
        if lag_now > max(baseline_lag, 0) + len(self.kafka.partitions) * 5:
            problems.append(f"consumer group {self.consumer_group} is {lag_now} records behind "
                            f"(steady: {baseline_lag})")
        if problems:
            return Verdict.failed("; ".join(problems), metrics=metrics, evidence=evidence)
        return Verdict.passed(f"{self.describe()}: {len(canaries)} canaries, none lost, freshness back within "
                              f"{self.freshness_slo_s:g}s (worst lag during the fault "
                              f"{metrics.get('max_lag_during_s')}s)",
                              metrics=metrics, evidence=evidence)


class CanaryWatch:
    """Sends canary records and watches for them in the feature store (and, for duplicates, the output topic)."""

    def __init__(self, stage: StreamDelay, run_key: str, label: str,
                 start_offsets: dict[int, int] | None = None) -> None:
        import redis
        from confluent_kafka import Producer

        self.stage = stage
        self.prefix = f"mlchaos-canary-{hashlib.sha256(run_key.encode()).hexdigest()[:8]}-{label}"
        self.producer = Producer({"bootstrap.servers": stage.kafka.bootstrap, "linger.ms": 0, "acks": "all",
                                  "logger": _quiet()})
        self.store = redis.Redis.from_url(stage.arrival.redis)
        self.sent: list[dict[str, Any]] = []
        self.arrived: dict[str, float] = {}
        # Where the output topic ended before the fault (read at snapshot: during it, every admin request to a
        # delayed broker waits out the fault).
        self.start_offsets = start_offsets

    def send(self, partition: int) -> dict[str, Any]:
        canary = {"id": f"{self.prefix}-{len(self.sent)}-p{partition}", "partition": partition, "at": time.time()}
        self.producer.produce(self.stage.kafka.topic, json.dumps({"mlchaos_canary": canary["id"],
                                                                  "sent_at": canary["at"]}).encode(),
                              key=canary["id"].encode(), partition=partition)
        self.producer.poll(0)
        self.sent.append(canary)
        return canary

    def send_round(self, partitions: list[int]) -> None:
        for partition in partitions:
            self.send(partition)

    def check(self) -> None:
        pending = [c["id"] for c in self.sent if c["id"] not in self.arrived]
        if not pending:
            return
        pipe = self.store.pipeline()
        for key in pending:
            pipe.exists(f"{self.stage.arrival.key_prefix}{key}")
        now = time.time()
        for key, there in zip(pending, pipe.execute(), strict=True):
            if there:
                self.arrived[key] = now

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            check_kill_switch()
            self.producer.poll(0)
            self.check()
            time.sleep(POLL_S)

    def wait_all(self, deadline: float) -> None:
        self.producer.flush(max(0.1, deadline - time.time()))
        while time.time() < deadline and len(self.arrived) < len(self.sent):
            self.sleep(POLL_S * 5)

    def lag(self, canary: dict[str, Any]) -> float | None:
        arrived = self.arrived.get(canary["id"])
        return None if arrived is None else arrived - canary["at"]

    def duplicates(self) -> dict[str, int] | None:
        """How often each canary appears in the output topic since the watch began (None: no output topic)."""
        if self.start_offsets is None or self.stage.arrival.out_topic is None:
            return None
        return _count_keys(self.stage.kafka.bootstrap, self.stage.arrival.out_topic, self.start_offsets, self.prefix)

    def close(self) -> None:
        self.producer.flush(5)
        self.store.close()


def _quiet() -> logging.Logger:
    log = logging.getLogger("mlchaos.kafka-client")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "logger": _quiet()})


def _leaders(kafka: KafkaTarget) -> dict[int, int]:
    from confluent_kafka import TopicCollection

    admin = _admin(kafka.bootstrap)  # held: a client destroyed while a future is open cancels it
    try:
        description = admin.describe_topics(TopicCollection([kafka.topic]))[kafka.topic].result(30)
    except Exception as exc:
        raise InfrastructureError(f"could not describe topic {kafka.topic} at {kafka.bootstrap}: {exc}") from exc
    return {p.id: p.leader.id for p in description.partitions}


def consumer_lag(kafka: KafkaTarget, group: str) -> int:
    """Records the group has not committed yet, over every partition of the topic (Kafka's admin API)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = _admin(kafka.bootstrap)
    partitions = [TopicPartition(kafka.topic, p) for p in _leaders(kafka)]
    committed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, partitions)])[group].result(30)
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions})
    lag = 0
    for tp in committed.topic_partitions:
        end = ends[TopicPartition(kafka.topic, tp.partition)].result(30).offset
        lag += end - (tp.offset if tp.offset >= 0 else 0)
    return int(lag)


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from confluent_kafka import TopicCollection, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = _admin(bootstrap)
    partitions = admin.describe_topics(TopicCollection([topic]))[topic].result(30).partitions
    ends = admin.list_offsets({TopicPartition(topic, p.id): OffsetSpec.latest() for p in partitions})
    return {tp.partition: future.result(30).offset for tp, future in ends.items()}


def _count_keys(bootstrap: str, topic: str, start: dict[int, int], prefix: str) -> dict[str, int]:
    from confluent_kafka import Consumer, TopicPartition

    ends = _end_offsets(bootstrap, topic)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-count", "enable.auto.commit": False,
                         "logger": _quiet()})
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in start.items()])
    counts: dict[str, int] = {}
    remaining = {p for p in ends if ends[p] > start.get(p, 0)}
    deadline = time.time() + 30
    while remaining and time.time() < deadline:
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        key = (message.key() or b"").decode()
        if key.startswith(prefix):
            counts[key] = counts.get(key, 0) + 1
        if message.offset() + 1 >= ends[message.partition()]:
            remaining.discard(message.partition())
    consumer.close()
    return counts
