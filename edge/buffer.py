"""The edge's durable store-and-forward buffer: an SQLite database in WAL mode
(``DATA_DIR/outbox.db``, its queue in the table ``outbox``).

A record is acknowledged upstream (the MQTT PUBACK) only after :meth:`Buffer.put_many`
returned, i.e. after its transaction committed to the write-ahead log, so it survives a
``kill -9`` of the edge. Records drain to Kafka oldest first; one machine's records keep
their order because ids grow monotonically and the producer preserves per-partition order.

Bounded by size. When full, the policy decides:
- ``block`` (default): refuse new records; the caller stops acknowledging MQTT, so the plant
  broker keeps the messages in the persistent session. Nothing is lost.
- ``drop_oldest``: evict the oldest records to make room, counting what was evicted.
A warning is logged (and :attr:`Buffer.near_full` is true) above ``warn_fraction``.

A record Kafka refuses for good is replaced, in one transaction, by its dead-letter record
(:meth:`Buffer.replace`); a dead-letter record Kafka refuses too is moved to the local
``dead_letters`` table (:meth:`Buffer.dead_letter`, or ``replace(..., keep=...)`` when its cut
takes its place in the queue), where it stays for an operator.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import msgspec

from forewarn.errors import ForewarnError

__all__ = ["Buffer", "BufferFull", "BufferRecord", "FullPolicy", "StateItem", "Stored"]

log = logging.getLogger(__name__)

FullPolicy = Literal["block", "drop_oldest"]

_RECORD = "topic TEXT NOT NULL, key BLOB, value BLOB, headers BLOB, ts INTEGER"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, {_RECORD}, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, {_RECORD},
                                         reason TEXT NOT NULL, detail TEXT NOT NULL, at INTEGER NOT NULL);
"""


class BufferFull(ForewarnError):
    """The buffer is full and its policy is ``block``: stop acknowledging upstream."""


