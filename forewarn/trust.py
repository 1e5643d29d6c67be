"""Model signing: Ed25519 keys, the trust list, and signed release records.

A scorer (worker or edge) serves a bundle only with a :class:`~forewarn.bundle.Release` signed
by a key of its trust list (``[trust] keys``) whose ``digest`` is the bundle's
:attr:`~forewarn.bundle.Bundle.digest`, i.e. covers the graph and all of ``model.json``. The
record also says how the bundle comes into service, which :func:`check_order` holds against
the record in service: a ``publish`` must be a newer version (versions sort as time strings); a
``promote`` or ``rollback`` may name any version but must be issued after the record in service,
so replaying an old record changes nothing.

Refusals are :class:`~forewarn.bundle.BundleError` subclasses whose ``reason`` is the code that
events and metrics carry: ``unsigned``, ``unknown_key``, ``bad_signature`` (also: the record
does not match the bundle) and ``rollback``.

A key id is the first 16 hex digits of the sha256 of the raw public key. Private keys are
PKCS#8 PEM files, mode 0600, encrypted when ``FOREWARN_MODEL_KEY_PASSPHRASE`` is set (a
passphrase never goes on a command line).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from forewarn.bundle import Bundle, BundleError, Release
from forewarn.errors import ConfigError
from forewarn.settings import TrustSettings

__all__ = [
    "PASSPHRASE_ENV",
    "Action",
    "BadSignatureError",
    "Release",
    "RollbackError",
    "TrustList",
    "UnknownKeyError",
    "UnsignedError",
    "check_order",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_release",
    "signed_bytes",
    "verify_release",
]

PASSPHRASE_ENV: Final = "FOREWARN_MODEL_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
_SIGNED_TAG: Final = b"forewarn-release/1\n"
_encoder = msgspec.json.Encoder(order="deterministic")

Action = Literal["publish", "promote", "rollback"]


class UnsignedError(BundleError):
    """The bundle came without a release record."""

    reason = "unsigned"


class UnknownKeyError(BundleError):
    """The record is signed by a key that is not in the trust list."""

    reason = "unknown_key"


class BadSignatureError(BundleError):
    """The signature does not verify, or the record does not describe this bundle."""

    reason = "bad_signature"


class RollbackError(BundleError):
    """An older version, or an old record, pushed back without a newer signed record."""

    reason = "rollback"


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new private key (PKCS#8 PEM, 0600, encrypted with the passphrase from
    ``FOREWARN_MODEL_KEY_PASSPHRASE`` if set) and its public key (PEM). Refuses to overwrite
    either file. Returns the key id."""
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path}: already exists", hint="keys are never overwritten; choose another folder")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    passphrase = _passphrase()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = key.public_key()
    public_path.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(public)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a signing key (decrypted with ``FOREWARN_MODEL_KEY_PASSPHRASE`` if it is encrypted)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read signing key {path}: {error.strerror}",
                          hint="pass --key or set model.signing_key") from None
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase())
    except TypeError:
        raise ConfigError(f"signing key {path} is encrypted or not encrypted, unlike what "
                          f"{PASSPHRASE_ENV} says", hint=f"set or unset {PASSPHRASE_ENV}") from None
    except ValueError:
        raise ConfigError(f"signing key {path} cannot be read (wrong passphrase, or not a PEM private key)",
                          hint=f"check the file and {PASSPHRASE_ENV}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is not an Ed25519 key", hint="make one with `forewarn model keygen`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read trusted key {path}: {error.strerror}",
                          hint="fix trust.keys (FOREWARN_TRUST__KEYS)") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"trusted key {path} is not a PEM public key", hint="fix trust.keys") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"trusted key {path} is not an Ed25519 key", hint="model keys are Ed25519")
    return key


@dataclass(frozen=True)
class TrustList:
    """The public keys whose release records a scorer accepts, by key id."""

    keys: Mapping[str, Ed25519PublicKey]

    @classmethod
    def of(cls, keys: Iterable[Ed25519PublicKey]) -> TrustList:
        return cls({key_id(k): k for k in keys})

    @classmethod
    def load(cls, settings: TrustSettings) -> TrustList:
        """Read every key of ``settings.keys`` (a PEM file, or a folder of ``*.pub`` files)."""
        paths: list[Path] = []
        for path in settings.keys:
            if path.is_dir():
                paths.extend(sorted(path.glob("*.pub")))
            else:
                paths.append(path)
        return cls.of(load_public_key(p) for p in paths)


def signed_bytes(record: Release) -> bytes:
    """What the signature covers: every field of the record but the signature, canonically."""
    return _SIGNED_TAG + _encoder.encode(msgspec.structs.replace(record, signature=""))


def sign_release(bundle: Bundle, key: Ed25519PrivateKey, *, action: Action = "publish", reason: str = "",
                 issued_at: int | None = None) -> Release:
    """A release record for ``bundle``, signed with ``key``."""
    record = Release(asset_type=bundle.meta.asset_type, version=bundle.meta.version, digest=bundle.digest,
                     action=action, reason=reason,
                     issued_at=issued_at if issued_at is not None else time.time_ns() // 1_000_000,
                     key_id=key_id(key.public_key()))
    return msgspec.structs.replace(record, signature=key.sign(signed_bytes(record)).hex())


def verify_release(record: Release | None, bundle: Bundle, trust: TrustList) -> Release:
    """Check that ``record`` is signed by a trusted key and describes ``bundle``; returns it."""
    where = bundle.label
    if record is None:
        raise UnsignedError(f"{where}: no release record", hint="sign it with `forewarn model sign`")
    public = trust.keys.get(record.key_id)
    if public is None:
        raise UnknownKeyError(f"{where}: signed by key {record.key_id!r}, which is not trusted",
                              hint="add its public key to trust.keys")
    try:
        public.verify(bytes.fromhex(record.signature), signed_bytes(record))
    except (InvalidSignature, ValueError):
        raise BadSignatureError(f"{where}: the release record's signature does not verify") from None
    if (record.digest, record.asset_type, record.version) != (bundle.digest, bundle.meta.asset_type,
                                                             bundle.meta.version):
        raise BadSignatureError(f"{where}: the signed record is for {record.asset_type}@{record.version} "
                                f"digest {record.digest[:12]}…, not this bundle ({bundle.digest[:12]}…)",
                                hint="the bundle was changed after it was signed; sign it again")
    return record


def check_order(record: Release | None, version: str, serving: Release | None, serving_version: str) -> None:
    """Refuse (:class:`RollbackError`) ``version`` with ``record`` replacing ``serving_version``
    with its record ``serving``: a publish (or an unsigned bundle) must be a newer version; a
    promote or rollback must be issued after the record in service."""
    if record is None or record.action == "publish":
        if version <= serving_version:
            raise RollbackError(f"version {version} is not newer than {serving_version} in service",
                                hint="a signed promote or rollback record can bring an older version back")
        return
    if serving is not None and record.issued_at <= serving.issued_at:
        raise RollbackError(f"{record.action} record for {version} was issued at {record.issued_at}, not after "
                            f"the record of {serving_version} in service ({serving.issued_at})",
                            hint="sign a new record: forewarn model sign VERSION --action rollback|promote")
