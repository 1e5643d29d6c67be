"""Naive baselines reported beside every model.

* ``age``: every run lives the mean life of the failed training runs; RUL = that minus the
  run's age, capped.
* ``linear``: least squares on the window's last reading (standardised) plus age, capped.

The failure baseline alerts when the baseline's RUL is at most the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training.labels import LabelledWindows

__all__ = ["AgeBaseline", "LinearBaseline"]

FloatArray = npt.NDArray[np.float64]


@dataclass
class AgeBaseline:
    mean_life: float
    cap: float
    name: str = "age"

    @classmethod
    def fit(cls, data: LabelledWindows, cap: float) -> AgeBaseline:
        known = np.isfinite(data.rul)
        if not known.any():
            return cls(mean_life=float(np.max(data.age, initial=0.0)), cap=cap)
        life = data.age[known] + data.rul[known]  # the same for every window of a failed run
        per_run: dict[int, float] = {}
        for run, value in zip(data.run[known].tolist(), life.tolist(), strict=True):
            per_run[run] = value
        return cls(mean_life=float(np.mean(list(per_run.values()))), cap=cap)

    def predict(self, data: LabelledWindows) -> FloatArray:
        return np.clip(self.mean_life - data.age, 0.0, self.cap)


@dataclass
class LinearBaseline:
    mean: FloatArray
    scale: FloatArray
    coef: FloatArray
    cap: float
    name: str = "linear"

    @staticmethod
    def _design(data: LabelledWindows) -> FloatArray:
        last = data.x[:, -1, :].astype(np.float64)
        return np.column_stack([last, data.age])

    @classmethod
    def fit(cls, data: LabelledWindows, cap: float) -> LinearBaseline:
        x = cls._design(data)
        mean = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
        scale = np.nanstd(x, axis=0) if len(x) else np.ones(x.shape[1])
        mean = np.nan_to_num(mean)
        scale = np.where(np.isfinite(scale) & (scale > 1e-9), scale, 1.0)
        known = np.isfinite(data.rul)
        z = np.nan_to_num((x[known] - mean) / scale)
        design = np.column_stack([z, np.ones(len(z))])
        if len(design) == 0:
            coef = np.zeros(design.shape[1])
            coef[-1] = cap
        else:
            coef, *_ = np.linalg.lstsq(design, np.minimum(data.rul[known], cap), rcond=None)
        return cls(mean=mean, scale=scale, coef=coef, cap=cap)

    def predict(self, data: LabelledWindows) -> FloatArray:
        z = np.nan_to_num((self._design(data) - self.mean) / self.scale)
        return np.clip(np.column_stack([z, np.ones(len(z))]) @ self.coef, 0.0, self.cap)
