"""MQTT client ids that every broker takes.

MQTT 3.1.1 (3.1.3.1) says a server MUST allow client ids of 1 to 23 characters and MAY allow
longer ones (MQTT 3.1, and brokers configured after it, refuse them). So the ids the bridge picks
itself (its default id, and the ids of the connections it opens next to the main one: the
shared-subscription probe, the broker watch) are at most :data:`PORTABLE_MAX` characters, and a
deterministic hash keeps them stable across restarts (a persistent session is found by its id)
and distinct for distinct inputs. A configured id is used as it is, however long.
"""

from __future__ import annotations

import hashlib

__all__ = ["IDENTIFIER_REJECTED", "PORTABLE_MAX", "derived_client_id", "fit_client_id", "host_client_id",
           "short_hash"]

PORTABLE_MAX = 23
IDENTIFIER_REJECTED = (0x02, 0x85)  # CONNACK: 3.1.1 return code 2, MQTT 5 reason 0x85
_TAIL_MAX = 6  # characters of a long id's last "-" part that stay readable in its fitted form
_DIGEST = 6


def short_hash(text: str, chars: int = 8) -> str:
    """A stable hex digest of ``text`` (the same in every process and on every host)."""
    return hashlib.blake2s(text.encode(), digest_size=(chars + 1) // 2).hexdigest()[:chars]


def host_client_id(hostname: str, slot: int = 1) -> str:
    """The default id of the ``slot``-th bridge on a host: ``fwb-<hash of the host name>``, then
    ``-2``, ``-3``, ... (at most 15 characters for slots up to 999)."""
    base = f"fwb-{short_hash(hostname)}"
    return base if slot == 1 else f"{base}-{slot}"


def fit_client_id(client_id: str) -> str:
    """``client_id`` when it is at most :data:`PORTABLE_MAX` characters; else a prefix of it, a
    hash of the whole id, and its last ``-`` part (up to six characters), in exactly that many."""
    if len(client_id) <= PORTABLE_MAX:
        return client_id
    head, _dash, tail = client_id.rpartition("-")
    tail = tail[:_TAIL_MAX] if head else ""
    suffix = f"-{short_hash(client_id, _DIGEST)}" + (f"-{tail}" if tail else "")
    return client_id[:PORTABLE_MAX - len(suffix)] + suffix


def derived_client_id(client_id: str, role: str) -> str:
    """The id of a helper connection (``role``: ``probe``, ``watch``) of the client ``client_id``:
    ``<client id>-<role>``, fitted to :data:`PORTABLE_MAX` characters."""
    return fit_client_id(f"{client_id}-{role}")
