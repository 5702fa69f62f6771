"""The latency budget: a per-frame deadline met by early exit, keypoint and resolution control.

Two levels, both driven by cost models fitted online on the device at hand:

* Inside a frame, `FrameDeadline` is LightGlue's layer hook. Before each layer it predicts that
  layer's cost from the active point counts (after pruning) plus the assignment and the
  post-processing still to come, and stops the stack when they no longer fit the remaining
  budget; LightGlue then takes the assignment of the last layer that ran, as it does for its
  own confidence-based exit (which, with pruning, still applies first).
* Across frames, `LatencyBudget` moves the keypoint cap and the extraction resolution within
  their configured bounds so that the predicted frame time, at the target percentile of the
  observed prediction errors, fits the budget while affording `target_layers` layers; it gives
  them back when there is headroom. Steps are small and there is a dead band, so settings do
  not oscillate.

Timing is true on the GPU: the clock synchronises the device at each decision point instead of
reading host time over queued asynchronous work. No ROS, no networks: only counts and times.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np


class OnlineLeastSquares:
    """Recursive least squares with exponential forgetting, for small linear cost models.

    With `relative=True` it minimises relative rather than absolute errors (each sample is
    weighted by 1/target), so small and large workloads are predicted equally well: a 3%
    jitter on a 300 ms layer must not swamp a 5 ms one.
    """

    def __init__(self, num_features: int, forgetting: float = 0.98, relative: bool = True,
                 prior: np.ndarray | None = None, prior_variance: float = 1e4) -> None:
        self.weights = np.zeros(num_features) if prior is None else np.asarray(prior, float).copy()
        self.covariance = np.eye(num_features) * prior_variance
        self.forgetting = forgetting
        self.relative = relative
        self.count = 0

    def predict(self, features: np.ndarray) -> float:
        return float(features @ self.weights)

    def update(self, features: np.ndarray, target: float) -> None:
        if self.relative:
            scale = 1.0 / max(abs(target), 1e-3)
            features, target = features * scale, target * scale
        p_x = self.covariance @ features
        gain = p_x / (self.forgetting + features @ p_x)
        self.weights = self.weights + gain * (target - features @ self.weights)
        self.covariance = (self.covariance - np.outer(gain, p_x)) / self.forgetting
        # Keep the covariance bounded when some feature is never excited.
        np.clip(self.covariance, -1e6, 1e6, out=self.covariance)
        self.count += 1


def layer_features(n0: int, n1: int) -> np.ndarray:
    """Cost terms of one LightGlue layer: linear layers ~ n, self-attention ~ n^2 per image,
    cross-attention ~ n0*n1 (in thousands of points)."""
    a, b = n0 / 1000.0, n1 / 1000.0
    return np.array([1.0, a + b, a * a + b * b, a * b])


def assignment_features(n0: int, n1: int) -> np.ndarray:
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
        if predicted > 1e-6 and actual >= 0:
            self._ratios.append(actual / predicted)

    def factor(self, percentile: float, default: float = 1.2) -> float:
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
        return max(self.layer.predict(layer_features(n0, n1)), 0.0)

    def predict_assignment(self, n0: int, n1: int) -> float:
        return max(self.assignment.predict(assignment_features(n0, n1)), 0.0)

    def observe_layer(self, n0: int, n1: int, ms: float) -> None:
        if self.layer.count >= 10:  # errors of a model still converging are not noise
            self.layer_error.add(ms, self.predict_layer(n0, n1))
        self.layer.update(layer_features(n0, n1), ms)

    def observe_assignment(self, n0: int, n1: int, ms: float) -> None:
        self.assignment.update(assignment_features(n0, n1), ms)


def host_clock() -> float:
    return time.perf_counter() * 1e3


@dataclass
class FrameSettings:
    """What the budget asks of the next frame's extraction."""
    max_keypoints: int
    max_image_side: int   # 0: no resizing