@dataclass(frozen=True)
class BufferRecord:
    """One Kafka record waiting to be forwarded. ``topic`` is a role name resolved at drain."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    ts: int | None = None

    @property
    def size(self) -> int:
        return (len(self.value or b"") + len(self.key or b"") + len(self.topic)
                + sum(len(k) + len(v) for k, v in self.headers) + 64)


@dataclass(frozen=True)
class Stored:
    """A record read back from the buffer, with its id for :meth:`Buffer.remove`."""

    id: int
    record: BufferRecord


StateItem = tuple[str, bytes]
"""A (key, value) pair of the buffer's side table (the edge's per-machine state)."""
_Bytes = bytes  # ``bytes`` inside Buffer is its property

_headers_encoder = msgspec.msgpack.Encoder()
_headers_decoder = msgspec.msgpack.Decoder(list[tuple[str, bytes]])


def _record(topic: str, key: bytes | None, value: bytes | None, headers: bytes | None, ts: int | None) -> BufferRecord:
    return BufferRecord(topic, value, key, tuple(_headers_decoder.decode(headers)) if headers else (), ts)


class Buffer:
    """A bounded, durable FIFO of Kafka records. Thread-safe (one connection, one lock)."""

    def __init__(self, path: Path, *, max_bytes: int = 512 * 1024 * 1024, policy: FullPolicy = "block",
                 warn_fraction: float = 0.8, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.policy = policy
        self.warn_fraction = warn_fraction
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed (not a power cut);
        # FULL also survives power loss, at a cost per commit.
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM outbox").fetchone()
        self._bytes, self._count = int(row[0]), int(row[1])
        self._warned = False

    # -- state -------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return self._count

    @property
    def fill(self) -> float:
        return self._bytes / self.max_bytes if self.max_bytes else 0.0

    @property
    def near_full(self) -> bool:
        return self.fill >= self.warn_fraction

    def counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    # -- writing -----------------------------------------------------------------------------

    def put_many(self, records: Sequence[BufferRecord], state: Sequence[StateItem] = ()) -> None:
        """Store ``records`` durably in one transaction, all or nothing.

        ``state`` (key, value) pairs are upserted into a side table in the same transaction
        (the edge keeps its per-machine windows there, consistent with what it acknowledged);
        they do not count against the size bound.
        Raises :class:`BufferFull` (policy ``block``) when they do not fit.
        """
        if not records and not state:
            return
        incoming = sum(r.size for r in records)
        rows = [(r.topic, r.key, r.value, _headers_encoder.encode(list(r.headers)) if r.headers else None, r.ts,
                 r.size) for r in records]
        with self._lock:
            if self._bytes + incoming > self.max_bytes:
                if self.policy == "block":
                    raise BufferFull(f"edge buffer full ({self._bytes} of {self.max_bytes} bytes)",
                                     hint="the uplink is down too long; raise edge.buffer_max_bytes")
                self._evict(self._bytes + incoming - self.max_bytes)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO outbox (topic, key, value, headers, ts, size) VALUES (?, ?, ?, ?, ?, ?)", rows)
                if state:
                    self._db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", state)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._bytes += incoming
            self._count += len(rows)
            self._check_fill()

    def _evict(self, need: int) -> None:
        freed, dropped = 0, 0
        cursor = self._db.execute("SELECT id, size FROM outbox ORDER BY id")
        last_id = None
        for row_id, size in cursor:
            freed += size
            dropped += 1
            last_id = row_id
            if freed >= need:
                break
        if last_id is None:
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
        self._db.execute("INSERT INTO counters (name, value) VALUES ('evicted', ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (dropped,))
        self._db.execute("COMMIT")
        self._bytes -= freed
        self._count -= dropped
        log.error("edge buffer full: evicted the %s oldest records (%s bytes) under policy drop_oldest",
                  dropped, freed)

    def _check_fill(self) -> None:
        if self.near_full and not self._warned:
            self._warned = True
            log.warning("edge buffer %.0f%% full (%s records, %s bytes of %s)", self.fill * 100, self._count,
                        self._bytes, self.max_bytes)
        elif not self.near_full:
            self._warned = False

    # -- draining ------------------------------------------------------------------------------

    def peek(self, limit: int = 1000, after_id: int = 0) -> list[Stored]:
        """The oldest ``limit`` records with id > ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, key, value, headers, ts FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit)).fetchall()
        return [Stored(row_id, _record(topic, key, value, headers, ts))
                for row_id, topic, key, value, headers, ts in rows]

    def remove(self, ids: Iterable[int]) -> None:
        """Forget records that Kafka confirmed."""
        id_list = list(ids)
        if not id_list:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            total = 0
            for start in range(0, len(id_list), 500):
                chunk = id_list[start:start + 500]
                marks = ",".join("?" * len(chunk))
                row = self._db.execute(f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM outbox WHERE id IN ({marks})",  # noqa: S608
                                       chunk).fetchone()
                self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608
                self._bytes -= int(row[0])
                self._count -= int(row[1])
                total += int(row[1])
            self._db.execute("COMMIT")
            self._check_fill()

    def replace(self, row_id: int, record: BufferRecord, *, keep: tuple[str, str, int] | None = None) -> None:
        """Swap a buffered record for another (its dead letter, or a dead letter's cut), at the
        end of the queue, in one transaction. With ``keep`` = (reason, detail, at_ms) the
        replaced record moves to the local ``dead_letters`` table in that transaction. The
        bound is not checked: the new record is at most about the old one's size."""
        headers = _headers_encoder.encode(list(record.headers)) if record.headers else None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if keep is not None:
                    self._keep_locally(row_id, *keep)
                freed, gone = self._delete(row_id)
                self._db.execute("INSERT INTO outbox (topic, key, value, headers, ts, size) VALUES (?, ?, ?, ?, ?, ?)",
                                 (record.topic, record.key, record.value, headers, record.ts, record.size))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._bytes += record.size - freed
            self._count += 1 - gone

    def dead_letter(self, row_id: int, reason: str, detail: str, at_ms: int) -> None:
        """Move a buffered record to the local ``dead_letters`` table (Kafka refuses it and its
        dead-letter record alike): it leaves the queue but stays on disk."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._keep_locally(row_id, reason, detail, at_ms)
                freed, gone = self._delete(row_id)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._bytes -= freed
            self._count -= gone

    def _keep_locally(self, row_id: int, reason: str, detail: str, at_ms: int) -> None:
        self._db.execute("INSERT INTO dead_letters (topic, key, value, headers, ts, reason, detail, at) "
                         "SELECT topic, key, value, headers, ts, ?, ?, ? FROM outbox WHERE id = ?",
                         (reason, detail, at_ms, row_id))

    def _delete(self, row_id: int) -> tuple[int, int]:
        row = self._db.execute("SELECT size FROM outbox WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            return 0, 0
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        return int(row[0]), 1

    def dead_letters(self) -> list[tuple[BufferRecord, str, str]]:
        """The local dead letters: (record, reason, detail), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT topic, key, value, headers, ts, reason, detail FROM dead_letters ORDER BY id").fetchall()
        return [(_record(topic, key, value, headers, ts), reason, detail)
                for topic, key, value, headers, ts, reason, detail in rows]

    def load_state(self) -> dict[str, _Bytes]:
        """Every (key, value) stored with :meth:`put_many`'s ``state``."""
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM state").fetchall()
        return {str(key): bytes(value) for key, value in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
