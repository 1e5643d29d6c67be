"""Settings of the training commands: the shared connections plus one section per command.

Set them in ``forewarn.toml`` (``[train]``, ``[train.network]``, ``[evaluate]``, ``[predict]``,
``[export]``, ``[model]``), with ``FOREWARN_<SECTION>__<FIELD>`` environment variables (e.g.
``FOREWARN_TRAIN__WINDOW=30``, ``FOREWARN_TRAIN__NETWORK__ARCHITECTURE=lstm``) or with the
commands' flags, each of which names its variable in ``--help``. Only ``train --from-kafka``,
``export`` and ``model publish`` connect to Kafka.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from forewarn.settings import ServiceSettings

__all__ = [
    "LSTM_MAX_WINDOW",
    "Architecture",
    "EvaluateOptions",
    "ExportOptions",
    "Head",
    "NetworkOptions",
    "PredictOptions",
    "RegistryOptions",
    "RulUnit",
    "Target",
    "TrainOptions",
    "TrainingSettings",
]

Architecture = Literal["conv", "lstm"]
Target = Literal["rul", "failure", "both"]
RulUnit = Literal["readings", "time"]
Head = Literal["rul", "p_fail"]

# The lstm network is unrolled over the window so that the ONNX graph has no loop (tf2onnx
# cannot convert Keras 3's recurrent loop); the graph, and its conversion time, grow with the
# window, so the window is bounded.
LSTM_MAX_WINDOW = 200

_HEADS: dict[str, tuple[Head, ...]] = {"rul": ("rul",), "failure": ("p_fail",), "both": ("rul", "p_fail")}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _split_commas(value: Any) -> Any:
    """``"a, b"`` → ``("a", "b")`` and a blank string → unset (flags and environment
    variables); a TOML list passes through, so ``settings = []`` means none."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip()) or None
    return value


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


ColumnList = Annotated[tuple[str, ...] | None, NoDecode]


class NetworkOptions(_Section):
    """The network family and its sizes (``[train.network]``)."""

    architecture: Architecture = Field("conv", description="network family: conv (a temporal convolutional "
                                       f"network) or lstm (two LSTM layers; window at most {LSTM_MAX_WINDOW})")
    filters: int = Field(16, ge=1, description="Conv1D filters per layer (lstm: units of the second layer, "
                         "twice this in the first)")
    kernel_size: int = Field(3, ge=1, description="Conv1D kernel size")
    dilations: tuple[int, ...] = Field((1, 2, 4, 8), min_length=1, description="dilation of each residual "
                                       "Conv1D block")
    dense: int = Field(64, ge=1, description="units of the dense layer before the heads")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout after the dense layer")
    learning_rate: float = Field(2e-3, gt=0, description="Adam learning rate")
    rul_loss_weight: float = Field(1.0, ge=0, description="weight of the RUL loss")
    fail_loss_weight: float = Field(0.3, ge=0, description="weight of the failure loss")
    input_noise: float = Field(0.0, ge=0, description="standard deviation of Gaussian noise added to the "
                               "normalised inputs in training (0 = none)")
    l2: float = Field(0.0, ge=0, description="L2 penalty on the Conv1D and dense kernels (0 = none)")
    deltas: bool = Field(False, description="also feed each reading minus its window's mean")


