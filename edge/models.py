"""Model sync at the edge: the last good bundle per asset type, kept on disk.

At start the edge serves what it has on disk (``DATA_DIR/models/<asset>/<version>/`` and its
``current`` pointer), so it scores with no uplink at all. While Kafka is reachable it reads the
compacted ``models`` topic from the beginning (every record in order, as the data-centre
workers do) and offers each bundle to the :class:`~scoring.registry.ModelRegistry`, which
verifies it (format, sha256, its signed release record, input schema) and smoke-tests it. Only
a bundle that went into service is written to disk, with the release record that let it in
(``signature.json``), and made ``current``: a refused bundle never replaces the last good one,
on disk or in memory. What is on disk is verified again at every start like any offered
bundle, so a disk copy changed after it was kept is refused. Shadow candidates are ignored at
the edge.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from forewarn.bundle import (
    Bundle,
    BundleError,
    list_versions,
    read_bundle,
    set_current,
    write_bundle,
    write_release,
)
from forewarn.kafka import KafkaConsumer
from forewarn.ports import ConsumerLike
from forewarn.settings import KafkaSettings
from scoring.registry import CANDIDATE_SUFFIX, ModelRegistry, Offer

__all__ = ["ModelSync", "save_bundle"]

log = logging.getLogger(__name__)


def save_bundle(bundles_dir: Path, bundle: Bundle) -> Path:
    """Write ``bundle`` and its release record under ``bundles_dir`` (if that version is not
    there yet; the record is replaced if another one let the bundle in this time) and make it
    current."""
    meta = bundle.meta
    target = bundles_dir / meta.asset_type / meta.version
    if meta.version in list_versions(bundles_dir, meta.asset_type):
        try:
            kept = read_bundle(target)
            if kept.digest != bundle.digest:
                shutil.rmtree(target)  # same version, other content: the verified one wins
            elif kept.release != bundle.release and bundle.release is not None:
                write_release(target, bundle.release)
        except BundleError:
            shutil.rmtree(target)
    if not target.exists():
        write_bundle(bundles_dir, meta, bundle.onnx, release=bundle.release)
    set_current(bundles_dir, meta.asset_type, meta.version)
    return target


class ModelSync:
    """Loads the bundles on disk, then follows the ``models`` topic (``poll`` between batches)."""

    def __init__(self, registry: ModelRegistry, bundles_dir: Path, *, kafka: KafkaSettings | None = None,
                 models_topic: str = "models", group_id: str = "forewarn-edge.models",
                 consumer: ConsumerLike | None = None, seed_dir: Path | None = None) -> None:
        self.registry = registry
        self.bundles_dir = bundles_dir
        self.seed_dir = seed_dir
        self.models_topic = models_topic
        self._consumer: ConsumerLike | None = consumer
        if consumer is None and kafka is not None:
            # No committed offsets: every start replays the compacted topic from its beginning.
            # Prefetch at most ~2 MB (librdkafka's default queues up to 64 MB per partition).
            self._consumer = KafkaConsumer(kafka, group_id, [models_topic], **{
                "isolation.level": "read_uncommitted", "auto.offset.reset": "earliest",
                "queued.max.messages.kbytes": 2048})

    def load_local(self) -> list[Offer]:
        """Serve the seed folder's bundles (saved to disk when good), then the disk's."""
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        offers: list[Offer] = []
        if self.seed_dir is not None:
            for offer in self.registry.load_dir(self.seed_dir):
                offers.append(offer)
                self._keep(offer)
        offers.extend(self.registry.load_dir(self.bundles_dir))
        served = {asset: model.bundle.label for asset, model in self.registry.serving.items()}
        if served:
            log.info("serving from disk: %s", ", ".join(f"{a}={label}" for a, label in sorted(served.items())))
        else:
            log.warning("no model bundle on disk under %s; readings are buffered but not scored until one "
                        "comes from the models topic", self.bundles_dir)
        return offers

    def poll(self, max_messages: int = 10) -> list[Offer]:
        """Offer what the models topic brought since the last call (never waits)."""
        if self._consumer is None:
            return []
        offers: list[Offer] = []
        for message in self._consumer.consume(max_messages, 0.0):
            key = (message.key() or b"").decode(errors="replace")
            if key.endswith(CANDIDATE_SUFFIX):
                continue  # shadow candidates are a data-centre concern
            offer = self.registry.offer(key, message.value())
            offers.append(offer)
            self._keep(offer)
        return offers

    def _keep(self, offer: Offer) -> None:
        if offer.outcome != "accepted" or offer.role != "serving":
            return
        model = self.registry.serving.get(offer.asset_type)
        if model is None:
            return
        try:
            path = save_bundle(self.bundles_dir, model.bundle)
        except (BundleError, OSError) as error:
            log.error("could not keep %s on disk: %s", model.bundle.label, error)
            return
        log.info("%s: kept %s as the last good bundle (%s)", offer.asset_type, model.bundle.label, path)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
