"""Thin, lazy adapters over confluent-kafka.

No network in ``__init__``: the librdkafka client is created on first use. The producer is
idempotent with ``acks=all`` by default, retries ``BufferError`` by polling, and flushes on
close. librdkafka's ``error_cb`` goes to the logger. Readers use ``read_committed`` by default,
so they only ever see committed output of the transactional scoring workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self

import confluent_kafka
from confluent_kafka import admin as kadmin

from forewarn.errors import KafkaError
from forewarn.settings import KafkaSettings
from forewarn.topics import TopicSpec

__all__ = [
    "DeliveryCallback",
    "KafkaAdmin",
    "KafkaConsumer",
    "KafkaProducer",
    "Message",
    "TopicCheck",
    "error_code",
    "raise_for_error",
    "refused_for_good",
]

log = logging.getLogger(__name__)

Message = confluent_kafka.Message
DeliveryCallback = Callable[[confluent_kafka.KafkaError | None, confluent_kafka.Message], None]
Headers = Sequence[tuple[str, bytes | str]]


def _error_cb(error: confluent_kafka.KafkaError) -> None:
    # librdkafka reports transient broker trouble here; it keeps retrying on its own.
    level = logging.ERROR if error.fatal() else logging.WARNING
    log.log(level, "kafka: %s", error)


def raise_for_error(error: confluent_kafka.KafkaError | None, what: str) -> None:
    """Raise :class:`KafkaError` for a librdkafka error object, keeping code and retriability."""
    if error is None:
        return
    raise KafkaError(f"{what}: {error.str()}", code=error.name(), retriable=error.retriable())


def refused_for_good(error: object) -> bool:
    """Whether a delivery error (or a :class:`KafkaError` from ``produce``) means Kafka refuses
    that record for good: not retriable and not fatal to the producer — e.g.
    ``MSG_SIZE_TOO_LARGE``, ``TOPIC_AUTHORIZATION_FAILED``, ``INVALID_RECORD``. Anything else is
    worth retrying."""
    retriable, fatal = getattr(error, "retriable", None), getattr(error, "fatal", False)
    if callable(retriable):
        retriable = retriable()
    if callable(fatal):
        fatal = fatal()
    return retriable is False and not fatal


def error_code(error: object) -> str:
    """librdkafka's name of a delivery or produce error (``MSG_SIZE_TOO_LARGE``)."""
    name = getattr(error, "name", None)
    if callable(name):
        return str(name())
    code = getattr(error, "code", None)
    return code if isinstance(code, str) else type(error).__name__


def _wrap(exc: confluent_kafka.KafkaException, what: str) -> KafkaError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, confluent_kafka.KafkaError):
        return KafkaError(f"{what}: {err.str()}", code=err.name(), retriable=err.retriable())
    return KafkaError(f"{what}: {exc}")


class _Lazy:
    def __init__(self, settings: KafkaSettings, overrides: dict[str, Any]) -> None:
        self.settings = settings
        self._overrides = overrides

    def config(self, defaults: dict[str, Any]) -> dict[str, Any]:
        conf = {**defaults, **self.settings.librdkafka(), **self._overrides}
        conf.setdefault("error_cb", _error_cb)
        conf.setdefault("logger", log)
        return conf