class TrainOptions(_Section):
    """What ``forewarn train`` reads, how it trains and where it writes (``[train]``)."""

    data: Path | None = Field(None, description="readings file (.parquet/.csv) or a folder holding readings.* "
                              "and events.*")
    events: Path | None = Field(None, description="events file (failure/repair); default: events.* beside the "
                                "readings")
    run_to_failure: bool = Field(False, description="each machine's last reading is its failure (no events file)")
    from_kafka: bool = Field(False, description="read telemetry and maintenance from Kafka instead of --data")
    asset_type: str | None = Field(None, description="train this asset type (default: each type in the data)")
    features: ColumnList = Field(None, description="comma-separated columns to use (default: all)")
    settings: ColumnList = Field(None, description="comma-separated operating-setting columns: the model "
                                 "normalises sensors per operating condition (default: names with "
                                 "setting/setpoint, or the Kafka export's settings)")
    target: Target = Field("both", description="heads: RUL regression, failure-within-horizon, or both")
    window: int = Field(50, ge=2, le=1000, description="readings per window (30 suits short C-MAPSS-style "
                        "test trajectories)")
    rul_cap: float = Field(125.0, ge=1, description="piecewise-linear RUL cap")
    horizon: float = Field(30.0, ge=1, description="failure horizon for p_fail (RUL unit)")
    rul_unit: RulUnit = Field("readings", description="count RUL in readings (cycles) or in the data's time unit")
    network: NetworkOptions = NetworkOptions()
    epochs: int = Field(40, ge=1, le=10000, description="most epochs (early stopping usually ends sooner)")
    batch_size: int = Field(256, ge=1, le=100000, description="mini-batch size")
    patience: int = Field(6, ge=1, le=1000, description="early-stopping patience (epochs)")
    seed: int = Field(42, description="random seed: the same seed gives the same model and metrics")
    max_windows: int | None = Field(None, ge=1, description="sample at most this many training windows")
    max_imputed: int = Field(5, ge=0, description="consecutive readings a missing sensor may be imputed for "
                             "(recorded in model.json for the workers)")
    test_fraction: float = Field(0.2, ge=0, le=0.9, description="machines held out for the test metrics")
    val_fraction: float = Field(0.15, ge=0.01, le=0.9, description="of the rest, machines for early stopping "
                                "and thresholds")
    alert_consecutive: int = Field(2, ge=1, le=100, description="windows in a row at or above the threshold "
                                   "that open an alert (recorded in model.json)")
    min_precision: float = Field(0.85, ge=0.01, le=1.0, description="alert precision the p_fail threshold must "
                                 "reach on validation machines")
    folds: int = Field(0, ge=0, le=20, description="also run grouped k-fold cross-validation by machine (K > 1) "
                       "and report it")
    promote: bool = Field(False, description="point `current` at the new version (always done when there is "
                          "none)")
    models_dir: Path = Field(Path("models"), description="models folder; the bundle goes to "
                             "OUT/<asset_type>/<version>/")
    quiet: bool = Field(False, description="no progress bar")
    json_output: bool = Field(False, description="print the metrics as JSON")

    _split = field_validator("features", "settings", mode="before")(_split_commas)

    @model_validator(mode="after")
    def _lstm_window(self) -> TrainOptions:
        if self.network.architecture == "lstm" and self.window > LSTM_MAX_WINDOW:
            raise ValueError(f"the lstm network takes windows of at most {LSTM_MAX_WINDOW} readings "
                             f"(it is unrolled over the window for the ONNX export), not {self.window}")
        return self

    @property
    def heads(self) -> list[Head]:
        """The model's outputs for ``target``, in graph order."""
        return list(_HEADS[self.target])


class EvaluateOptions(_Section):
    """``forewarn evaluate`` (``[evaluate]``)."""

    model: Path | None = Field(None, description="a bundle folder, an asset folder (its current version) or a "
                               "models folder (required)")
    data: Path | None = Field(None, description="readings file or folder (required)")
    events: Path | None = Field(None, description="events file (default: events.* beside the readings)")
    run_to_failure: bool = Field(False, description="each machine's last reading is its failure")
    asset_type: str | None = Field(None, description="asset type (when the data or models folder holds several)")
    json_output: bool = Field(False, description="print the metrics as JSON")


class PredictOptions(_Section):
    """``forewarn predict`` (``[predict]``)."""

    model: Path | None = Field(None, description="a bundle folder, an asset folder (its current version) or a "
                               "models folder (required)")
    data: Path | None = Field(None, description="readings file or folder (required)")
    asset_type: str | None = Field(None, description="asset type (when the data or models folder holds several)")
    last: bool = Field(False, description="one row per machine: its last complete window")
    out: Path | None = Field(None, description="output CSV: machine_id,time,rul,p_fail (required)")


class ExportOptions(_Section):
    """``forewarn export`` (``[export]``)."""

    out: Path | None = Field(None, description="dataset folder, OUT/<asset_type>/... (required)")
    since: datetime | None = Field(None, description="only readings at or after this ISO-8601 time (UTC if no "
                                   "zone)")
    until: datetime | None = Field(None, description="only records before this ISO-8601 time (UTC if no zone)")
    timeout_s: float = Field(30.0, ge=1, description="give up when Kafka sends nothing for this many seconds")

    _zone = field_validator("since", "until", mode="after")(_utc)


class RegistryOptions(_Section):
    """``forewarn model list|show|promote|publish|keygen|sign|verify`` (``[model]``)."""

    models_dir: Path = Field(Path("models"), description="the models folder: one folder per asset type, "
                             "holding its versions and `current`")
    asset_type: str | None = Field(None, description="asset type (when the models folder holds several)")
    signing_key: Path | None = Field(None, description="Ed25519 private key (PEM) that `model sign` and "
                                     "`train` sign with (its passphrase, if any, in FOREWARN_MODEL_KEY_PASSPHRASE)")
    allow_unsigned: bool = Field(False, description="let `model publish` put an unsigned bundle on Kafka (scorers "
                                 "refuse it unless they allow unsigned bundles themselves)")


class TrainingSettings(ServiceSettings):
    """Everything ``forewarn train | evaluate | predict | export | model`` need."""

    train: TrainOptions = TrainOptions()
    evaluate: EvaluateOptions = EvaluateOptions()
    predict: PredictOptions = PredictOptions()
    export: ExportOptions = ExportOptions()
    model: RegistryOptions = RegistryOptions()
