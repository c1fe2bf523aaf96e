"""A real Apache Kafka 4.4 cluster for the streaming example, the tests and the benchmarks: three nodes in
KRaft mode (each broker and controller) on 127.0.0.1, from the jars ``make build/kafka/.jars`` resolves
from Maven Central, with the machine's Java. Not an emulator.

Clients reach each broker only through its own toxiproxy proxy (``kafka-<node id>``): the brokers
advertise the proxies' ports on the EXTERNAL listener, while replication (INTERNAL) and the quorum
(CONTROLLER) use their own ports, so a fault on a proxy delays clients, never replication. Clients must
bootstrap through the proxies too (librdkafka keeps using its bootstrap connection).

Example::

    cluster = start_kafka(Path("build/kafka/jars"), tmp / "kafka", Toxiproxy(proxy.url))
    producer = confluent_kafka.Producer({"bootstrap.servers": cluster.bootstrap})
    cluster.stop()
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlchaos_steps.core.processes import stop_process_group
from mlchaos_steps.examples.workloads import free_port
from mlchaos_steps.targets.toxiproxy import Toxiproxy

ROOT = Path(__file__).resolve().parents[2]
LOG4J = ROOT / "tools" / "kafka" / "log4j2.properties"
CLUSTER_ID = "q1Sh-9_ISia_zwGINzRvyQ"
JAVA_OPTS = ["-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id={node}
controller.quorum.voters={voters}
listeners=EXTERNAL://127.0.0.1:{external},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=EXTERNAL://127.0.0.1:{advertised},INTERNAL://127.0.0.1:{internal}
listener.security.protocol.map=EXTERNAL:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor={replicas}
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
num.io.threads=4
num.network.threads=2
"""


@dataclass
class KafkaCluster:
    bootstrap: str  # the proxies' addresses: what clients use
    proxy_of: dict[int, str]  # node id -> its toxiproxy proxy
    processes: list[subprocess.Popen[bytes]] = field(repr=False)
    root: Path = Path()

    def stop(self) -> None:
        """Every node told at once (SIGTERM: a controlled shutdown); what is left after 15 s is killed."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop_process_group(process.pid, grace_s=0)
                process.wait()


def _java(jars: Path, *args: str) -> list[str]:
    return ["java", *JAVA_OPTS, f"-Dlog4j2.configurationFile={LOG4J}", "-cp", f"{jars.resolve()}/*", *args]


def start_kafka(jars: Path, root: Path, proxies: Toxiproxy, nodes: int = 3, timeout_s: float = 90) -> KafkaCluster:
    """Format and start ``nodes`` KRaft nodes behind one toxiproxy proxy each; return once every broker
    answers metadata through its proxy."""
    ports = {n: {"external": free_port(), "internal": free_port(), "controller": free_port()}
             for n in range(1, nodes + 1)}
    voters = ",".join(f"{n}@127.0.0.1:{p['controller']}" for n, p in ports.items())
    proxy_of, advertised = {}, {}
    for node, p in ports.items():
        name = f"kafka-{node}"
        if name in proxies.proxies():
            proxies.delete_proxy(name)
        listen = proxies.create_proxy(name, f"127.0.0.1:{p['external']}")["listen"]
        proxy_of[node], advertised[node] = name, listen
    processes = []
    for node, p in ports.items():
        folder = root / f"node-{node}"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "server.properties"
        config.write_text(SERVER_PROPERTIES.format(
            node=node, voters=voters, advertised=advertised[node].rsplit(":", 1)[1], data=folder / "data",
            replicas=min(3, nodes), min_isr=min(2, nodes), **p))
        subprocess.run(_java(jars, "kafka.tools.StorageTool", "format", "--ignore-formatted", "-t", CLUSTER_ID,
                             "-c", str(config)), check=True, capture_output=True)
        log = open(folder / "out.log", "ab")  # noqa: SIM115
        processes.append(subprocess.Popen(_java(jars, "kafka.Kafka", str(config)), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ}))
    cluster = KafkaCluster(",".join(advertised.values()), proxy_of, processes, root)
    try:
        _wait_for_brokers(cluster, nodes, timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_brokers(cluster: KafkaCluster, nodes: int, timeout_s: float) -> None:
    import logging

    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("mlchaos.kafka-client")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "logger": quiet})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in cluster.processes:
            if process.poll() is not None:
                raise RuntimeError(f"a Kafka node exited with {process.returncode}: see {cluster.root}")
        try:
            if len(admin.list_topics(timeout=2).brokers) == nodes:
                return
        except Exception:  # brokers still booting
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Kafka did not come up within {timeout_s:.0f}s: see {cluster.root}")
