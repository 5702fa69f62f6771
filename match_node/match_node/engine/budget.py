"""The latency budget: a per-frame deadline met by early exit, keypoint and resolution control.

Two levels, both driven by cost models fitted online on the device at hand:

* Inside a frame, `FrameDeadline` is LightGlue's layer hook. Before each layer it predicts that
  layer's cost from the active point counts (after pruning) plus the assignment and the
  post-processing still to come, and stops the stack when they no longer fit the remaining
  budget; LightGlue then takes the assignment of the last layer that ran, as it does for its
  own confidence-based exit (which, with pruning, still applies first).
* Across frames, `LatencyBudget` moves the keypoint cap and the extraction resolution within
  their configured bounds so that a slow frame (the target percentile of the observed
  prediction errors) still fits with one layer and a typical frame affords `target_layers`
  layers; it gives them back when there is headroom. Steps are damped and there is a dead
  band, so settings do not oscillate.
* On matcher 'auto''s keypoint textureless paths (SIFT, the XFeat fallback), which have no
  layers to cut, `LatencyBudget.path_side` sizes each extraction within the frame: the largest
  resolution whose predicted cost (`PathCost`, learned per path like the extractor's) still
  leaves the pair's match and refinement inside the remaining budget.

Timing is true on the GPU: the clock synchronises the device at each decision point instead of
reading host time over queued asynchronous work. No ROS, no networks: only counts and times.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import params as P
from .costmodel import (CostModel, ErrorQuantile, OnlineLeastSquares, extraction_features,
                        smoothed)


def host_clock() -> float:
    """Host time in ms, the clock of a budget whose device work is synchronous (CPU)."""
    return time.perf_counter() * 1e3


@dataclass
class FrameSettings:
    """What the budget asks of the next frame's extraction."""
    max_keypoints: int
    max_image_side: int   # 0: no resizing
    # None: the configured detection threshold. When the budget lowered the resolution, a
    # quarter of it, with the cap at the scene's full-resolution keypoint count: the frame
    # keeps about as many keypoints as at full resolution, which keeps most of the correct
    # matches (a fixed threshold loses keypoints with the pixels), while a textureless scene
    # still does not get keypoints on noise.
    detection_threshold: float | None = None


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
    # Served by a textureless path of matcher 'auto' (its match is not the keypoint
    # matcher's, its keypoints are not the scene's usual count): see LatencyBudget.observe.
    textureless: bool = False


class PathCost:
    """What one keypoint textureless path of matcher 'auto' costs a frame: its extraction,
    learned per pixel and keypoint like the extractor's, and the match and the refinement of
    a pair that follow it (smoothed)."""

    def __init__(self) -> None:
        self.extraction = OnlineLeastSquares(3, forgetting=0.95)
        self.extraction_error = ErrorQuantile(window=50)
        self.keypoints = 0.0   # keypoints per frame, smoothed
        self.match_ms = 0.0
        self.refine_ms = 0.0   # of a refined pair (a skipped refinement says nothing of it)

    def observe_extraction(self, pixels: int, keypoints: int, ms: float) -> None:
        features = extraction_features(pixels, keypoints)
        if self.extraction.count >= 2:
            self.extraction_error.add(ms, self.extraction.predict(features))
        self.extraction.update(features, ms)
        self.keypoints = smoothed(self.keypoints, keypoints)

    def observe_pair(self, match_ms: float, refine_ms: float | None) -> None:
        """A pair's match time, and its refinement time where it was refined."""
        self.match_ms = smoothed(self.match_ms, match_ms)
        if refine_ms is not None:
            self.refine_ms = smoothed(self.refine_ms, refine_ms)

    @property
    def known(self) -> bool:
        """Whether the extraction model has seen both a small and a large image (two)."""
        return self.extraction.count >= 2

    def predict_extraction(self, pixels: float) -> float:
        return max(self.extraction.predict(extraction_features(pixels, int(self.keypoints))),
                   0.0)


