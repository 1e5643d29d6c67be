"""Models in service, per asset type, and their hot reload.

A bundle offered from the compacted ``models`` topic (key = asset type; key
``<asset type>.candidate`` = a shadow candidate) or from a models folder is unpacked and
verified (format, sha256 of ``model.onnx``), its release record checked against the trust
list and the record in service (:mod:`forewarn.trust`: signed by a trusted key, over this very
bundle, not an older version unless a later signed promote or rollback record says so), loaded
into onnxruntime with its input schema checked against ``model.json``, and smoke-tested. Only
then does it replace the model in service (a bundle with the same content digest as the one in
service is ``unchanged``); the worker asks the registry for models between batches, so a swap never happens in
the middle of one. A bundle that fails any step is refused with its reason and the old model
keeps serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from forewarn.bundle import Bundle, BundleError, asset_types, read_bundle, resolve_bundle, unpack
from forewarn.inference import OnnxModel
from forewarn.settings import TrustSettings
from forewarn.trust import TrustList, UnsignedError, check_order, verify_release

__all__ = ["CANDIDATE_SUFFIX", "ModelRegistry", "Offer", "Refusal"]

log = logging.getLogger(__name__)

CANDIDATE_SUFFIX = ".candidate"


@dataclass(frozen=True)
class Refusal:
    """A bundle that was not taken into service, and why."""

    key: str
    reason: str
    detail: str
    version: str | None = None


@dataclass(frozen=True)
class Offer:
    """What :meth:`ModelRegistry.offer` did: ``accepted`` (the label now serving or shadowing),
    ``unchanged`` (already serving) or ``refused``."""

    outcome: str
    role: str
    asset_type: str
    label: str | None = None
    refusal: Refusal | None = None


@dataclass
class ModelRegistry:
    """The model in service (and an optional shadow candidate) per asset type.

    ``trust`` is the list of keys whose release records are accepted (``None``: none is);
    ``allow_unsigned`` also serves bundles without a record (a warning at every accept), but a
    record that is present must still verify."""

    threads: int = 1
    batch_size: int = 64
    shadow: bool = True
    trust: TrustList | None = None
    allow_unsigned: bool = False
    serving: dict[str, OnnxModel] = field(default_factory=dict)
    candidates: dict[str, OnnxModel] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, trust: TrustSettings, *, threads: int = 1, batch_size: int = 64,
                      shadow: bool = True) -> ModelRegistry:
        """A registry trusting the keys of ``[trust]`` (raises ConfigError for an unreadable key)."""
        trusted = TrustList.load(trust)
        if not trusted.keys and not trust.allow_unsigned:
            log.warning("no trusted model signing key (trust.keys): every bundle will be refused")
        return cls(threads=threads, batch_size=batch_size, shadow=shadow, trust=trusted,
                   allow_unsigned=trust.allow_unsigned)

    def load_dir(self, models_dir: Path) -> list[Offer]:
        """Serve the ``current`` (else newest) bundle of every asset type under ``models_dir``
        (or the one bundle folder it names)."""
        offers: list[Offer] = []
        folder = Path(models_dir)
        if (folder / "model.json").is_file():
            paths = [folder]
        else:
            paths = []
            for asset in asset_types(folder):
                try:
                    paths.append(resolve_bundle(folder / asset))
                except BundleError as error:
                    offers.append(self._refuse(asset, "serving", error, None))
        for path in paths:
            try:
                bundle = read_bundle(path)
            except BundleError as error:
                offers.append(self._refuse(path.parent.name, "serving", error, None))
                continue
            offers.append(self.offer_bundle(bundle, "serving"))
        return offers

    def offer(self, key: str, value: bytes | None) -> Offer:
        """A record of the ``models`` topic. An empty value (tombstone) of a candidate key
        withdraws the candidate; the model in service is never withdrawn."""
        role = "candidate" if key.endswith(CANDIDATE_SUFFIX) else "serving"
        asset = key[: -len(CANDIDATE_SUFFIX)] if role == "candidate" else key
        if not value:
            if role == "candidate" and self.candidates.pop(asset, None) is not None:
                log.info("%s: shadow candidate withdrawn", asset)
            return Offer("unchanged", role, asset)
        try:
            bundle = unpack(value, where=f"models[{key}]")
        except BundleError as error:
            return self._refuse(asset, role, error, None)
        return self.offer_bundle(bundle, role, expected_asset=asset)

    def offer_bundle(self, bundle: Bundle, role: str = "serving", expected_asset: str | None = None) -> Offer:
        asset = bundle.meta.asset_type
        if expected_asset is not None and asset != expected_asset:
            return self._refuse(expected_asset, role, BundleError(
                f"{bundle.label}: bundle is for asset type {asset!r}, published under {expected_asset!r}"),
                bundle.meta.version, reason="wrong_key")
        current = (self.serving if role == "serving" else self.candidates).get(asset)
        if current is not None and current.bundle.digest == bundle.digest:
            return Offer("unchanged", role, asset, bundle.label)
        try:
            self._authorise(bundle, current.bundle if current is not None else None)
            model = OnnxModel(bundle, threads=self.threads, batch_size=self.batch_size)
            model.smoke_test()
        except BundleError as error:
            return self._refuse(asset, role, error, bundle.meta.version)
        if bundle.release is None:
            log.warning("%s: serving UNSIGNED bundle %s (trust.allow_unsigned is on)", asset, bundle.label)
        if role == "candidate":
            if not self.shadow:
                return Offer("unchanged", role, asset, bundle.label)
            self.candidates[asset] = model
            log.info("%s: shadow candidate %s", asset, bundle.label)
        else:
            old = self.serving.get(asset)
            self.serving[asset] = model
            candidate = self.candidates.get(asset)
            if candidate is not None and candidate.bundle.digest == bundle.digest:
                del self.candidates[asset]  # the candidate was promoted
            log.info("%s: now serving %s (was %s)", asset, bundle.label, old.bundle.label if old else "nothing")
        return Offer("accepted", role, asset, bundle.label)

    def _authorise(self, bundle: Bundle, current: Bundle | None) -> None:
        """Raise the refusal unless the bundle's release record verifies (or it is unsigned and
        that is allowed) and comes in order after ``current``'s."""
        record = bundle.release
        if record is not None:
            verify_release(record, bundle, self.trust or TrustList({}))
        elif not self.allow_unsigned:
            raise UnsignedError(f"{bundle.label}: no release record",
                                hint="sign it with `forewarn model sign` and trust its key")
        if current is not None:
            check_order(record, bundle.meta.version, current.release, current.meta.version)

    @staticmethod
    def _refuse(asset: str, role: str, error: BundleError, version: str | None, reason: str | None = None) -> Offer:
        refusal = Refusal(asset, reason or error.reason, error.one_line(), version)
        log.error("refused %s bundle for %s (%s): %s", role, asset, refusal.reason, refusal.detail)
        return Offer("refused", role, asset, None, refusal)