class KafkaProducer(_Lazy):
    """Idempotent producer (acks=all). Pass ``transactional_id`` for exactly-once output."""

    DEFAULTS: dict[str, Any] = {  # noqa: RUF012 - read-only by convention
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 0,  # never give up on a record: lose nothing while Kafka is away
    }

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        super().__init__(settings, overrides)
        self._producer: confluent_kafka.Producer | None = None

    @property
    def client(self) -> confluent_kafka.Producer:
        if self._producer is None:
            conf = self.config(self.DEFAULTS)
            if "transactional.id" in conf and "message.timeout.ms" not in self._overrides:
                # librdkafka requires message.timeout.ms <= transaction.timeout.ms.
                conf["message.timeout.ms"] = conf.get("transaction.timeout.ms", 60000)
            self._producer = confluent_kafka.Producer(conf)
        return self._producer

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        *,
        headers: Headers | None = None,
        timestamp_ms: int | None = None,
        on_delivery: DeliveryCallback | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record; when librdkafka's queue is full, serve callbacks and retry."""
        kwargs: dict[str, Any] = {}
        if key is not None:
            kwargs["key"] = key
        if headers:
            kwargs["headers"] = list(headers)
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        if partition is not None:
            kwargs["partition"] = partition
        producer = self.client
        while True:
            try:
                producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                producer.poll(0.05)
            except confluent_kafka.KafkaException as exc:
                raise _wrap(exc, f"produce to {topic}") from None

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return int(self.client.poll(timeout_s))

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for outstanding records; returns how many are still not delivered."""
        if self._producer is None:
            return 0
        return int(self._producer.flush(timeout_s))

    def __len__(self) -> int:
        return 0 if self._producer is None else len(self._producer)

    # -- transactions (scoring workers) --------------------------------------------------

    def init_transactions(self, timeout_s: float = 60.0) -> None:
        try:
            self.client.init_transactions(timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "init transactions") from None

    def begin_transaction(self) -> None:
        self.client.begin_transaction()

    def send_offsets_to_transaction(self, offsets: list[confluent_kafka.TopicPartition],
                                    group_metadata: Any, timeout_s: float = 30.0) -> None:
        self.client.send_offsets_to_transaction(offsets, group_metadata, timeout_s)

    def commit_transaction(self, timeout_s: float = 60.0) -> None:
        self.client.commit_transaction(timeout_s)

    def abort_transaction(self, timeout_s: float = 60.0) -> None:
        self.client.abort_transaction(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush what is queued; log what could not be delivered."""
        left = self.flush(timeout_s)
        if left:
            log.warning("kafka producer closed with %s records not delivered", left)
        self._producer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class KafkaConsumer(_Lazy):
    """Consumer-group member; ``read_committed``, manual commits by default."""

    DEFAULTS: dict[str, Any] = {  # noqa: RUF012 - read-only by convention
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }

    def __init__(self, settings: KafkaSettings, group_id: str, topics: Iterable[str] = (),
                 **overrides: Any) -> None:
        super().__init__(settings, {"group.id": group_id, **overrides})
        self.group_id = group_id
        self.topics = list(topics)
        self._consumer: confluent_kafka.Consumer | None = None
        self._on_assign: Callable[..., None] | None = None
        self._on_revoke: Callable[..., None] | None = None

    def on_rebalance(self, on_assign: Callable[..., None] | None = None,
                     on_revoke: Callable[..., None] | None = None) -> None:
        """Set rebalance callbacks (before first use): ``f(consumer, partitions)``."""
        self._on_assign, self._on_revoke = on_assign, on_revoke

    @property
    def client(self) -> confluent_kafka.Consumer:
        if self._consumer is None:
            self._consumer = confluent_kafka.Consumer(self.config(self.DEFAULTS))
            if self.topics:
                kwargs: dict[str, Any] = {}
                if self._on_assign is not None:
                    kwargs["on_assign"] = self._on_assign
                if self._on_revoke is not None:
                    kwargs["on_revoke"] = self._on_revoke
                self._consumer.subscribe(self.topics, **kwargs)
        return self._consumer

    def consume(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[confluent_kafka.Message]:
        """Up to ``max_messages`` records; errors of single records are logged and skipped
        only when they are informational (partition EOF), otherwise raised."""
        messages = self.client.consume(max_messages, timeout_s)
        good: list[confluent_kafka.Message] = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                continue
            elif error.fatal() or not error.retriable():
                raise_for_error(error, "consume")
            else:
                log.warning("kafka consume: %s", error)
        return good

    def commit(self, asynchronous: bool = False) -> None:
        try:
            self.client.commit(asynchronous=asynchronous)
        except confluent_kafka.KafkaException as exc:
            wrapped = _wrap(exc, "commit offsets")
            if wrapped.code != "_NO_OFFSET":
                raise wrapped from None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class TopicCheck:
    """What ``ensure_topics`` found or did for one topic."""

    def __init__(self, spec: TopicSpec, action: str, problems: list[str]) -> None:
        self.spec, self.action, self.problems = spec, action, problems

    @property
    def ok(self) -> bool:
        return not self.problems


class KafkaAdmin(_Lazy):
    """Topic administration and reachability checks."""

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        super().__init__(settings, overrides)
        self._admin: kadmin.AdminClient | None = None

    @property
    def client(self) -> kadmin.AdminClient:
        if self._admin is None:
            self._admin = kadmin.AdminClient(self.config({}))
        return self._admin

    def ping(self, timeout_s: float = 5.0) -> Any:
        """Cluster metadata, or :class:`KafkaError` saying the cluster is unreachable."""
        try:
            return self.client.list_topics(timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise KafkaError(f"Kafka at {self.settings.bootstrap_servers} is unreachable ({exc.args[0]})",
                             retriable=True,
                             hint="start it with `forewarn stack up` or fix kafka.bootstrap_servers") from None

    def ensure_topics(self, specs: Iterable[TopicSpec], timeout_s: float = 30.0) -> list[TopicCheck]:
        """Create missing topics; check existing ones against their spec. Idempotent."""
        specs = list(specs)
        metadata = self.ping(timeout_s)
        existing = metadata.topics
        checks: list[TopicCheck] = []
        to_create = [s for s in specs if s.name not in existing]
        if to_create:
            futures = self.client.create_topics(
                [kadmin.NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                                 config=s.config) for s in to_create],
                operation_timeout=timeout_s, request_timeout=timeout_s)
            for spec in to_create:
                try:
                    futures[spec.name].result()
                    checks.append(TopicCheck(spec, "created", []))
                except confluent_kafka.KafkaException as exc:
                    wrapped = _wrap(exc, f"create topic {spec.name}")
                    if wrapped.code == "TOPIC_ALREADY_EXISTS":
                        checks.append(TopicCheck(spec, "exists", []))
                    else:
                        raise wrapped from None
        present = [s for s in specs if s.name in existing]
        if present:
            configs = self._describe_configs([s.name for s in present], timeout_s)
            for spec in present:
                problems: list[str] = []
                have = len(existing[spec.name].partitions)
                if have < spec.partitions:
                    problems.append(f"has {have} partitions, wants {spec.partitions}")
                policy = configs.get(spec.name, {}).get("cleanup.policy")
                want = spec.config.get("cleanup.policy")
                if want and policy and policy != want:
                    problems.append(f"cleanup.policy is {policy}, wants {want}")
                checks.append(TopicCheck(spec, "exists", problems))
        order = {s.name: i for i, s in enumerate(specs)}
        return sorted(checks, key=lambda c: order[c.spec.name])

    def topic_configs(self, names: Iterable[str], timeout_s: float = 30.0) -> dict[str, dict[str, str]]:
        """Each topic's configuration (``max.message.bytes``, ``cleanup.policy``, ...)."""
        return self._describe_configs(list(names), timeout_s)

    def _describe_configs(self, names: list[str], timeout_s: float) -> dict[str, dict[str, str]]:
        resources = [kadmin.ConfigResource(kadmin.ResourceType.TOPIC, n) for n in names]
        result: dict[str, dict[str, str]] = {}
        for resource, future in self.client.describe_configs(resources, request_timeout=timeout_s).items():
            try:
                entries = future.result()
            except confluent_kafka.KafkaException as exc:
                raise _wrap(exc, f"describe topic {resource.name}") from None
            result[resource.name] = {k: str(v.value) for k, v in entries.items()}
        return result

    def delete_topics(self, names: Iterable[str], timeout_s: float = 30.0) -> None:
        futures = self.client.delete_topics(list(names), operation_timeout=timeout_s)
        for name, future in futures.items():
            try:
                future.result()
            except confluent_kafka.KafkaException as exc:
                wrapped = _wrap(exc, f"delete topic {name}")
                if wrapped.code != "UNKNOWN_TOPIC_OR_PART":
                    raise wrapped from None