class FrameDeadline:
    """LightGlue layer hook for one frame: times each layer and enforces the deadline."""

    def __init__(self, budget: "LatencyBudget", started_ms: float, clock: Callable[[], float]):
        self.budget = budget
        self.started_ms = started_ms
        self.clock = clock
        self._last: tuple[int, int, float] | None = None
        self._assignment: tuple[int, int, float] | None = None
        self.stopped_by_budget = False

    def remaining_ms(self) -> float:
        return self.budget.budget_ms - (self.clock() - self.started_ms)

    def before_layer(self, layer: int, n0: int, n1: int) -> bool:
        now = self.clock()
        if self._last is not None:
            self.budget.cost.observe_layer(self._last[0], self._last[1], now - self._last[2])
        self._last = (n0, n1, now)
        if not self.budget.enabled or layer == 0:
            return True
        cost = self.budget.cost
        margin = cost.layer_error.factor(self.budget.percentile)
        need = (margin * (cost.predict_layer(n0, n1) + cost.predict_assignment(n0, n1))
                + self.budget.reserve_ms())
        if (now - self.started_ms) + need > self.budget.budget_ms:
            self.stopped_by_budget = True
            self._last = None  # this layer will not run
            return False
        return True

    def before_assignment(self, layer: int, n0: int, n1: int) -> None:
        now = self.clock()
        if self._last is not None:
            self.budget.cost.observe_layer(self._last[0], self._last[1], now - self._last[2])
            self._last = None
        self._assignment = (n0, n1, now)

    def finish(self) -> None:
        """Call when the matcher's output is on the host: closes the assignment timing."""
        if self._assignment is not None:
            n0, n1, start = self._assignment
            self.budget.cost.observe_assignment(n0, n1, self.clock() - start)
            self._assignment = None


@dataclass
class FrameRecord:
    """Measurements of one processed frame, fed back to the controller."""
    preprocess_ms: float
    extract_ms: float
    match_ms: float
    total_ms: float              # whole frame, including what happens after the pipeline
    working_pixels: int          # pixels the extractor ran on
    detected: int                # keypoints found (after the cap)
    keypoint_cap: int
    image_side: int              # long side of the working image