class LatencyBudget:
    """Per-frame latency budget: deadlines inside LightGlue, keypoint/resolution control across
    frames. `budget_ms` <= 0 disables the deadline and the control (timing still learns).

    The bounds default to the parameters of the same meaning in params.py (latency_budget_ms,
    budget_percentile, min/max_keypoints, min/max_image_side, budget_target_layers), so a
    default is stated once. `detection_threshold` is the extractor's configured threshold,
    which its owner sets (the pipeline does, from the extractor family); while it is None the
    budget cannot lower it at a reduced resolution and frames keep the configured one.
    """

    def __init__(self, budget_ms: float = P.SPECS["latency_budget_ms"].default,
                 percentile: float = P.SPECS["budget_percentile"].default,
                 min_keypoints: int = P.SPECS["min_keypoints"].default,
                 max_keypoints: int = P.SPECS["max_keypoints"].default,
                 min_image_side: int = P.SPECS["min_image_side"].default,
                 max_image_side: int = P.SPECS["max_image_side"].default,
                 target_layers: int = P.SPECS["budget_target_layers"].default,
                 detection_threshold: float | None = None,
                 clock: Callable[[], float] = host_clock) -> None:
        self.clock = clock
        self.detection_threshold = detection_threshold
        self.cost = CostModel()
        self.extraction = OnlineLeastSquares(3, forgetting=0.95)
        self.extraction_error = ErrorQuantile(window=50)
        self._overhead_ms = 0.0     # preprocess + everything after the match, smoothed
        self._full_count = 0.0      # keypoints per frame at full resolution, smoothed
        self._native_side = 0       # long side of the incoming images
        self._native_pixels = 0
        self.keypoint_cap = float(max_keypoints)
        self.image_side = float(max_image_side)
        self.adjustments = 0        # number of frames where a setting changed
        self.last_demand_ratio = float("nan")
        # Whether path_side sizes the textureless paths' extractions (a benchmark compares).
        self.size_textureless_paths = True
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

    def settings(self, image_size: tuple[int, int] | None = None) -> FrameSettings:
        """Keypoint cap and working resolution for the next frame, of `image_size` (w, h) when
        known: a frame of a new size must not be extracted at the previous size's side."""
        if image_size is not None:
            self._set_native(image_size)
        side = int(round(self.image_side))
        reduced = self.enabled and side < self._side_upper()
        if side >= self._side_upper() and not self.max_image_side:
            side = 0  # no resizing requested and none needed
        cap = int(round(self.keypoint_cap))
        if reduced and self._full_count:
            lowered = None if self.detection_threshold is None else self.detection_threshold / 4
            return FrameSettings(max(1, int(min(cap, self._full_count))), side, lowered)
        return FrameSettings(cap, side)

    def _points(self, cap: float) -> int:
        """Keypoints a frame will have under this cap (at any resolution, see settings())."""
        return int(min(cap, self._full_count)) if self._full_count else int(cap)

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
        """Predicted frame time at these settings, as the larger of two requirements:

        * safety: at the target percentile of the observed prediction errors, a slow frame
          must still fit with a single layer (the deadline cuts the other layers);
        * quality: a typical frame (median) must afford `target_layers` layers.
        """
        pixels = self._pixels_at(side)
        points = self._points(cap)
        extraction = max(self.extraction.predict(extraction_features(pixels, points)), 0.0)
        layer = self.cost.predict_layer(points, points)
        assignment = self.cost.predict_assignment(points, points)
        p = self.percentile
        last = self.cost.layer_error.factor(p) * (layer + assignment)  # as the deadline sees it
        safety = self.extraction_error.factor(p) * extraction + last
        typical = extraction + (self.target_layers - 1) * layer + last
        return max(safety, typical) + self._overhead_ms

    def _set_native(self, native_size: tuple[int, int]) -> None:
        native_side = max(native_size)
        if native_side != self._native_side:
            # Keep the working scale relative to the image: full resolution stays full.
            scale = self.image_side / self._side_upper() if self._native_side else 1.0
            self._native_side, self._native_pixels = native_side, native_size[0] * native_size[1]
            self._full_count = 0.0  # a count of another image size says nothing of this one
            self.image_side = min(scale, 1.0) * self._side_upper()
            self.configure(self.budget_ms, self.percentile, self.min_keypoints,
                           self.max_keypoints, self.min_image_side, self.max_image_side,
                           self.target_layers)

    # --- control ----------------------------------------------------------------------------
    def observe_extraction(self, pixels: int, keypoints: int, ms: float) -> None:
        """Seed the extractor's model with one timed extraction (Pipeline.calibrate)."""
        self.extraction.update(extraction_features(pixels, keypoints), ms)

    def observe(self, record: FrameRecord, native_size: tuple[int, int]) -> None:
        """Learn from a finished frame and adapt the settings for the next one.

        A frame a textureless path served teaches the extraction model only. Its few
        keypoints would pass for the scene's full-resolution count and its cheap LightGlue
        part for headroom: the settings would climb through a textureless stretch and the
        textured frames after it would start far over the budget (measured on
        bench/textureless_budget.py's streams: extraction at full resolution, frames ~1.5x the
        budget, for the rest of the run). The settings stay those of the textured frames;
        the textureless path takes what is left of each frame (path_side)."""
        self._set_native(native_size)
        features = extraction_features(record.working_pixels, record.detected)
        if self.extraction.count >= 3:
            self.extraction_error.add(record.extract_ms, self.extraction.predict(features))
        self.extraction.update(features, record.extract_ms)
        if record.textureless:
            return
        overhead = max(record.total_ms - record.extract_ms - record.match_ms, 0.0)
        self._overhead_ms = smoothed(self._overhead_ms, overhead)
        if record.image_side >= self._side_upper() and record.detected < record.keypoint_cap:
            # A full-resolution frame that the cap did not limit: the scene's keypoint count.
            self._full_count = smoothed(self._full_count, record.detected)
        elif not self._full_count:
            self._full_count = float(record.detected)
        # A matcher without layers (nearest neighbours, SuperGlue) is timed as a whole, as
        # the assignment step: the control needs either model.
        matching_known = self.cost.layer.count >= 5 or self.cost.assignment.count >= 5
        if self.enabled and self.extraction.count >= 3 and matching_known:
            self._adapt()

    def _adapt(self) -> None:
        """Move the settings halfway towards those whose predicted time fits the budget.

        Down: the cap where the matcher dominates (its cost is superlinear in points), the
        resolution where the dense extractor does. Up, with headroom: resolution first (it
        also brings keypoints back), then the cap, by at most 10% per frame. Settings aim at
        95% of the budget, and a dead band between 88% and 97% keeps them still under a
        steady load.
        """
        cap, side = self.keypoint_cap, self.image_side
        demand = self.predict_frame_ms(cap, side)
        self.last_demand_ratio = demand / self.budget_ms
        side_low = min(self.min_image_side, self._side_upper())
        side_high = self._side_upper()
        goal = 0.95 * self.budget_ms  # plan a little below the budget, not on its edge
        if demand > 0.97 * self.budget_ms:
            points = self._points(cap)
            matching = (self.target_layers * self.cost.predict_layer(int(points), int(points))
                        + self.cost.predict_assignment(int(points), int(points)))
            if (matching > 0.5 * demand or side <= side_low) and cap > self.min_keypoints:
                # Bring the cap to where it binds, then to what fits.
                top = min(cap, max(points, self.min_keypoints))
                target = self._largest_fitting(lambda c: self.predict_frame_ms(c, side),
                                               self.min_keypoints, top, goal)
                cap = self._approach(cap, target, down=True)
            elif side > side_low:
                target = self._largest_fitting(lambda x: self.predict_frame_ms(cap, x),
                                               side_low, side, goal)
                side = self._approach(side, target, down=True)
        elif demand < 0.88 * self.budget_ms:
            if side < side_high:
                target = self._largest_fitting(lambda x: self.predict_frame_ms(cap, x),
                                               side, side_high, goal)
                side = self._approach(side, target, down=False)
            elif cap < self.max_keypoints:
                target = self._largest_fitting(lambda c: self.predict_frame_ms(c, side),
                                               cap, self.max_keypoints, goal)
                cap = self._approach(cap, target, down=False)
        if (round(cap), round(side)) != (round(self.keypoint_cap), round(self.image_side)):
            self.adjustments += 1
        self.keypoint_cap, self.image_side = cap, side

    def path_side(self, cost: PathCost, image_size: tuple[int, int], remaining_ms: float,
                  views: int, refining: bool) -> int:
        """Long side at which a keypoint textureless path extracts `views` (1 or 2) frames of
        `image_size` (w, h) when `remaining_ms` of the frame's budget are left: the largest
        one, down to `min_image_side`, whose predicted extraction (at the target percentile
        of its errors) still leaves the pair's match, its refinement (`refining`) and what
        follows the match inside the budget. A refined pair is worth a smaller image: on
        blurred frames the coarse-to-fine alignment is what makes the matches precise, and
        half resolution costs SIFT little there. Without a budget, or before the path's cost
        is known (Pipeline.calibrate measures it), the configured `max_image_side`."""
        if not (self.enabled and self.size_textureless_paths and cost.known):
            return self.max_image_side
        native_side, pixels = max(image_size), image_size[0] * image_size[1]
        upper = min(self.max_image_side, native_side) if self.max_image_side else native_side
        low = min(self.min_image_side, upper)
        after = cost.match_ms + (cost.refine_ms if refining else 0.0) + self.reserve_ms()
        per_view = (remaining_ms - after) / max(views, 1)
        factor = cost.extraction_error.factor(self.percentile)

        def extraction_ms(side: float) -> float:
            return factor * cost.predict_extraction(pixels * min(1.0, side / native_side) ** 2)

        side = self._largest_fitting(extraction_ms, low, upper, per_view)
        return self.max_image_side if side >= upper else int(side)

    @staticmethod
    def _largest_fitting(cost: Callable[[float], float], low: float, high: float,
                         limit: float) -> float:
        """Largest x in [low, high] with cost(x) <= limit (cost grows with x); low if none."""
        if cost(high) <= limit:
            return high
        if cost(low) > limit:
            return low
        for _ in range(20):
            middle = 0.5 * (low + high)
            low, high = (middle, high) if cost(middle) <= limit else (low, middle)
        return low

    @staticmethod
    def _approach(current: float, target: float, down: bool) -> float:
        """Halfway to the target: fast enough to catch an overload within a few frames,
        damped so that model errors do not make the setting overshoot and oscillate."""
        if down:
            return min(current, current + 0.5 * (target - current))
        if target <= current:
            return current
        step = min(current + 0.5 * (target - current), current * 1.10)
        return target if target - step < 0.02 * target else step  # finish, no endless creep


def calibrate_layers(cost: CostModel, run_layer: Callable[[int], float],
                     sizes: tuple[int, ...] = (128, 256, 512, 1024), repeats: int = 2) -> None:
    """Seed the layer model: `run_layer(n)` runs one layer on n points per image, returns ms."""
    for n in sizes:
        run_layer(n)  # warm-up of kernels and allocator at this size
        for _ in range(repeats):
            cost.observe_layer(n, n, run_layer(n))


def calibrate_extraction(observe: Callable[[int, int, float], None],
                         run_extraction: Callable[[int, int], tuple[float, int]],
                         sizes: tuple[tuple[int, int], ...] = ((320, 240), (640, 480)),
                         repeats: int = 2) -> None:
    """Seed an extraction model: `run_extraction(w, h)` extracts an image of that size and
    returns (ms, keypoints found), and `observe(pixels, keypoints, ms)` learns from it. Two
    sizes separate the per-pixel cost from the fixed one."""
    for w, h in sizes:
        run_extraction(w, h)
        for _ in range(repeats):
            ms, keypoints = run_extraction(w, h)
            observe(w * h, keypoints, ms)
