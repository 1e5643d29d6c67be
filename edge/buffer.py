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

Durability: ``synchronous=FULL`` by default, so a committed transaction survives a power cut
as well as a ``kill -9``; ``NORMAL`` survives ``kill -9`` only (the last commits before a power
cut may be lost although they were acknowledged) and is for those who accept that risk.

The disk: a write the file system cannot take (SQLite's ``SQLITE_FULL``, ``ENOSPC``) raises
:class:`DiskFull` and leaves the buffer as it was, so the caller can hold its batch and retry.
Removing delivered rows never raises on a full disk: the rows leave the queue at once
(:meth:`Buffer.peek`, ``len()`` and :attr:`Buffer.bytes` no longer see them) and are deleted
from the file with the next write that succeeds (or sent again after a restart: a duplicate,
never a loss).

A buffer file SQLite reports as corrupt at open (not a database, a malformed or truncated
image, or a failed ``PRAGMA quick_check``) is moved aside with its WAL to
``<name>.corrupt-<UTC timestamp>`` (:attr:`Buffer.moved_aside`), logged as an error, and a
fresh buffer starts in its place: the edge starts instead of crash-looping, and the old file
stays for an operator to salvage.
"""

from __future__ import annotations

import datetime
import errno
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import msgspec

from forewarn.errors import ForewarnError

__all__ = ["Buffer", "BufferFull", "BufferRecord", "DiskFull", "FullPolicy", "StateItem", "Stored", "SyncMode"]

log = logging.getLogger(__name__)

FullPolicy = Literal["block", "drop_oldest"]
SyncMode = Literal["NORMAL", "FULL"]

# SQLite's primary result codes (the low byte of an extended code) that name a damaged file,
# and the one that names a full disk.
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_FULL_CODE = sqlite3.SQLITE_FULL
_SIDE_FILES = ("-wal", "-shm")
_WAL_PAGES = 256
_WAL_KEEP_BYTES = 4 * 2**20

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


class DiskFull(ForewarnError):
    """The file system holding the buffer has no room for this write; nothing was written.
    Stop acknowledging upstream and retry once space returns."""


def _primary_code(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, sqlite3.Error):
        return _primary_code(error) == _FULL_CODE
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _is_corrupt(error: sqlite3.Error) -> bool:
    return _primary_code(error) in _CORRUPT_CODES


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
                 warn_fraction: float = 0.8, synchronous: SyncMode = "FULL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.policy = policy
        self.warn_fraction = warn_fraction
        self.synchronous = synchronous
        self._lock = threading.Lock()
        self._unremoved: set[int] = set()  # delivered rows whose DELETE the full disk refused
        self._warned = False
        self.moved_aside: Path | None = None
        damage = self._damage()
        if damage is not None:
            self.moved_aside = self._move_aside(damage)
        self._db = self._open()
        row = self._db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM outbox").fetchone()
        self._bytes, self._count = int(row[0]), int(row[1])

    def _damage(self) -> str | None:
        """What is wrong with the existing file, or None: SQLite's corruption errors and
        ``quick_check`` (every page and record well formed; it reads the whole file once), on a
        read-only connection, so that nothing (no checkpoint on close) changes a damaged file
        before it moves aside. Other errors (permissions, I/O) raise."""
        if not self.path.exists():
            return None
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.DatabaseError as error:
            if _is_corrupt(error):
                return str(error)
            raise
        try:
            problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.DatabaseError as error:
            if _is_corrupt(error):
                return str(error)
            raise
        finally:
            db.close()
        return None if problems == ["ok"] else "quick_check: " + "; ".join(problems)

    def _open(self) -> sqlite3.Connection:
        """Connect, set WAL and the sync mode, create the tables."""
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            # A small WAL: checkpointed into the database every _WAL_PAGES pages (SQLite's default,
            # 1,000, lets it grow to 4 MB before a checkpoint, and on a nearly full disk it can
            # take the last free space with no room left for the checkpoint that would free it),
            # and cut back to _WAL_KEEP_BYTES after one.
            db.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={_WAL_KEEP_BYTES}")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, why: str) -> Path:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        self.path.rename(aside)
        for suffix in _SIDE_FILES:
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(aside.with_name(aside.name + suffix))
        log.error("edge buffer %s is corrupt (%s): moved it aside to %s and started a fresh buffer; the "
                  "records it held were not forwarded (salvage them from that file)", self.path, why, aside)
        return aside

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (the caller holds the lock): rolled back on any error; a full disk
        raises :class:`DiskFull`. Deletes of delivered rows a full disk refused go in first."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if self._unremoved:
                    self._delete_rows(sorted(self._unremoved))
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back on its own (a full disk)
                    db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as error:
            if _is_disk_full(error):
                self._checkpoint()
                raise DiskFull(f"no space left for the edge buffer {self.path}: {error}",
                               hint="free space on its file system; the edge holds back acknowledgements "
                               "until then") from error
            raise
        self._unremoved.clear()

    def _checkpoint(self) -> None:
        """After a full disk: copy the WAL into the database and truncate it, so that its space
        (the WAL only restarts from its beginning after a complete checkpoint, which SQLite's
        automatic one may never reach on a small disk) is there for the retry. Best effort: a
        checkpoint the disk cannot take either is left for the next try."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as error:
            log.debug("checkpoint after a full disk failed: %s", error)

    def _delete_rows(self, ids: Sequence[int]) -> tuple[int, int]:
        """Delete rows by id (inside a transaction); returns (bytes, rows) deleted."""
        freed, gone = self._sizes(ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            self._db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)  # noqa: S608
        return freed, gone

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
        Raises :class:`BufferFull` (policy ``block``) when they do not fit, :class:`DiskFull`
        when the file system does not; either way nothing was written.
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
            with self._transaction() as db:
                db.executemany("INSERT INTO outbox (topic, key, value, headers, ts, size) VALUES (?, ?, ?, ?, ?, ?)",
                               rows)
                if state:
                    db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", state)
            self._bytes += incoming
            self._count += len(rows)
            self._check_fill()

    def _evict(self, need: int) -> None:
        freed, dropped = 0, 0
        cursor = self._db.execute("SELECT id, size FROM outbox ORDER BY id")
        last_id = None
        for row_id, size in cursor:
            if row_id in self._unremoved:
                continue  # already out of the queue and its counts
            freed += size
            dropped += 1
            last_id = row_id
            if freed >= need:
                break
        if last_id is None:
            return
        with self._transaction() as db:
            db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
            db.execute("INSERT INTO counters (name, value) VALUES ('evicted', ?) "
                       "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (dropped,))
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
            gone = self._unremoved
            rows = self._db.execute(
                "SELECT id, topic, key, value, headers, ts FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit + len(gone))).fetchall()
            if gone:
                rows = [row for row in rows if row[0] not in gone][:limit]
        return [Stored(row_id, _record(topic, key, value, headers, ts))
                for row_id, topic, key, value, headers, ts in rows]

    def remove(self, ids: Iterable[int]) -> None:
        """Forget records that Kafka confirmed. Never raises on a full disk: the rows leave the
        queue now and are deleted from the file with the next write that succeeds."""
        with self._lock:
            id_list = [i for i in ids if i not in self._unremoved]
            if not id_list:
                return
            try:
                with self._transaction():
                    freed, gone = self._delete_rows(id_list)
            except DiskFull as full:
                if not self._unremoved:
                    log.warning("%s; %s delivered records leave the queue now and the file later", full,
                                len(id_list))
                freed, gone = self._sizes(id_list)
                self._unremoved.update(id_list)
            self._bytes -= freed
            self._count -= gone
            self._check_fill()

    def _sizes(self, ids: Sequence[int]) -> tuple[int, int]:
        """(bytes, rows) of the rows with these ids (a read: it works on a full disk)."""
        freed = found = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            row = self._db.execute(f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM outbox WHERE id IN ({marks})",  # noqa: S608
                                   chunk).fetchone()
            freed += int(row[0])
            found += int(row[1])
        return freed, found

    def replace(self, row_id: int, record: BufferRecord, *, keep: tuple[str, str, int] | None = None) -> None:
        """Swap a buffered record for another (its dead letter, or a dead letter's cut), at the
        end of the queue, in one transaction. With ``keep`` = (reason, detail, at_ms) the
        replaced record moves to the local ``dead_letters`` table in that transaction. The
        bound is not checked: the new record is at most about the old one's size."""
        headers = _headers_encoder.encode(list(record.headers)) if record.headers else None
        with self._lock:
            with self._transaction() as db:
                if keep is not None:
                    self._keep_locally(row_id, *keep)
                freed, gone = self._delete_rows([row_id])
                db.execute("INSERT INTO outbox (topic, key, value, headers, ts, size) VALUES (?, ?, ?, ?, ?, ?)",
                           (record.topic, record.key, record.value, headers, record.ts, record.size))
            self._bytes += record.size - freed
            self._count += 1 - gone

    def dead_letter(self, row_id: int, reason: str, detail: str, at_ms: int) -> None:
        """Move a buffered record to the local ``dead_letters`` table (Kafka refuses it and its
        dead-letter record alike): it leaves the queue but stays on disk."""
        with self._lock:
            with self._transaction():
                self._keep_locally(row_id, reason, detail, at_ms)
                freed, gone = self._delete_rows([row_id])
            self._bytes -= freed
            self._count -= gone

    def _keep_locally(self, row_id: int, reason: str, detail: str, at_ms: int) -> None:
        self._db.execute("INSERT INTO dead_letters (topic, key, value, headers, ts, reason, detail, at) "
                         "SELECT topic, key, value, headers, ts, ?, ?, ? FROM outbox WHERE id = ?",
                         (reason, detail, at_ms, row_id))

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
