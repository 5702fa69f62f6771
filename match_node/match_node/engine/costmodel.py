"""Online cost models of the latency budget: LightGlue's per-layer and assignment cost and the
spread of their prediction errors, fitted on the device at hand (engine/budget.py uses them).

Only counts and times: no ROS, no networks.
"""
from __future__ import annotations

from collections import deque

import numpy as np


class OnlineLeastSquares:
    """Recursive least squares with exponential forgetting, for small linear cost models.

    With `relative=True` it minimises relative rather than absolute errors (each sample is
    weighted by 1/target), so small and large workloads are predicted equally well: a 3%
    jitter on a 300 ms layer must not swamp a 5 ms one.
    """

    def __init__(self, num_features: int, forgetting: float = 0.98, relative: bool = True,
                 prior: np.ndarray | None = None, prior_variance: float = 1e8) -> None:
        self.weights = np.zeros(num_features) if prior is None else np.asarray(prior, float).copy()
        self.covariance = np.eye(num_features) * prior_variance
        self.forgetting = forgetting
        self.relative = relative
        self.count = 0

    def predict(self, features: np.ndarray) -> float:
        """The model's value for these features."""
        return float(features @ self.weights)

    def update(self, features: np.ndarray, target: float) -> None:
        """Fit one observed sample (features -> target)."""
        if self.relative:
            scale = 1.0 / max(abs(target), 1e-3)
            features, target = features * scale, target * scale
        p_x = self.covariance @ features
        gain = p_x / (self.forgetting + features @ p_x)
        self.weights = self.weights + gain * (target - features @ self.weights)
        self.covariance = (self.covariance - np.outer(gain, p_x)) / self.forgetting
        # Keep the covariance bounded when some feature is never excited.
        np.clip(self.covariance, -1e10, 1e10, out=self.covariance)
        self.count += 1


def smoothed(current: float, sample: float) -> float:
    """An exponential moving average's next value (weight 0.2 on the sample); the first
    sample (`current` 0: nothing seen yet) is taken as it is."""
    return float(sample) if current == 0 else 0.8 * current + 0.2 * float(sample)


def layer_features(n0: int, n1: int) -> np.ndarray:
    """Cost terms of one LightGlue layer: linear layers ~ n, self-attention ~ n^2 per image,
    cross-attention ~ n0*n1 (in thousands of points)."""
    a, b = n0 / 1000.0, n1 / 1000.0
    return np.array([1.0, a + b, a * a + b * b, a * b])


def assignment_features(n0: int, n1: int) -> np.ndarray:
    """Cost terms of LightGlue's assignment: ~ n and ~ n0*n1 (in thousands of points)."""
    a, b = n0 / 1000.0, n1 / 1000.0
    return np.array([1.0, a + b, a * b])


def extraction_features(pixels: float, keypoints: int) -> np.ndarray:
    """Dense network cost ~ pixels, descriptor head ~ keypoints (millions / thousands)."""
    return np.array([1.0, pixels / 1e6, keypoints / 1000.0])


class ErrorQuantile:
    """Quantile of recent actual/predicted ratios: the safety factor for a target percentile."""

    def __init__(self, window: int = 200) -> None:
        self._ratios: deque[float] = deque(maxlen=window)

    def add(self, actual: float, predicted: float) -> None:
        """Record one actual time against its prediction."""
        if predicted > 1e-6 and actual >= 0:
            self._ratios.append(actual / predicted)

    def factor(self, percentile: float, default: float = 1.2) -> float:
        """The ratio at `percentile`, clipped to [0.5, 5]; `default` until 5 are known."""
        if len(self._ratios) < 5:
            return default
        return float(np.clip(np.percentile(self._ratios, percentile), 0.5, 5.0))


class CostModel:
    """Online models of LightGlue's per-layer and assignment cost, in ms, on one device."""

    def __init__(self) -> None:
        self.layer = OnlineLeastSquares(4, forgetting=0.995)
        self.assignment = OnlineLeastSquares(3, forgetting=0.99)
        self.layer_error = ErrorQuantile()

    def predict_layer(self, n0: int, n1: int) -> float:
        """Predicted ms of one layer on n0 and n1 active points."""
        return max(self.layer.predict(layer_features(n0, n1)), 0.0)

    def predict_assignment(self, n0: int, n1: int) -> float:
        """Predicted ms of the assignment on n0 and n1 points."""
        return max(self.assignment.predict(assignment_features(n0, n1)), 0.0)

    def observe_layer(self, n0: int, n1: int, ms: float) -> None:
        """Learn from one timed layer (and, once converged, from its prediction error)."""
        if self.layer.count >= 10:  # errors of a model still converging are not noise
            self.layer_error.add(ms, self.predict_layer(n0, n1))
        self.layer.update(layer_features(n0, n1), ms)

    def observe_assignment(self, n0: int, n1: int, ms: float) -> None:
        """Learn from one timed assignment."""
        self.assignment.update(assignment_features(n0, n1), ms)
