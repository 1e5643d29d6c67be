"""The model bundle: ``models/<asset_type>/<version>/{model.onnx,model.json}`` and the
``current`` pointer.

``model.json`` (a :class:`ModelMeta`) describes everything a scorer needs to feed the graph
raw readings: the sensor order and units, the window length, the targets (RUL cap and unit,
failure horizon), alert thresholds, per-feature training statistics (for imputation and for
drift: quantile bin edges and proportions for PSI), lineage, metrics, library versions and
the sha256 of ``model.onnx`` (a checksum against damage, not an authenticity check).

``signature.json`` (a :class:`Release`, optional) is the signed release record that says this
bundle may be served and why; :mod:`forewarn.trust` signs and verifies it. It covers the
bundle's :attr:`~Bundle.digest`: a sha256 over a canonical encoding of the whole bundle (the
format, ``model.json``'s content and ``model.onnx``), so a threshold-only change is a new bundle.

``current`` is a one-line text file ``models/<asset_type>/current`` holding the version in
service; it is replaced atomically (write a temporary file, then ``os.replace``), so a
reader sees either the old or the new version, never a half-written one.

On the ``models`` Kafka topic a bundle travels as one msgpack message (:func:`pack`,
:func:`unpack`) keyed by the model name (the asset type), with its release record if it has
one (messages written before records existed decode as unsigned).

This module never imports TensorFlow: workers install ``.[edge]`` only.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from forewarn.errors import ForewarnError

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "BundleError",
    "BundleFormatError",
    "BundleSchemaError",
    "BundleTamperedError",
    "FeatureSpec",
    "FeatureStats",
    "InputSpec",
    "ModelMeta",
    "Release",
    "Targets",
    "Thresholds",
    "asset_types",
    "content_digest",
    "current_version",
    "encode_meta",
    "encode_release",
    "list_versions",
    "new_version",
    "pack",
    "read_bundle",
    "resolve_bundle",
    "set_current",
    "sha256_hex",
    "unpack",
    "verify",
    "write_bundle",
    "write_release",
]

log = logging.getLogger(__name__)

BUNDLE_FORMAT: Final = "forewarn-bundle/1"
MODEL_FILE: Final = "model.onnx"
META_FILE: Final = "model.json"
RELEASE_FILE: Final = "signature.json"
CURRENT_FILE: Final = "current"
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class BundleError(ForewarnError):
    """A bundle that cannot be used. ``reason`` is a short code for events and metrics."""

    reason = "bad_bundle"


class BundleFormatError(BundleError):
    """Missing files, unreadable or incomplete ``model.json``."""

    reason = "bad_format"


class BundleTamperedError(BundleError):
    """``model.onnx`` does not match the sha256 recorded in ``model.json``."""

    reason = "sha256_mismatch"


class BundleSchemaError(BundleError):
    """The ONNX graph's input or outputs do not match what ``model.json`` declares."""

    reason = "input_schema"


class FeatureSpec(msgspec.Struct, frozen=True):
    """One input column: a sensor or an operating setting, in graph order."""

    name: str
    kind: Literal["sensor", "setting"] = "sensor"
    unit: str | None = None


class InputSpec(msgspec.Struct, frozen=True):
    """The graph's single input: float32 ``[batch, window, len(features)]`` raw readings."""

    name: str
    window: int
    features: list[FeatureSpec]
    dtype: Literal["float32"] = "float32"

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


class Targets(msgspec.Struct, frozen=True):
    """What the heads predict. ``rul`` is in ``rul_unit`` (``readings`` counts readings,
    i.e. cycles), capped at ``rul_cap``; ``p_fail`` is the probability of a failure within
    ``horizon`` (same unit)."""

    heads: list[Literal["rul", "p_fail"]]
    rul_unit: str = "readings"
    rul_cap: float = 125.0
    horizon: float = 30.0


