"""The matching pipeline: preprocess, extract once per frame, match, track. No ROS imports.
(Over 400 lines: one class holds the keypoint, LoFTR and textureless stages that stream,
stereo, the nodes and the tools share.)

    from match_node import Pipeline
    pipeline = Pipeline(max_keypoints=1024)            # same names as config/*.yaml
    result = pipeline.match(image0, image1)            # numpy images, gray or RGB
    result.keypoints0, result.keypoints1, result.scores, result.exit_layer, result.timings

`stream.SequentialMatcher` turns the pipeline into a stream: each frame is extracted once,
matched to the previous frame, and its matches carry persistent track ids.

What each `extractor` and `matcher` value means (models, weights, parameters, how a matcher
runs) comes from the registry in families.py: nothing here depends on a model's name.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np
import torch

from . import backends, families
from .. import params as P
from .budget import (FrameSettings, LatencyBudget, PathCost, calibrate_extraction,
                     calibrate_layers)
from .costmodel import smoothed
from .direct import DirectPath
from .image import Prepared, prepare
from ..messages import EXIT_CONFIDENCE, EXIT_FULL_DEPTH
from ..models.lightglue import LayerHook, MatchOutput
from .refine import (multiscale_verdict, refine_keypoint_matches, refine_matches,
                     refine_multiscale, to_gray)
from .texture import (AMBIGUOUS_SURVIVAL, FALLBACK_AGREEMENT, SPARSE_FACTOR, TEXTURELESS_LOFTR,
                      MatcherSwitch, Texture, blur_change, contrast_normalise, denoise,
                      epipolar_agreement, epipolar_inliers, geometric_agreement,
                      gradient_tensor, measure_texture, pair_linear_map)
from .results import Features, LoftrFeatures, MatchResult, filter_result

if TYPE_CHECKING:
    from ..models.loftr import LoFTR

log = logging.getLogger(__name__)


def resolve_device(device_name: str) -> tuple[torch.device, str | None]:
    """The torch device for a `device` parameter, and a warning when falling back to CPU."""
    if device_name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    device = torch.device(device_name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return torch.device("cpu"), f"device '{device_name}' requested but CUDA is not available; running on the CPU"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return torch.device("cpu"), (f"device '{device_name}' requested but only "
                                         f"{torch.cuda.device_count()} CUDA device(s) exist; running on the CPU")
    return device, None



# The overall change of gradient energy (a factor, either way) that, with an uneven one
# (`texture_blur_mismatch`), marks motion blur in one frame of a pair (texture.blur_change).
BLUR_ENERGY_CHANGE = 1.65
# min_image_side given to the budget to hold the resolution: above any image side (params.py
# caps sides at 8192), so the budget takes it as equal to its upper bound.
FIXED_SIDE = 1 << 16


class Pipeline:
    """Extractor + matcher built from the shared parameter table (see params.py); what each
    extractor and matcher value means comes from the registry (families.py)."""

    def __init__(self, params: Mapping[str, Any] | None = None, **overrides: Any) -> None:
        self.params = P.validate({**(params or {}), **overrides}, scope="pipeline")
        self.device, warning = resolve_device(self.params["device"])
        if warning:
            log.warning(warning)
        self.device_warning = warning
        precision = self.params["precision"]
        if precision == "fp16" and self.device.type != "cuda":
            log.warning("precision fp16 needs CUDA; running fp32 on the %s", self.device)
        self.fp16 = self.device.type == "cuda" and precision in ("auto", "fp16")
        self.extractor_name = self.params["extractor"]
        self.matcher_name = self.params["matcher"]
        families.check_combination(self.extractor_name, self.matcher_name)
        self.family = families.EXTRACTOR_FAMILIES[self.extractor_name]
        self.mode = families.MATCHER_MODES[self.matcher_name]
        # The keypoint matcher (also kept in 'loftr' mode: texture and stereo use features).
        self.keypoint_matcher = families.keypoint_matcher(self.family, self.mode)
        self.detector_matcher = self.keypoint_matcher.name
        for licence in dict.fromkeys((self.family.licence, self.keypoint_matcher.licence)):
            if licence:
                log.warning("%s: %s", self.extractor_name, licence)
        self.extractor, self.extractor_weights = self.family.load(self.params)
        problem = families.backend_problem({**self.params, "device": str(self.device)})
        if problem is not None:  # e.g. device 'auto' resolved to a GPU
            raise P.ParameterError(problem)
        dense = backends.dense_backend(self.params["backend"], self.extractor,
                                       self.extractor_name, self.device)
        if dense is not None:
            self.extractor.dense_runner = dense
        # An inference engine compiles the dense part once per input size, for seconds: the
        # latency budget must not wander through sizes, so it keeps the resolution there and
        # adapts the keypoint cap only.
        self.fixed_resolution = dense is not None
        self._fixed_resolution_logged = False
        self.matcher, self.matcher_weights = self.keypoint_matcher.load(self.family, self.params)
        self.extractor.eval().to(self.device)
        self.matcher.eval().to(self.device)
        # matcher 'auto': what matches textureless frames (see texture.py), and why; the
        # node logs `textureless_note` once at start-up.
        self.textureless = families.textureless_path(self.mode, self.params)
        self.textureless_path: str | None = self.textureless.name if self.textureless else None
        self.loftr: LoFTR | None = None
        self.loftr_weights = None
        if self.mode.detector_free or (self.textureless and self.textureless.detector_free):
            # Both models stay loaded in auto mode, so a switch costs no load time.
            self.loftr, self.loftr_weights = families.LOFTR.load(self.params)
            self.loftr.eval().to(self.device)
        self.textureless_note = (self.textureless.note(self.params, self.loftr_weights)
                                 if self.textureless else None)
        fallback, why = families.textureless_fallback(self.mode, self.params)
        # The textureless paths in order of preference (the first is the one the switch
        # reports), and the keypoint ones' models: SIFT needs no weights, so it is always
        # there; the direct alignment, last, needs none either (`textureless_direct` says
        # at run time whether it is tried).
        last_resort = families.textureless_direct(self.mode)
        chain = [path for path in (self.textureless, fallback, last_resort) if path is not None]
        self.textureless_chain: tuple[str, ...] = tuple(path.name for path in chain)
        self.keypoint_paths: dict[str, KeypointPath | DirectPath] = {
            path.name: (DirectPath(path) if path.direct
                        else KeypointPath(path, self.params, self.device))
            for path in chain if not path.detector_free}
        if self.textureless_note and why:
            self.textureless_note += f"; {why}"
        if self.textureless_note and last_resort and self.params["textureless_direct"]:
            self.textureless_note += (f"; a frame they all leave thinner (and any single "
                                      f"low-texture pair) is aligned directly too "
                                      f"({last_resort.name}, textureless_direct)")
        if self.textureless_note:
            log.info(self.textureless_note)
        self.budget = LatencyBudget(clock=self._clock)
        self._calibrated = False
        self.reset_running_estimates()
        self._apply_runtime_params()

    @property
    def num_layers(self) -> int:
        """Layers of the keypoint matcher (0 for nearest neighbours)."""
        return self.keypoint_matcher.num_layers(self.matcher)

    @property
    def detection_threshold(self) -> float:
        """The extractor's detection threshold in effect (its own default unless set)."""
        return self.family.threshold(self.params["detection_threshold"])

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "Pipeline":
        """Build from a node YAML file (node-only parameters in it are ignored)."""
        values = P.load_yaml(path)
        P.validate(values)  # refuse unknown names and bad values, node ones included
        pipeline_values = {k: v for k, v in values.items() if P.SPECS[k].scope == "pipeline"}
        return cls(pipeline_values, **overrides)

    def update(self, **changes: Any) -> None:
        """Change run-time parameters (those not read-only) without reloading models."""
        for name in changes:
            spec = P.SPECS.get(name)
            if spec is None or spec.scope != "pipeline":
                raise P.ParameterError(f"unknown pipeline parameter '{name}'")
            if spec.read_only:
                raise P.ParameterError(f"parameter '{name}' cannot change at run time")
        self.params = P.validate({**self.params, **changes}, scope="pipeline")
        self._apply_runtime_params()

    def reset_running_estimates(self) -> None:
        """Forget what earlier pairs taught (the exit guard's expected matches per keypoint,
        refinement's cost per match, of a keypoint matcher's and of a textureless path's
        result): a stream over another recording starts as a freshly built pipeline would
        (bags/batch.py reuses one pipeline for many bags)."""
        self._refine_ms_per_match = {False: 0.0, True: 0.0}
        # Prior of matches per keypoint before any pair was seen (easy pairs reach 0.5-0.9):
        # with exit_guard 0.5 a first exit is refused below 10% of the keypoints.
        self._match_ratio = 0.2

    def _apply_runtime_params(self) -> None:
        p = self.params
        self.family.apply(self.extractor, p)
        self.keypoint_matcher.apply(self.matcher, self.family, p)
        if self.loftr is not None:
            families.LOFTR.apply(self.loftr, p)
        for path in self.keypoint_paths.values():
            path.apply(p)
        self.budget.detection_threshold = self.detection_threshold
        # A lower bound above every upper bound holds the resolution (see LatencyBudget).
        min_side = FIXED_SIDE if self.fixed_resolution else p["min_image_side"]
        self.budget.configure(p["latency_budget_ms"], p["budget_percentile"],
                              p["min_keypoints"], p["max_keypoints"], min_side,
                              p["max_image_side"], p["budget_target_layers"])
        if self.budget.enabled and self.fixed_resolution and not self._fixed_resolution_logged:
            log.info("backend '%s' compiles the extractor per image size: the latency budget "
                     "adapts the keypoint cap, not the resolution", p["backend"])
            self._fixed_resolution_logged = True
        if self.budget.enabled and not self._calibrated:
            self.calibrate()
        if self.budget.enabled and not self.keypoint_matcher.budget_cuts:
            log.warning("with matcher '%s' the latency budget sizes the keypoint cap (and, "
                        "with backend torch, the resolution) and skips refinement, but cannot "
                        "cut a frame short (that needs LightGlue's layers)", self.matcher_name)

    def calibrate(self) -> None:
        """Seed the budget's cost models on this device: one LightGlue layer on random points
        of a few sizes, and the extractor on a synthetic image at two sizes (about three
        seconds on a 2-core CPU, once), and likewise each keypoint textureless path's
        extractor (SIFT, XFeat: about two more). Frames refine the models online."""
        generator = torch.Generator(device="cpu").manual_seed(0)
        if self.keypoint_matcher.budget_cuts:
            self._calibrate_layers(generator)

        def synthetic(w: int, h: int) -> np.ndarray:
            # Random texture at several scales: about as many keypoints as a real scene (on
            # the host: the extractors take numpy images).
            image = sum(torch.nn.functional.interpolate(
                torch.rand(1, 1, h // f, w // f, generator=generator, device="cpu"),
                size=(h, w), mode="bilinear") for f in (4, 16, 64)) / 3
            return (image[0, 0].clamp(0, 1).numpy() * 255).astype(np.uint8)

        def extract(w: int, h: int) -> tuple[float, int]:
            features = self.extract(synthetic(w, h), FrameSettings(self.params["max_keypoints"], 0))
            return features.extract_ms, len(features)

        calibrate_extraction(self.budget.observe_extraction, extract)
        for name, path in self.keypoint_paths.items():
            def extract_on(w: int, h: int, name: str = name) -> tuple[float, int]:
                features = self.extract_on(name, synthetic(w, h), side=0)
                return features.preprocess_ms + features.extract_ms, len(features)

            calibrate_extraction(path.cost.observe_extraction, extract_on)
        self._calibrated = True

    def _calibrate_layers(self, generator: torch.Generator) -> None:
        """One matcher layer on random points of a few sizes: the budget's layer costs."""

        @torch.no_grad()
        def run(n: int) -> float:
            layer = self.keypoint_matcher.layer_probe(self.matcher, n, generator, self.device)
            start = self._clock()
            with self._autocast():
                layer()
            return self._clock() - start

        calibrate_layers(self.budget.cost, run)

    # --- stages -----------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.fp16:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _clock(self) -> float:
        """Milliseconds, after the device has finished all queued work (true GPU timing)."""
        self._sync()
        return time.perf_counter() * 1e3

    @torch.no_grad()
    def extract(self, image: np.ndarray, settings: FrameSettings | None = None) -> Features:
        """Detect and describe keypoints of one image (gray HxW or RGB HxWx3).

        `settings` (from the latency budget) override the keypoint cap and the resolution.
        """
        cap = settings.max_keypoints if settings else self.params["max_keypoints"]
        side = settings.max_image_side if settings else self.params["max_image_side"]
        threshold = self.detection_threshold
        if settings is not None and settings.detection_threshold is not None:
            threshold = settings.detection_threshold
        start = self._clock()
        prepared: Prepared = prepare(image, self.device, side)
        after_preprocess = self._clock()
        families.update_known(self.extractor.conf, max_num_keypoints=cap,
                              detection_threshold=threshold)
        with self._autocast():
            out = self.extractor(prepared.tensor)
        return self._features(out, prepared, cap, start, after_preprocess)

    def _features(self, out: dict[str, torch.Tensor], prepared: Prepared, cap: int,
                  start: float, after_preprocess: float) -> Features:
        """An extractor's output as Features in original pixels, with its timings."""
        keypoints = prepared.to_original(out["keypoints"][0].float())
        features = Features(keypoints, out["descriptors"][0].float(),
                            out["keypoint_scores"][0].float(), prepared.original_size)
        if "scales" in out:
            # Scales stay in working-image pixels, as the official SIFT LightGlue takes them.
            features.scale_ori = torch.stack([out["scales"][0], out["oris"][0]], -1).float()
        end = self._clock()
        features.preprocess_ms = after_preprocess - start
        features.extract_ms = end - after_preprocess
        features.working_size = (int(prepared.tensor.shape[-1]), int(prepared.tensor.shape[-2]))
        features.keypoint_cap = cap
        return features

    @torch.no_grad()
    def match_features(self, features0: Features, features1: Features,
                       hook: LayerHook | None = None) -> MatchResult:
        """Match two frames' features; timings cover the match only plus image 1's
        preprocessing and extraction (image 0's features are assumed cached)."""
        start = self._clock()
        with self._autocast():
            out = self._run_matcher(features0, features1, hook)
        matches = out.matches.cpu().numpy()
        scores = out.scores.float().cpu().numpy()
        idx0, idx1 = matches[:, 0], matches[:, 1]
        kpts0 = features0.keypoints.cpu().numpy()[idx0]
        kpts1 = features1.keypoints.cpu().numpy()[idx1]
        if self.params["epipolar_filter_px"] > 0:
            # The geometric check a matcher without context (nearest neighbours) lacks; any
            # rigid scene passes it, so for VO it only removes outliers.
            keep = epipolar_inliers(kpts0, kpts1, self.params["epipolar_filter_px"], fast=True)
            idx0, idx1, scores, kpts0, kpts1 = (a[keep] for a in (idx0, idx1, scores, kpts0, kpts1))
        if hook is not None and hasattr(hook, "finish"):
            hook.finish()  # the assignment's time includes the filter: the budget plans both
        match_ms = self._clock() - start
        return MatchResult(
            keypoints0=kpts0.astype(np.float32), keypoints1=kpts1.astype(np.float32),
            scores=scores.astype(np.float32), indices0=idx0, indices1=idx1,
            num_keypoints0=len(features0), num_keypoints1=len(features1),
            image_size0=features0.image_size, image_size1=features1.image_size,
            exit_layer=out.exit_layer, num_layers=out.num_layers, exit_reason=out.exit_reason,
            kept0=out.kept0, kept1=out.kept1, guard_fired=out.guard_fired,
            timings={"preprocess_ms": features1.preprocess_ms,
                     "extract_ms": features1.extract_ms, "match_ms": match_ms, "refine_ms": 0.0,
                     "total_ms": features1.preprocess_ms + features1.extract_ms + match_ms},
            extractor=self.extractor_name, matcher=self.detector_matcher,
            layer_points=out.layer_points, latency_budget_ms=self.budget.budget_ms,
            keypoint_cap=features1.keypoint_cap,
            extraction_scale=features1.working_size[0] / max(features1.image_size[0], 1))

    def _run_matcher(self, features0: Features, features1: Features,
                     hook: LayerHook | None) -> MatchOutput:
        guarded = self.keypoint_matcher.exit_guard
        fewest = min(len(features0), len(features1))
        min_exit_matches = (int(np.ceil(self.params["exit_guard"] * self._match_ratio * fewest))
                            if guarded else 0)
        out = self.keypoint_matcher.run(self.matcher, features0, features1, hook,
                                        min_exit_matches)
        if guarded and fewest and out.exit_reason in (EXIT_FULL_DEPTH, EXIT_CONFIDENCE):
            # Matches per keypoint of recent pairs: what the guard expects of the next one.
            self._match_ratio = 0.9 * self._match_ratio + 0.1 * len(out.matches) / fewest
        return out

    # --- LoFTR and the texture measure ---------------------------------------------------
    @torch.no_grad()
    def extract_loftr(self, image: np.ndarray) -> LoftrFeatures:
        """LoFTR backbone features of one image, at up to `loftr_max_image_side`."""
        if self.loftr is None:
            raise RuntimeError("LoFTR is not loaded: set matcher to 'loftr' or 'auto'")
        start = self._clock()
        prepared = prepare(image, self.device, self.params["loftr_max_image_side"])
        rgb = prepared.tensor
        # ITU-R 601 luma, the grayscale LoFTR was trained on (OpenCV's and kornia's weights).
        gray = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
        after_preprocess = self._clock()
        with self._autocast():
            maps = self.loftr.extract(gray)
        end = self._clock()
        cells = int(maps["coarse"].shape[-2] * maps["coarse"].shape[-1])
        return LoftrFeatures(maps, prepared.original_size, prepared.scale, cells,
                             after_preprocess - start, end - after_preprocess)

    @torch.no_grad()
    def match_loftr(self, features0: LoftrFeatures, features1: LoftrFeatures) -> MatchResult:
        """Match two frames' LoFTR features; indices are coarse cells of each image."""
        start = self._clock()
        with self._autocast():
            out = self.loftr.match(features0.maps, features1.maps)

        def to_original(points: torch.Tensor, scale: tuple[float, float]) -> np.ndarray:
            factor = points.new_tensor(scale)
            return ((points.float() + 0.5) / factor - 0.5).cpu().numpy().astype(np.float32)

        kpts0 = to_original(out["keypoints0"], features0.scale)
        kpts1 = to_original(out["keypoints1"], features1.scale)
        scores = out["confidence"].float().cpu().numpy()
        match_ms = self._clock() - start
        return MatchResult(
            keypoints0=kpts0, keypoints1=kpts1, scores=scores.astype(np.float32),
            indices0=out["indices0"].cpu().numpy(), indices1=out["indices1"].cpu().numpy(),
            num_keypoints0=features0.num_cells, num_keypoints1=features1.num_cells,
            image_size0=features0.image_size, image_size1=features1.image_size,
            exit_layer=0, num_layers=0, exit_reason=EXIT_FULL_DEPTH,
            kept0=features0.num_cells, kept1=features1.num_cells,
            timings={"preprocess_ms": features1.preprocess_ms,
                     "extract_ms": features1.extract_ms, "match_ms": match_ms, "refine_ms": 0.0,
                     "total_ms": features1.preprocess_ms + features1.extract_ms + match_ms},
            extractor=self.params["loftr_model"], matcher=families.LOFTR.name,
            latency_budget_ms=self.budget.budget_ms, keypoint_cap=0,
            extraction_scale=features1.scale[0])

    # --- the keypoint textureless paths of matcher 'auto' ----------------------------------
    @torch.no_grad()
    def extract_on(self, path: str, image: np.ndarray, side: int | None = None) -> Features:
        """Keypoints of textureless path `path` (a key of keypoint_paths: its extractor, after
        smoothing a noisy frame (`texture_denoise`, texture.denoise, down to the path's
        max_noise) and contrast normalisation (CLAHE, see texture.py) where the path asks for
        them, at most `max_keypoints`, at up to `side` pixels on the long side (None:
        `max_image_side`; 0: the image's own; a stream under a latency budget passes
        `path_side`'s))."""
        if path not in self.keypoint_paths:
            raise RuntimeError(f"textureless path '{path}' is not loaded (loaded: "
                               f"{', '.join(self.keypoint_paths) or 'none'})")
        loaded = self.keypoint_paths[path]
        cap = self.params["max_keypoints"]
        start = self._clock()
        side = self.params["max_image_side"] if side is None else side
        if isinstance(loaded, DirectPath):
            return loaded.extract(image, self.params["texture_denoise"], cap, side, start,
                                  self._clock)
        gray = to_gray(image)
        if self.params["texture_denoise"]:
            gray = denoise(gray, loaded.spec.max_noise)
        if loaded.spec.contrast_normalised:
            gray = contrast_normalise(gray)
        prepared = prepare(gray, self.device, side)
        after_preprocess = self._clock()
        families.update_known(loaded.extractor.conf, max_num_keypoints=cap)
        out = loaded.extractor(prepared.tensor)
        return self._features(out, prepared, cap, start, after_preprocess)

    @torch.no_grad()
    def match_on(self, path: str, features0: Features, features1: Features) -> MatchResult:
        """Match two frames' features of textureless path `path` with its matcher (no budget
        cut, no exit guard), then the epipolar check (see texture.py); not refined here (see
        refine_result). The direct path aligns instead (DirectPath.match: its matches need no
        refinement, and features1 keeps the points it placed)."""
        loaded = self.keypoint_paths[path]
        start = self._clock()
        if isinstance(loaded, DirectPath):
            return loaded.match(features0, features1, start, self._clock,
                                self.budget.budget_ms)
        out = loaded.matcher_entry.run(loaded.matcher, features0, features1, None, 0)
        matches = out.matches.cpu().numpy().reshape(-1, 2)
        scores = out.scores.float().cpu().numpy()
        kpts0 = features0.keypoints.cpu().numpy()[matches[:, 0]]
        kpts1 = features1.keypoints.cpu().numpy()[matches[:, 1]]
        keep = epipolar_inliers(kpts0, kpts1, loaded.spec.epipolar_px)
        epipolar_dropped = int(len(keep) - np.count_nonzero(keep))
        matches, scores, kpts0, kpts1 = matches[keep], scores[keep], kpts0[keep], kpts1[keep]
        match_ms = self._clock() - start
        extractor, matcher = path.split("+")
        return MatchResult(
            keypoints0=kpts0.astype(np.float32), keypoints1=kpts1.astype(np.float32),
            scores=scores.astype(np.float32), indices0=matches[:, 0], indices1=matches[:, 1],
            num_keypoints0=len(features0), num_keypoints1=len(features1),
            image_size0=features0.image_size, image_size1=features1.image_size,
            exit_layer=out.exit_layer, num_layers=out.num_layers, exit_reason=out.exit_reason,
            kept0=len(features0), kept1=len(features1),
            timings={"preprocess_ms": features1.preprocess_ms,
                     "extract_ms": features1.extract_ms, "match_ms": match_ms, "refine_ms": 0.0,
                     "total_ms": features1.preprocess_ms + features1.extract_ms + match_ms},
            extractor=extractor, matcher=matcher,
            latency_budget_ms=self.budget.budget_ms, keypoint_cap=features1.keypoint_cap,
            extraction_scale=features1.working_size[0] / max(features1.image_size[0], 1),
            epipolar_dropped=epipolar_dropped)

    # --- sub-pixel refinement -------------------------------------------------------------
    @property
    def refining(self) -> bool:
        return self.params["refine"] != "none"

    def refine_result(self, result: MatchResult, gray0: np.ndarray, gray1: np.ndarray,
                      textureless: bool = False) -> None:
        """Refine `result`'s current keypoints in place (see refine.py): keypoints1, the
        refined flags, timings refine_ms and total_ms. With `refine_outliers: drop` the
        matches the refinement found off are removed: those it walked its search range or
        more away from their matched position.

        With `refine: patch` and `refine_coarse_levels` > 0, matches are aligned coarse to fine
        where full resolution cannot place them: `textureless` (the result comes from a
        textureless path: blurred, dark, flat frames) all of them (refine.refine_multiscale);
        a keypoint matcher's, on a frame where the full-resolution alignment finds
        refine.BLURRED_OFF_SHARE of them off (motion blur), those it leaves imprecise
        (refine.refine_keypoint_matches). They are flagged refined where a step moved them,
        and found off where none did or the standard error of their position is above
        refine.MULTISCALE_OFF_STDERR_PX
        (bench/textureless_refinement.py: dropping them took the XFeat fallback's precision
        from 0.845 to 0.854 and the SIFT path's from 0.991 to 0.994). They are dropped only
        while at least `texture_min_matches` matches remain, so a frame its path found enough
        matches on is never published thin (between a sharp and a blurred frame a whole
        pair's alignment can be poor)."""
        start = time.perf_counter()
        levels = self.params["refine_coarse_levels"]
        coarse = False
        if levels > 0 and self.params["refine"] == "patch":
            if textureless:
                keypoints1, stderr = refine_multiscale(gray0, gray1, result.keypoints0,
                                                       result.keypoints1, levels=levels)
                refined, off = multiscale_verdict(stderr)
                coarse = True
            else:
                keypoints1, refined, off, coarse = refine_keypoint_matches(
                    gray0, gray1, result.keypoints0, result.keypoints1, levels=levels)
            if coarse and len(off) - off.sum() < self.params["texture_min_matches"]:
                off[:] = False
        else:
            keypoints1, refined, off = refine_matches(self.params["refine"], gray0, gray1,
                                                      result.keypoints0, result.keypoints1)
            if textureless:
                off[:] = False  # the full-resolution rule is not reliable on these frames
        elapsed = (time.perf_counter() - start) * 1e3
        result.keypoints1 = keypoints1.astype(np.float32)
        result.refined = refined.astype(np.uint8)
        refined_count = len(result)
        if self.params["refine_outliers"] == "drop" and off.any():
            filter_result(result, ~off)
            result.off_dropped += int(off.sum())
        result.timings["refine_ms"] = elapsed
        result.timings["total_ms"] += elapsed
        if refined_count and (textureless or not coarse):
            # Per kind of result: the textureless paths' coarse-to-fine alignment costs more
            # per match than the keypoint matcher's single level. A keypoint result that went
            # coarse to fine (a motion-blurred frame, 3x the cost) is left out: it would
            # raise the prediction for the sharp frames, and a prediction that no longer fits
            # the budget is never measured again (refinement skipped on every frame after).
            self._refine_ms_per_match[textureless] = smoothed(
                self._refine_ms_per_match[textureless], elapsed / refined_count)

    def refine_fits(self, matches: int, started_ms: float, textureless: bool = False) -> bool:
        """Whether refining `matches` matches (of a textureless path's result: `textureless`)
        fits the latency budget of a frame started at `started_ms` (always true without a
        budget)."""
        budget = self.budget
        if not budget.enabled:
            return True
        predicted = self._refine_ms_per_match[textureless] * matches
        return budget.clock() - started_ms + predicted + budget.reserve_ms() <= budget.budget_ms

    def path_side(self, path: str, image_size: tuple[int, int], started_ms: float,
                  views: int) -> int:
        """Long side at which keypoint textureless path `path` extracts `views` frames of
        `image_size` for a frame started at `started_ms` under the latency budget
        (LatencyBudget.path_side; `max_image_side` without a budget)."""
        remaining = self.budget.deadline(started_ms).remaining_ms()
        return self.budget.path_side(self.keypoint_paths[path].cost, image_size, remaining,
                                     views, self.refining)

    def texture(self, features: Features) -> Texture:
        """How much texture the extractor found in a frame (see texture.py)."""
        return measure_texture(features.keypoints.cpu().numpy(), features.scores.cpu().numpy(),
                               features.image_size, self.detection_threshold,
                               cap=features.keypoint_cap, working_size=features.working_size)

    def matcher_switch(self) -> MatcherSwitch:
        p = self.params
        return MatcherSwitch(self.detector_matcher, self.textureless_path or TEXTURELESS_LOFTR,
                             p["texture_low_keypoints"], p["texture_low_coverage"],
                             p["texture_high_keypoints"], p["texture_high_coverage"],
                             p["texture_switch_frames"])

    def rescues(self, result: MatchResult) -> bool:
        """matcher 'auto': whether a result is too thin to publish as it is, so the frame is
        matched on the next textureless path too (the one with more matches is kept). For a
        keypoint-matcher result this covers the first textureless frames, before the switch
        has seen `texture_switch_frames` of them, and frames whose texture measure is fooled;
        for a textureless path's result, surfaces it finds almost nothing on."""
        # Counted before refine_outliers drops matches: a path's few imprecise matches are
        # not a reason to try the next, less precise one.
        return (self.textureless_path is not None
                and result.found < self.params["texture_min_matches"])

    def descriptor_only(self, path: str | None) -> bool:
        """Whether textureless path `path` matches keypoints by their descriptors alone
        (nearest neighbours), so the periods of a repetitive surface can fool it."""
        loaded = self.keypoint_paths.get(path) if path else None
        return isinstance(loaded, KeypointPath) and loaded.matcher_entry.descriptor_only

    def aligns(self, path: str | None) -> bool:
        """Whether textureless path `path` places its matches by alignment itself (the
        direct path), so refinement has nothing to add."""
        return isinstance(self.keypoint_paths.get(path) if path else None, DirectPath)

    def ambiguous(self, result: MatchResult, path: str | None) -> bool:
        """matcher 'auto': whether a descriptor-only textureless path's `result` is rich
        enough but ambiguous: its epipolar check removed more than 1 - AMBIGUOUS_SURVIVAL of
        the matcher's matches (on a repetitive surface, the wrong periods of different
        tiles), so the next path of the chain checks it (`richest`)."""
        proposed = result.found + result.epipolar_dropped
        return (self.descriptor_only(path) and not self.rescues(result)
                and result.found < AMBIGUOUS_SURVIVAL * proposed)

    def sparse(self, result: MatchResult, path: str | None) -> bool:
        """matcher 'auto', `textureless_richer`: whether a descriptor-only textureless path's
        `result` is not thin but sparse (fewer than SPARSE_FACTOR x `texture_min_matches`
        matches), so the next path of the chain matches the pair too (`richest`): on
        blurred surfaces SIFT keeps a few dozen matches, too few for a well-conditioned
        geometry, where XFeat finds hundreds."""
        return (self.params["textureless_richer"] > 0 and self.descriptor_only(path)
                and not self.rescues(result)
                and result.found < SPARSE_FACTOR * self._verify_min_matches)

    def enriches(self, other: MatchResult, sparse: MatchResult) -> bool:
        """Whether the next path's `other` result replaces a `sparse` one: it has at least
        `textureless_richer` times as many matches, and at least FALLBACK_AGREEMENT of the
        sparse result's matches agree with its geometry (the two see the same motion)."""
        if other.found < self.params["textureless_richer"] * sparse.found:
            return False
        agreement = self._agreement(other, sparse)
        return agreement is not None and agreement >= FALLBACK_AGREEMENT

    def contradicts(self, other: MatchResult, ambiguous: MatchResult) -> bool:
        """Whether the next path's `other` result replaces an `ambiguous` one: it is not
        thin itself, and fewer than FALLBACK_AGREEMENT of the ambiguous result's matches
        agree with its geometry."""
        agreement = self._agreement(other, ambiguous)
        return agreement is not None and agreement < FALLBACK_AGREEMENT

    def _agreement(self, other: MatchResult, checked: MatchResult) -> float | None:
        """Share of `checked`'s matches that agree with the geometry of the next path's
        `other` result (texture.geometric_agreement: its homography where one explains it,
        else its epipolar geometry); None where `other` is too thin to judge by."""
        if self.rescues(other):
            return None
        return geometric_agreement(other.keypoints0, other.keypoints1, checked.keypoints0,
                                   checked.keypoints1, min_reference=self._verify_min_matches)

    def verifies(self, features0: Features, features1: Features) -> bool:
        """matcher 'auto', `textureless_verify`: whether a low-texture pair's textureless
        result is checked against the keypoint matcher's own matches of it (see
        `keypoint_result_wins`); not when either frame has too few keypoints to give the
        check enough matches, so a blank frame costs no LightGlue run."""
        return (self.mode.switches and bool(self.params["textureless_verify"])
                and min(len(features0), len(features1)) >= self._verify_min_matches)

    @property
    def _verify_min_matches(self) -> int:
        """The keypoint matcher's matches `textureless_verify` needs (8 at least: a
        fundamental matrix)."""
        return max(self.params["texture_min_matches"], 8)

    def keypoint_result_wins(self, keypoint: MatchResult, textureless: MatchResult,
                             path: str | None) -> bool:
        """matcher 'auto', `textureless_verify`: whether the keypoint matcher's result of a
        low-texture pair is published instead of the result `textureless` of a descriptor-only
        path `path`: it has at least `texture_min_matches` matches (8 at least) and fewer
        than half of the path's matches agree with their epipolar geometry
        (texture.epipolar_agreement). Nearest neighbours confuse the periods of a repetitive
        surface; LightGlue's context does not (a tiled surface of bench/lowtexture.py with
        `textureless_fallback: none`: SIFT's 28 matches, 14% correct, against LightGlue's 23,
        all correct). A path with context of its own (XFeat + LighterGlue, LoFTR) is not
        checked: on a tiled surface whose LightGlue matches run along one tile edge, their
        geometry is ill-posed and contradicted XFeat's 226 matches, 95% correct."""
        if not self.descriptor_only(path):
            return False
        agreement = epipolar_agreement(
            keypoint.keypoints0, keypoint.keypoints1, textureless.keypoints0,
            textureless.keypoints1, min_reference=self._verify_min_matches)
        return agreement is not None and agreement < 0.5

    def blur_mismatched(self, result: MatchResult, gradient0: np.ndarray | None,
                        gradient1: np.ndarray | None) -> bool:
        """matcher 'auto', `texture_blur_mismatch`: whether the keypoint matcher's `result`
        comes from a pair with motion blur in one frame only: from their gradient tensors
        (texture.gradient_tensor), with frame 0's carried by an affine fitted to the result's
        matches, the gradient energy changed unevenly over directions (by a ratio over
        `texture_blur_mismatch`) and overall (by a factor over BLUR_ENERGY_CHANGE); see
        texture.blur_change. Such a pair goes to the textureless path
        (`textureless_unless_thin`). Frames blurred alike stay on LightGlue, which matches
        them well (bench/lowtexture.py's motion-blur streams: precision 0.94-1.00)."""
        limit = self.params["texture_blur_mismatch"]
        if (not self.mode.switches or self.textureless_path is None or limit <= 0
                or gradient0 is None or gradient1 is None):
            return False
        linear = pair_linear_map(result.keypoints0, result.keypoints1)
        return (linear is not None and blur_change(gradient0, gradient1, linear)
                .is_motion_blur(limit, BLUR_ENERGY_CHANGE))

    def textureless_unless_thin(self, keypoint: MatchResult,
                                match: Callable[[str], MatchResult], richer: bool = True
                                ) -> tuple[MatchResult, str | None]:
        """A blur-mismatched pair (`blur_mismatched`): the textureless chain's result
        (`richest`, `match(path)`) unless it is too thin to publish (`rescues`), then the
        keypoint matcher's `keypoint` after all; returns the result and the path that served
        it (None: `keypoint`)."""
        other, served = self.richest(None, self.textureless_chain, match, richer)
        if self.rescues(other):
            return keypoint, None
        return other, served

    def match(self, image0: np.ndarray, image1: np.ndarray) -> MatchResult:
        """Extract both images and match them (image 0 is the reference).

        With matcher 'auto' a single pair takes the textureless path (LoFTR, or SIFT on
        contrast-normalised images without a LoFTR file) when either image is textureless,
        or when the keypoint matcher leaves it fewer than `texture_min_matches` matches; a
        textureless path that leaves fewer goes on to the fallback (`textureless_fallback`),
        and so does one whose nearest neighbours are `ambiguous` (a repetitive surface). The
        result with the most matches is returned (an ambiguous one unless the fallback's
        `contradicts` it; a sparse one unless the fallback's `enriches` it), unless the
        keypoint matcher's own matches of a low-texture pair contradict a nearest-neighbour
        result (`textureless_verify`). The direct alignment (`textureless_direct`) matches
        every low-texture pair too, and its result is returned where it has at least as many
        matches (see `richest`). A pair with motion
        blur in one image only goes to the textureless path too (`texture_blur_mismatch`).
        """
        if self.mode.detector_free:
            return self.match_pair_on(TEXTURELESS_LOFTR, image0, image1)
        features0, features1 = self.extract(image0), self.extract(image1)
        low = self.matcher_switch().low
        result = None
        verify = False
        if not (self.mode.switches
                and any(self.texture(f).is_low(*low) for f in (features0, features1))):
            result = _count_reference(self.match_features(features0, features1), features0)
            gray0 = gray1 = None
            if self.refining or self.mode.switches:
                gray0, gray1 = to_gray(image0), to_gray(image1)
            if self.refining:
                self.refine_result(result, gray0, gray1)
            if not self.rescues(result):
                if not (self.mode.switches and self.blur_mismatched(
                        result, gradient_tensor(gray0), gradient_tensor(gray1))):
                    return result
                return self.textureless_unless_thin(
                    result, lambda path: self.match_pair_on(path, image0, image1))[0]
        else:
            verify = self.verifies(features0, features1)
        result, served = self.richest(result, self.textureless_chain,
                                      lambda path: self.match_pair_on(path, image0, image1),
                                      direct_competes=True)
        if not (verify and self.descriptor_only(served)):
            return result
        keypoint = _count_reference(self.match_features(features0, features1), features0)
        if self.keypoint_result_wins(keypoint, result, served):
            if self.refining:
                self.refine_result(keypoint, to_gray(image0), to_gray(image1))
            return keypoint
        return result

    def richest(self, best: MatchResult | None, paths: Iterable[str],
                match: Callable[[str], MatchResult], richer: bool = True,
                direct_competes: bool = False) -> tuple[MatchResult, str | None]:
        """matcher 'auto''s textureless chain, for single pairs and streams alike: go down
        `paths` (preferred first), matching with `match(path)`, while the best result so far
        is missing or too thin (`rescues`), and keep the one with the most matches; or while
        it is `ambiguous`, and keep the next path's result where that `contradicts` it; or,
        with `richer` (single pairs; a stream passes False, since each change of path
        restarts its tracks), while it is `sparse`, and keep the next path's result where
        that `enriches` it. The
        preferred path is always tried first: the fallback localises less precisely (about
        2 px on blurred frames), so it serves only the frames the preferred path leaves thin
        or gets wrong. The direct alignment, last (`textureless_direct`), runs where the
        result is still thin, and with `direct_competes` (a single low-texture pair) on
        every pair: then its result is kept where it has at least as many matches.
        Returns the best result and the path that produced it (None: `best` as given)."""
        served = None
        for path in paths:
            if self.aligns(path):
                thin = best is None or self.rescues(best)
                if not self.params["textureless_direct"] or not (thin or direct_competes):
                    break
                other = match(path)
                if best is None or (other.found > best.found if thin
                                    else len(other) >= len(best)):
                    best, served = other, path
                continue
            if best is None or self.rescues(best):
                other = match(path)
                if best is None or other.found > best.found:
                    best, served = other, path
                continue
            if self.ambiguous(best, served):
                replaces = self.contradicts
            elif richer and self.sparse(best, served):
                replaces = self.enriches
            else:
                continue  # rich enough: the next paths serve thin, ambiguous or sparse results
            other = match(path)
            if replaces(other, best):
                best, served = other, path
        return best, served

    def match_pair_on(self, path: str, image0: np.ndarray, image1: np.ndarray) -> MatchResult:
        """One pair matched from scratch on textureless path `path` (a key of
        textureless_chain; refined if on), whatever the texture of the pair: what matcher
        'auto' runs on each path of its chain, and what benchmarks compare the paths with."""
        if path == TEXTURELESS_LOFTR:
            loftr0, loftr1 = self.extract_loftr(image0), self.extract_loftr(image1)
            return _count_reference(self.match_loftr(loftr0, loftr1), loftr0)
        features0, features1 = self.extract_on(path, image0), self.extract_on(path, image1)
        result = _count_reference(self.match_on(path, features0, features1), features0)
        if self.refining and not self.aligns(path):
            self.refine_result(result, to_gray(image0), to_gray(image1), textureless=True)
        return result


class KeypointPath:
    """A keypoint textureless path's models (families.TexturelessPath `spec`): its extractor
    and matcher, built from the official files with the models' own thresholds."""

    def __init__(self, spec: families.TexturelessPath, params: Mapping[str, Any],
                 device: torch.device) -> None:
        self.spec = spec
        self.cost = PathCost()  # what it costs a frame, for the latency budget
        self.family = spec.extractor_family()
        self.matcher_entry = spec.keypoint_matcher()
        model_params = spec.model_params(params)
        self.extractor, _ = self.family.load(model_params)
        self.matcher, _ = self.matcher_entry.load(self.family, model_params)
        self.extractor.eval().to(device)
        self.matcher.eval().to(device)

    def apply(self, params: Mapping[str, Any]) -> None:
        """Set the run-time parameters (e.g. nn_ratio) on its matcher."""
        self.matcher_entry.apply(self.matcher, self.family, self.spec.model_params(params))


def _count_reference(result: MatchResult, reference: Features | LoftrFeatures) -> MatchResult:
    """A pair matched from scratch: its timings include the reference image's extraction
    (in a stream that image's features are cached and cost nothing)."""
    t = result.timings
    t["preprocess_ms"] += reference.preprocess_ms
    t["extract_ms"] += reference.extract_ms
    t["total_ms"] = t["preprocess_ms"] + t["extract_ms"] + t["match_ms"]
    return result