class LatencyBudget:
    """Per-frame latency budget: deadlines inside LightGlue, keypoint/resolution control across
    frames. `budget_ms` <= 0 disables the deadline and the control (timing still learns)."""

    def __init__(self, budget_ms: float = 0.0, percentile: float = 95.0,
                 min_keypoints: int = 128, max_keypoints: int = 1024,
                 min_image_side: int = 320, max_image_side: int = 1024,
                 target_layers: int = 3, clock: Callable[[], float] = host_clock) -> None:
        self.clock = clock
        self.cost = CostModel()
        self.extraction = OnlineLeastSquares(3, forgetting=0.95)
        self.extraction_error = ErrorQuantile(window=100)
        self._overhead_ms = 0.0     # preprocess + everything after the match, smoothed
        self._density = 0.0         # keypoints found per working pixel, recent maximum
        self._native_side = 0       # long side of the incoming images
        self._native_pixels = 0
        self.keypoint_cap = float(max_keypoints)
        self.image_side = float(max_image_side)
        self.adjustments = 0        # number of frames where a setting changed
        self.last_demand_ratio = float("nan")
        self.configure(budget_ms, percentile, min_keypoints, max_keypoints, min_image_side,
                       max_image_side, target_layers)

    # --- configuration ----------------------------------------------------------------------
    def configure(self, budget_ms: float, percentile: float, min_keypoints: int,
                  max_keypoints: int, min_image_side: int, max_image_side: int,
                  target_layers: int) -> None:
        # A lower bound above its upper bound is taken as equal to it (the upper bounds are
        # the user's own max_keypoints / max_image_side, the lower ones budget defaults).
        min_keypoints = min(min_keypoints, max_keypoints)
        if max_image_side:
            min_image_side = min(min_image_side, max_image_side)
        self.budget_ms = float(budget_ms)
        self.percentile = float(percentile)
        self.min_keypoints, self.max_keypoints = int(min_keypoints), int(max_keypoints)
        self.min_image_side, self.max_image_side = int(min_image_side), int(max_image_side)
        self.target_layers = int(target_layers)
        self.keypoint_cap = float(np.clip(self.keypoint_cap, self.min_keypoints, self.max_keypoints))
        upper = self._side_upper()
        self.image_side = float(np.clip(self.image_side, min(self.min_image_side, upper), upper))
        if not self.enabled:  # without a budget the user's own settings apply unchanged
            self.keypoint_cap, self.image_side = float(self.max_keypoints), float(upper)

    @property
    def enabled(self) -> bool:
        return self.budget_ms > 0

    def _side_upper(self) -> int:
        native = self._native_side or (self.max_image_side or 1 << 16)
        return min(self.max_image_side, native) if self.max_image_side else native

    def settings(self) -> FrameSettings:
        side = int(round(self.image_side))
        if side >= self._side_upper() and not self.max_image_side:
            side = 0  # no resizing requested and none needed
        return FrameSettings(int(round(self.keypoint_cap)), side)

    def deadline(self, started_ms: float | None = None) -> FrameDeadline:
        return FrameDeadline(self, self.clock() if started_ms is None else started_ms, self.clock)

    def reserve_ms(self) -> float:
        """Time to keep for what follows the match (conversion, publishing)."""
        return self._overhead_ms

    # --- prediction -------------------------------------------------------------------------
    def _pixels_at(self, side: float) -> float:
        if not self._native_side:
            return 0.0
        scale = min(1.0, side / self._native_side)
        return self._native_pixels * scale * scale

    def predict_frame_ms(self, cap: float, side: float) -> float:
        """Predicted frame time at the target percentile if the frame runs `target_layers`."""
        pixels = self._pixels_at(side)
        points = int(min(cap, self._density * pixels)) if self._density else int(cap)
        extraction = max(self.extraction.predict(extraction_features(pixels, points)), 0.0)
        layers = self.target_layers * self.cost.predict_layer(points, points)
        matching = layers + self.cost.predict_assignment(points, points)
        p = self.percentile
        return (self.extraction_error.factor(p) * extraction
                + self.cost.layer_error.factor(p) * matching + self._overhead_ms)

    # --- control ----------------------------------------------------------------------------
    def observe(self, record: FrameRecord, native_size: tuple[int, int]) -> None:
        """Learn from a finished frame and adapt the settings for the next one."""
        native_side = max(native_size)
        if native_side != self._native_side:
            self._native_side, self._native_pixels = native_side, native_size[0] * native_size[1]
            self.configure(self.budget_ms, self.percentile, self.min_keypoints,
                           self.max_keypoints, self.min_image_side, self.max_image_side,
                           self.target_layers)
        features = extraction_features(record.working_pixels, record.detected)
        if self.extraction.count >= 3:
            self.extraction_error.add(record.extract_ms, self.extraction.predict(features))
        self.extraction.update(features, record.extract_ms)
        overhead = max(record.total_ms - record.extract_ms - record.match_ms, 0.0)
        self._overhead_ms = overhead if self._overhead_ms == 0 else 0.8 * self._overhead_ms + 0.2 * overhead
        if record.working_pixels:
            density = record.detected / record.working_pixels
            if record.detected < record.keypoint_cap:  # not capped: a true density reading
                self._density = max(density, 0.9 * self._density)
            else:
                self._density = max(self._density, density)
        if self.enabled and self.extraction.count >= 3 and self.cost.layer.count >= 5:
            self._adapt()

    def _adapt(self) -> None:
        cap, side = self.keypoint_cap, self.image_side
        demand = self.predict_frame_ms(cap, side)
        ratio = demand / self.budget_ms
        self.last_demand_ratio = ratio
        pixels = self._pixels_at(side)
        detected = self._density * pixels
        side_low = min(self.min_image_side, self._side_upper())
        if ratio > 1.0:
            step = float(np.clip(ratio ** -0.5, 0.85, 0.98))
            # Where the dense extractor dominates, only a smaller image helps; otherwise
            # fewer keypoints cut the matcher's superlinear cost first.
            extraction_share = 1.0 - self.target_layers * self.cost.predict_layer(
                int(min(cap, detected)), int(min(cap, detected))) / max(demand, 1e-6)
            cap_binds = cap < detected * 1.05
            if (extraction_share > 0.5 or cap <= self.min_keypoints) and side > side_low:
                side = max(side * step, side_low)
            elif cap > self.min_keypoints:
                # Bring the cap down to where it binds before shrinking it.
                cap = max(min(cap, detected) * (step if cap_binds else 1.0), self.min_keypoints)
            elif side > side_low:
                side = max(side * step, side_low)
        elif ratio < 0.85:
            # Headroom: give back resolution first (it also brings keypoints), then the cap.
            if side < self._side_upper():
                side = min(side * 1.03, self._side_upper())
            elif cap < self.max_keypoints:
                cap = min(cap * 1.05, self.max_keypoints)
        if (round(cap), round(side)) != (round(self.keypoint_cap), round(self.image_side)):
            self.adjustments += 1
        self.keypoint_cap, self.image_side = cap, side


def calibrate_layers(cost: CostModel, run_layer: Callable[[int], float],
                     sizes: tuple[int, ...] = (128, 256, 512, 1024), repeats: int = 2) -> None:
    """Seed the layer model: `run_layer(n)` runs one layer on n points per image, returns ms."""
    for n in sizes:
        run_layer(n)  # warm-up of kernels and allocator at this size
        for _ in range(repeats):
            cost.observe_layer(n, n, run_layer(n))