class Thresholds(msgspec.Struct, frozen=True):
    """Alert thresholds chosen on validation machines; scoring settings may override them."""

    p_fail: float = 0.5
    consecutive: int = 3
    rul_below: float | None = None


class FeatureStats(msgspec.Struct, frozen=True):
    """Training distribution of one feature: for imputation (``median``) and drift (PSI over
    ``bin_edges``, with the training ``proportions`` per bin; ``len(proportions) ==
    len(bin_edges) + 1``, the first and last bins open-ended)."""

    name: str
    mean: float
    std: float
    min: float
    max: float
    median: float
    missing_fraction: float
    bin_edges: list[float]
    proportions: list[float]


class ModelMeta(msgspec.Struct, frozen=True, omit_defaults=False):
    """The contents of ``model.json``."""

    name: str
    asset_type: str
    version: str
    created_at: str
    input: InputSpec
    targets: Targets
    thresholds: Thresholds
    feature_stats: list[FeatureStats]
    sha256: str
    format: str = BUNDLE_FORMAT
    architecture: dict[str, Any] = {}
    training: dict[str, Any] = {}
    lineage: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    libraries: dict[str, str] = {}

    @property
    def fill_values(self) -> list[float]:
        """Per-feature values to impute before a machine reported one (training medians)."""
        by_name = {s.name: s.median for s in self.feature_stats}
        return [by_name.get(name, float("nan")) for name in self.input.feature_names]


