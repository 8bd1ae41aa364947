"""A bundle's decision settings in, every photo's answer out: accept, review or unknown.

A bundle trained since decisions exist gives calibrated probabilities (the temperature is inside
its model) and, as a second output, the photo's features. Its manifest's `decisions` hold:
- `accept`: the precision-against-threshold curve of its held-out photos' calibrated top
  confidence (with each precision's bound, `calibration.precision_bound`), the target precision
  chosen at training and the threshold whose precision bound reaches it;
- `unknown`: the distance (1 - cosine similarity) from a photo's features to the nearest of the
  training photos' features (`features.npy` in the bundle), and the threshold that keeps the
  share `keep` of held-out photos of the classes.

A photo is `unknown` when it is farther than that from every training photo (none of the
classes), else `accept` when its top confidence reaches the acceptance threshold, else
`review`. An error row has no decision; a bundle without `decisions` (made before them, or
imported from the codelab) gives none either (`load_decider` returns None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from flowers.models.atomic import read_npy
from flowers.models.bundle import FEATURES_FILE
from flowers.models.errors import BundleError, UsageError

ACCEPT, REVIEW, UNKNOWN = "accept", "review", "unknown"
DECISIONS = (ACCEPT, REVIEW, UNKNOWN)
DEFAULT_ACCEPT_PRECISION = 0.98
# Rows `nearest_other_distance` compares with all the others at a time.
_CHUNK = 1024


def check_precision(value: float, what: str = "--accept-precision") -> float:
    """`value` if it is a precision a threshold can be chosen for: in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and 0 < value <= 1):
        raise UsageError(f"{what} {value!r} is not a precision in (0, 1]: give e.g. 0.98")
    return float(value)


def threshold_for(curve: Sequence[dict[str, float]], precision: float) -> float:
    """The lowest threshold whose held-out precision (of every photo at or above it) reaches
    `precision`, read from its `bound` (`calibration.precision_bound`; a curve made before
    bounds has none, and is read from its counted precision, as it was); infinity (accept
    nothing) when none does."""
    reaching = [point["threshold"] for point in curve
                if point.get("bound", point["precision"]) >= precision]
    return min(reaching) if reaching else math.inf


def shown_threshold(threshold: float) -> float | None:
    """A threshold as JSON keeps it: None for one no confidence reaches."""
    return None if math.isinf(threshold) else round(threshold, 6)


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so a dot product is their cosine similarity."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def nearest_distance(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1 - the cosine similarity of each row of `features` to its nearest row of `reference`
    (already `normalised`): 0 for a photo like a training photo, up to 2.

    `einsum`, not `@`: a matrix product goes to OpenBLAS, whose threads (one per core) spin
    after each call and took a fifth of the cores from the networks of a worker's other
    processes (bench/trust.py: 0.73x the photos/s); einsum's own loop runs in this thread, at
    about 0.015 ms a photo against 1,200 training photos."""
    if len(features) == 0:
        return np.zeros(0, dtype=np.float32)
    return 1.0 - np.einsum("ij,kj->ik", normalised(features), reference).max(axis=1)


def nearest_other_distance(features: np.ndarray) -> np.ndarray:
    """`nearest_distance` of each row of `features` to the nearest of the other rows: what a
    new photo's distance to them all would be, for a photo among them."""
    if len(features) < 2:
        return np.full(len(features), 2.0, dtype=np.float32)
    rows = normalised(features)
    nearest = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), _CHUNK):  # a chunk of rows at a time: bounded memory
        similarity = np.einsum("ij,kj->ik", rows[start:start + _CHUNK], rows)
        own = np.arange(similarity.shape[0])
        similarity[own, start + own] = -np.inf
        nearest[start:start + _CHUNK] = similarity.max(axis=1)
    return 1.0 - nearest