class Release(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A signed release record (``signature.json``): which bundle may be served and why.

    ``digest`` is the bundle's :attr:`Bundle.digest`; ``action`` says how it comes into service
    (``publish``: a new version, which must be newer than the one in service; ``promote`` /
    ``rollback``: any version, authorised by a record issued after the one in service);
    ``issued_at`` is UTC epoch milliseconds; ``key_id`` names the signing key and
    ``signature`` (hex) is its Ed25519 signature over every other field
    (:func:`forewarn.trust.signed_bytes`)."""

    asset_type: str
    version: str
    digest: str
    action: Literal["publish", "promote", "rollback"]
    reason: str
    issued_at: int
    key_id: str
    signature: str = ""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle in memory; ``path`` is where it was read from, if anywhere;
    ``release`` is the record that came with it (``None``: unsigned)."""

    meta: ModelMeta
    onnx: bytes = field(repr=False)
    path: Path | None = None
    release: Release | None = None

    @property
    def label(self) -> str:
        return f"{self.meta.name}@{self.meta.version}"

    @functools.cached_property
    def digest(self) -> str:
        """The content digest a release record signs (see :func:`content_digest`)."""
        return content_digest(self.meta, self.onnx)


_json_encoder = msgspec.json.Encoder(order="deterministic")
_meta_decoder = msgspec.json.Decoder(ModelMeta)


_release_decoder = msgspec.json.Decoder(Release)
_DIGEST_TAG: Final = b"forewarn-bundle-digest/1"


class _Packed(msgspec.Struct, frozen=True, kw_only=True):
    format: str
    meta: bytes
    release: bytes | None = None  # before the graph: a message still ends with model.onnx's bytes
    onnx: bytes


_packed_decoder = msgspec.msgpack.Decoder(_Packed)


def content_digest(meta: ModelMeta, onnx: bytes) -> str:
    """sha256 over the whole bundle: the format, ``model.json``'s content (as the canonical,
    key-sorted JSON of what it decodes to, so the same content on disk and on the topic has one
    digest) and ``model.onnx``, each length-prefixed so no field can run into the next."""
    digest = hashlib.sha256(_DIGEST_TAG)
    for part in (meta.format.encode(), _json_encoder.encode(meta), onnx):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _decode_release(data: bytes, where: str) -> Release:
    try:
        return _release_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:  # msgspec raises the latter for bad UTF-8
        raise BundleFormatError(f"{where}: not a valid release record: {error}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_version(now: datetime | None = None) -> str:
    """A sortable version name: the UTC time, e.g. ``20261127T051500Z``."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _check_name(what: str, value: str) -> None:
    if not _NAME_RE.match(value):
        raise BundleFormatError(f"{what} {value!r} is not a valid name",
                                hint="use letters, digits, '.', '_' or '-' (at most 100)")


def _decode_meta(data: bytes, where: str) -> ModelMeta:
    try:
        meta = _meta_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:  # msgspec raises the latter for bad UTF-8
        raise BundleFormatError(f"{where}: not a valid model.json: {error}") from None
    if meta.format != BUNDLE_FORMAT:
        raise BundleFormatError(f"{where}: unknown bundle format {meta.format!r}",
                                hint=f"this version reads {BUNDLE_FORMAT}")
    if meta.input.window < 1 or not meta.input.features:
        raise BundleFormatError(f"{where}: input needs window >= 1 and at least one feature")
    if not meta.targets.heads:
        raise BundleFormatError(f"{where}: targets.heads is empty")
    _check_name("asset type", meta.asset_type)
    _check_name("version", meta.version)
    return meta


def verify(meta: ModelMeta, onnx: bytes, where: str) -> None:
    """Raise :class:`BundleTamperedError` unless ``onnx`` hashes to ``meta.sha256``."""
    actual = sha256_hex(onnx)
    if actual != meta.sha256:
        raise BundleTamperedError(
            f"{where}: model.onnx sha256 {actual[:12]}… does not match model.json {meta.sha256[:12]}…",
            hint="the bundle was changed after it was written; re-export or re-publish it")


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and verify one bundle directory (``.../<asset_type>/<version>/``)."""
    folder = Path(path)
    meta_path, onnx_path = folder / META_FILE, folder / MODEL_FILE
    for needed in (meta_path, onnx_path):
        if not needed.is_file():
            raise BundleFormatError(f"{needed}: missing", hint="a bundle holds model.json and model.onnx")
    meta = _decode_meta(meta_path.read_bytes(), str(meta_path))
    onnx = onnx_path.read_bytes()
    verify(meta, onnx, str(folder))
    release_path = folder / RELEASE_FILE
    release = _decode_release(release_path.read_bytes(), str(release_path)) if release_path.is_file() else None
    return Bundle(meta=meta, onnx=onnx, path=folder, release=release)


def encode_meta(meta: ModelMeta) -> bytes:
    return msgspec.json.format(_json_encoder.encode(meta), indent=2) + b"\n"


def encode_release(release: Release) -> bytes:
    return msgspec.json.format(_json_encoder.encode(release), indent=2) + b"\n"


def write_release(folder: str | os.PathLike[str], release: Release) -> Path:
    """Put ``release`` in the bundle folder as ``signature.json`` (replaced atomically)."""
    target = Path(folder) / RELEASE_FILE
    fd, tmp = tempfile.mkstemp(prefix=".signature.", dir=target.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(encode_release(release))
    os.replace(tmp, target)
    return target


def write_bundle(models_dir: str | os.PathLike[str], meta: ModelMeta, onnx: bytes,
                 *, make_current: bool = False, release: Release | None = None) -> Path:
    """Write ``models_dir/<asset_type>/<version>/`` atomically (a temporary folder renamed into
    place), with ``release`` as its ``signature.json`` if given. The sha256 in ``meta`` is set
    from ``onnx`` (sign the bundle after that: the digest covers it). Returns the bundle folder."""
    _check_name("asset type", meta.asset_type)
    _check_name("version", meta.version)
    meta = msgspec.structs.replace(meta, sha256=sha256_hex(onnx))
    asset_dir = Path(models_dir) / meta.asset_type
    asset_dir.mkdir(parents=True, exist_ok=True)
    target = asset_dir / meta.version
    if target.exists():
        raise BundleFormatError(f"{target}: already exists", hint="versions are immutable; use a new version")
    tmp = Path(tempfile.mkdtemp(prefix=f".{meta.version}.", dir=asset_dir))
    try:
        (tmp / MODEL_FILE).write_bytes(onnx)
        (tmp / META_FILE).write_bytes(encode_meta(meta))
        if release is not None:
            (tmp / RELEASE_FILE).write_bytes(encode_release(release))
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s", target)
    if make_current:
        set_current(models_dir, meta.asset_type, meta.version)
    return target


def pack(bundle: Bundle, release: Release | None = None) -> bytes:
    """One message for the compacted ``models`` topic, carrying ``release`` (default: the
    bundle's own record)."""
    record = release if release is not None else bundle.release
    return msgspec.msgpack.encode(_Packed(format=BUNDLE_FORMAT, meta=_json_encoder.encode(bundle.meta),
                                          onnx=bundle.onnx,
                                          release=None if record is None else _json_encoder.encode(record)))


def unpack(data: bytes, where: str = "models message") -> Bundle:
    """Decode and verify a message made by :func:`pack`."""
    try:
        packed = _packed_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:  # msgspec raises the latter for bad UTF-8
        raise BundleFormatError(f"{where}: not a packed bundle: {error}") from None
    if packed.format != BUNDLE_FORMAT:
        raise BundleFormatError(f"{where}: unknown bundle format {packed.format!r}")
    meta = _decode_meta(packed.meta, where)
    verify(meta, packed.onnx, where)
    release = None if packed.release is None else _decode_release(packed.release, where)
    return Bundle(meta=meta, onnx=packed.onnx, release=release)


# -- the registry on disk ----------------------------------------------------------------


def asset_types(models_dir: str | os.PathLike[str]) -> list[str]:
    root = Path(models_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_versions(models_dir: str | os.PathLike[str], asset_type: str) -> list[str]:
    """Versions of one asset type, oldest first (version names sort by time)."""
    folder = Path(models_dir) / asset_type
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).is_file())


def current_version(models_dir: str | os.PathLike[str], asset_type: str) -> str | None:
    pointer = Path(models_dir) / asset_type / CURRENT_FILE
    if not pointer.is_file():
        return None
    version = pointer.read_text().strip()
    return version or None


def set_current(models_dir: str | os.PathLike[str], asset_type: str, version: str) -> None:
    """Point ``current`` at ``version`` (which must exist and verify)."""
    _check_name("version", version)
    asset_dir = Path(models_dir) / asset_type
    read_bundle(asset_dir / version)
    fd, tmp = tempfile.mkstemp(prefix=".current.", dir=asset_dir)
    with os.fdopen(fd, "w") as handle:
        handle.write(version + "\n")
    os.replace(tmp, asset_dir / CURRENT_FILE)
    log.info("%s: current is now %s", asset_type, version)


def resolve_bundle(path: str | os.PathLike[str], asset_type: str | None = None) -> Path:
    """Find a bundle folder from a bundle folder, an asset folder (its ``current``, else its
    newest version) or a models folder (needs ``asset_type`` unless it holds one type)."""
    root = Path(path)
    if (root / META_FILE).is_file():
        return root
    if not root.is_dir():
        raise BundleFormatError(f"{root}: no such bundle or models folder")
    if (root / CURRENT_FILE).is_file() or list_versions(root.parent, root.name):
        version = current_version(root.parent, root.name) or list_versions(root.parent, root.name)[-1]
        return root / version
    types = [t for t in asset_types(root) if list_versions(root, t)]
    if asset_type is None:
        if len(types) != 1:
            raise BundleFormatError(f"{root}: holds models for {types or 'no asset type'}",
                                    hint="pass --asset-type or a bundle folder")
        asset_type = types[0]
    if asset_type not in types:
        raise BundleFormatError(f"{root}: no model for asset type {asset_type!r} (found {types})")
    return resolve_bundle(root / asset_type)