@dataclass(frozen=True)
class Decider:
    """The thresholds a job decides with, and the training photos' features for `unknown`."""

    accept_precision: float
    accept_threshold: float
    unknown_threshold: float | None = None
    reference: np.ndarray | None = field(default=None, repr=False, compare=False)
    # The bundle's precision-against-threshold curve, for `at`.
    curve: tuple[dict[str, float], ...] = field(default=(), repr=False, compare=False)

    def at(self, precision: float | None) -> Decider:
        """The same decider accepting at `precision` (None: as it is)."""
        if precision is None or precision == self.accept_precision:
            return self
        return replace(self, accept_precision=precision,
                       accept_threshold=threshold_for(self.curve, precision))

    def decide(self, probabilities: np.ndarray, features: np.ndarray | None) -> list[str]:
        """One decision a row of `probabilities` (calibrated) and `features`."""
        accepted = np.asarray(probabilities).max(axis=1) >= self.accept_threshold
        unknown = np.zeros(len(accepted), dtype=bool)
        if self.unknown_threshold is not None and self.reference is not None:
            if features is None:
                raise BundleError("the bundle's model gives no features to tell unknown photos "
                                  "by: retrain it")
            unknown = nearest_distance(features, self.reference) > self.unknown_threshold
        return [UNKNOWN if u else ACCEPT if a else REVIEW
                for u, a in zip(unknown, accepted, strict=True)]

    def settings(self) -> dict[str, Any]:
        """What a job record keeps of the thresholds used."""
        return {"accept_precision": self.accept_precision,
                "accept_threshold": shown_threshold(self.accept_threshold),
                "unknown_threshold": (None if self.unknown_threshold is None
                                      else round(self.unknown_threshold, 6))}


def load_decider(bundle: Path, manifest: dict[str, Any],
                 accept_precision: float | None = None) -> Decider | None:
    """The decider of a bundle (its manifest's `decisions`, its features file), at
    `accept_precision` (default: the one it was trained for); None for a bundle without
    decisions. `BundleError` when they are damaged."""
    decisions = manifest.get("decisions")
    if decisions is None:
        return None
    try:
        accept = decisions["accept"]
        # A curve made before precision bounds has none: it is read by its counted precision.
        curve = [{"threshold": float(p["threshold"]), "precision": float(p["precision"]),
                  **({"bound": float(p["bound"])} if "bound" in p else {})}
                 for p in accept["curve"]]
        for point in curve:  # confidences and precisions, as the curve was measured
            if not all(0 <= value <= 1 for value in point.values()):
                raise ValueError(f"curve point {point} outside [0, 1]")
        target = check_precision(accept["target_precision"], "the bundle's target precision")
        unknown = decisions.get("unknown")
        threshold = None if unknown is None else float(unknown["threshold"])
        size = None if unknown is None else int(unknown["feature_size"])
        if threshold is not None and not math.isfinite(threshold):
            raise ValueError(f"unknown threshold {threshold}")
    except (KeyError, TypeError, ValueError, AttributeError, UsageError) as exc:
        raise BundleError(f"{bundle}/manifest.json's decisions are damaged ({exc}): retrain "
                          "the bundle") from None
    precision = target if accept_precision is None else accept_precision
    reference = None
    if threshold is not None and size is not None:
        reference = _reference(bundle / FEATURES_FILE, size)
    return Decider(precision, threshold_for(curve, precision), threshold, reference, tuple(curve))


def _reference(path: Path, size: int) -> np.ndarray:
    """The training photos' features, normalised, from the bundle's file (a regular file only:
    a pipe put there cannot block the reader)."""
    try:
        features = read_npy(path)
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path} ({exc}): retrain the bundle") from None
    if features.ndim != 2 or features.shape[1] != size or len(features) == 0:
        raise BundleError(f"{path} holds {features.shape} features, not (photos, {size}) as "
                          "manifest.json says: retrain the bundle")
    if features.dtype.kind != "f" or not np.isfinite(features).all():
        raise BundleError(f"{path} holds features that are not all numbers (NaN or infinite): "
                          "retrain the bundle")
    return normalised(features)
