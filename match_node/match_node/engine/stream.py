"""A stream of frames: each frame extracted once, matched to the previous one, with persistent
track ids, the texture switch of matcher 'auto', stamp checks and refinement.

    stream = SequentialMatcher(Pipeline(...))
    event = stream.push(image, stamp_ns)    # event.result: matches to the previous frame
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .. import params as P
from ..messages import EXIT_NO_KEYPOINTS
from .budget import FrameRecord
from .pipeline import Pipeline
from .refine import to_gray
from .results import Features, LoftrFeatures, MatchResult, StreamEvent
from .texture import TEXTURELESS_LOFTR, gradient_tensor
from .tracker import Tracker

log = logging.getLogger(__name__)


@dataclass
class Frame:
    """One frame of a stream: its image and whatever features it has needed so far."""
    image: np.ndarray
    image_size: tuple[int, int]
    matcher: str                          # the matcher chosen for this frame
    features: Features | None = None      # extractor keypoints (LightGlue, texture)
    loftr: LoftrFeatures | None = None    # computed when LoFTR needs this frame
    # Keypoints of the keypoint textureless paths (SIFT, the XFeat fallback) by path name,
    # computed when a path needs this frame.
    path_features: dict[str, Features] = field(default_factory=dict)
    gray: np.ndarray | None = None        # float gray image, kept for refinement
    # Its gradient tensor (texture.gradient_tensor) with matcher 'auto', for the pair's blur
    # mismatch (Pipeline.blur_mismatched).
    gradient: np.ndarray | None = None
    # Keypoint positions after refinement (N x 2): where this frame was the current one its
    # matched keypoints moved; as the next pair's reference it reports the same positions.
    positions: np.ndarray | None = None
    path_positions: dict[str, np.ndarray] = field(default_factory=dict)  # same, per path


class SequentialMatcher:
    """Match each frame to the previous one, extracting every frame once, with track ids.

    Stamps are integers (ns). A frame whose stamp is not newer than the previous one is
    dropped (`on_stamp_backwards="drop"`) or restarts tracking (`"reset"`); a frame whose
    stamp jumps by more than `max_stamp_jump_s` either way, and a frame of a new size (the
    camera changed: its intrinsics did too), always restart tracking.

    With matcher 'auto' every frame's keypoints give its texture, and a MatcherSwitch (with
    hysteresis) picks LightGlue or the textureless path (LoFTR, or SIFT on contrast-normalised
    images without a LoFTR file) for the pair it ends; the textureless path's features of the
    previous frame are computed when it has none yet. A pair LightGlue leaves with fewer than
    `texture_min_matches` matches is matched on the textureless path too, and the result
    with more matches is published (so the first textureless frame, before the switch, is
    not lost). A textureless path's result that thin goes on to the fallback
    (`textureless_fallback`, XFeat + LighterGlue). A textureless result that the keypoint
    matcher's own matches of the pair contradict gives way to those (`textureless_verify`).
    A pair with motion blur in one frame only is served by the textureless paths unless they
    leave it too thin (`texture_blur_mismatch`), whatever the switch's state.
    Tracks restart when the matcher changes, because the paths' keypoints are different points
    (LoFTR's are coarse grid cells).
    """

    def __init__(self, pipeline: Pipeline, on_stamp_backwards: str = "reset",
                 max_stamp_jump_s: float | None = None) -> None:
        if on_stamp_backwards not in ("reset", "drop"):
            raise P.ParameterError("on_stamp_backwards must be 'reset' or 'drop'")
        self.pipeline = pipeline
        self.on_stamp_backwards = on_stamp_backwards
        # None: the pipeline's parameter, read at every frame so run-time changes apply.
        self._max_stamp_jump_s = (None if max_stamp_jump_s is None
                                  else P.SPECS["max_stamp_jump_s"].validate(max_stamp_jump_s))
        self.tracker = Tracker()
        self.switch = pipeline.matcher_switch()
        self.previous: Frame | None = None
        self.previous_stamp: int | None = None
        self.frame_index = -1
        self.tracks_reset_pending = True
        self.refine_skipped = 0  # pairs whose refinement the latency budget skipped
        self._record: FrameRecord | None = None
        self._record_size: tuple[int, int] = (0, 0)

    @property
    def current_matcher(self) -> str:
        """The matcher the stream is on (the keypoint matcher's name, 'loftr' or
        'sift-clahe+nn'); a frame the fallback served reports the fallback in its message."""
        mode = self.pipeline.mode
        if mode.switches:
            return self.switch.current
        return mode.name if mode.detector_free else self.pipeline.detector_matcher

    @property
    def max_stamp_jump_s(self) -> float:
        """Stamp difference (s, either way) beyond which tracking restarts; 0 = no limit."""
        if self._max_stamp_jump_s is not None:
            return self._max_stamp_jump_s
        return float(self.pipeline.params.get("max_stamp_jump_s",
                                              P.SPECS["max_stamp_jump_s"].default))

    def _stamp_jump(self, stamp_ns: int) -> str | None:
        """Why tracking must restart at a frame of this stamp (a jump beyond the limit)."""
        limit = self.max_stamp_jump_s
        if self.previous_stamp is None or limit <= 0:
            return None
        step = stamp_ns - self.previous_stamp
        if abs(step) <= limit * 1e9:
            return None
        return (f"frame stamp {stamp_ns} ns jumped {'forwards' if step > 0 else 'backwards'} "
                f"by {abs(step) / 1e9:.6g} s from the previous {self.previous_stamp} ns "
                f"(more than max_stamp_jump_s={limit:g}); tracking restarts at this frame")

    def reset(self) -> None:
        self.previous = None
        self.previous_stamp = None

    def push(self, image: np.ndarray, stamp_ns: int, started_ms: float | None = None) -> StreamEvent:
        """Process one frame; raises ImageError for unusable images (counted by the caller).

        `started_ms` is when the frame's latency budget started, on the pipeline's clock
        (`pipeline.budget.clock()`), e.g. when the node took the frame; default: now.
        """
        self.finish_frame()  # the previous frame's record, if the caller did not close it
        budget = self.pipeline.budget
        start = budget.clock() if started_ms is None else started_ms
        self.frame_index += 1
        index = self.frame_index
        jump = self._stamp_jump(stamp_ns)
        if jump is not None:
            # Before the backwards policy: with 'drop', a far-future stamp would otherwise
            # make every later (correct) frame look old and drop them all.
            self._start(self._frame(image, start), stamp_ns)
            return StreamEvent(None, None, index, restarted=True, note=jump)
        if self.previous_stamp is not None and stamp_ns <= self.previous_stamp:
            note = (f"frame stamp {stamp_ns} ns is not newer than the previous "
                    f"{self.previous_stamp} ns")
            if self.on_stamp_backwards == "drop":
                return StreamEvent(None, None, index, dropped=True, note=note + "; dropped")
            self.reset()
            note += "; tracking restarts at this frame"
            self._start(self._frame(image, start), stamp_ns)
            return StreamEvent(None, None, index, restarted=True, note=note)
        frame = self._frame(image, start)
        previous = self.previous
        if previous is None:
            self._start(frame, stamp_ns)
            return StreamEvent(None, None, index, restarted=True)
        if frame.image_size != previous.image_size:
            note = (f"image size changed from {previous.image_size[0]}x"
                    f"{previous.image_size[1]} to {frame.image_size[0]}x"
                    f"{frame.image_size[1]}; tracking restarts at this frame")
            self._start(frame, stamp_ns)
            return StreamEvent(None, None, index, restarted=True, note=note)

        if frame.matcher != self.pipeline.detector_matcher:  # the textureless state
            match_start = budget.clock()
            result = self._match_textureless(previous, frame, start)
            result = self._verified(previous, frame, result, start)
            if self._record is not None:  # its time is not the extractor's nor overhead
                self._record.match_ms = budget.clock() - match_start
        else:
            result = self.pipeline.match_features(previous.features, frame.features,
                                                  hook=budget.deadline(start))
            if self._record is not None:
                self._record.match_ms = result.timings["match_ms"]
            if self.pipeline.refining:
                self._refine(previous, frame, result, start)
            keypoint_result = result
            if self.pipeline.rescues(result):
                # Too thin to publish (typically the first textureless frame, before the
                # switch): the textureless paths too, and the result with more matches.
                match_start = budget.clock()
                result = self._match_textureless(previous, frame, start, result)
                if self._record is not None:
                    self._record.match_ms += budget.clock() - match_start
            elif self.pipeline.blur_mismatched(result, previous.gradient, frame.gradient):
                # Motion blur in one frame only: the keypoints on its streaks sit off the
                # sharp frame's, the textureless path's stay centred (texture.py).
                match_start = budget.clock()
                result, served = self.pipeline.textureless_unless_thin(
                    result, lambda path: self._match_on(path, previous, frame, start),
                    richer=False)
                if served is not None:
                    frame.matcher = served
                if self._record is not None:
                    self._record.match_ms += budget.clock() - match_start
            if result is not keypoint_result:
                # The keypoint matcher's pair was not published: the positions its refinement
                # gave this frame's keypoints (against a blurred or textureless frame, where
                # the coarse-to-fine alignment slides them along the blur) must not become
                # the next pair's reference. On a textured -> motion-blurred -> textured
                # stream they made the sharp frames after it lose precision (hubble_deep_field:
                # 1.000 -> 0.987).
                frame.positions = None
        if self._record is not None:
            self._record.textureless = frame.matcher != self.pipeline.detector_matcher
        if self.tracker.space != frame.matcher:
            # Another matcher's keypoints are other points: their tracks start afresh.
            self.tracker.start(result.num_keypoints0, space=frame.matcher)
            self.tracks_reset_pending = True
        result.track_ids = self.tracker.update(result.num_keypoints1, result.indices0,
                                               result.indices1)
        reference_stamp = self.previous_stamp
        previous.image = None  # no longer needed: its features are cached where needed
        self.previous, self.previous_stamp = frame, stamp_ns
        result.timings["total_ms"] = budget.clock() - start
        if self._record is not None:
            self._record.total_ms = result.timings["total_ms"]
        event = StreamEvent(result, reference_stamp, index,
                            tracks_reset=self.tracks_reset_pending)
        self.tracks_reset_pending = False
        if result.exit_reason == EXIT_NO_KEYPOINTS and result.num_keypoints1 == 0:
            event.note = "no keypoints in this frame (blank or textureless image)"
        return event

    def _match_textureless(self, previous: Frame, frame: Frame, start: float,
                           thin: MatchResult | None = None) -> MatchResult:
        """Match the pair on matcher 'auto''s textureless paths (Pipeline.richest: LoFTR, or
        SIFT on contrast-normalised images, then the fallback while the best result is
        thinner than `texture_min_matches`), computing what each frame lacks. `thin` is the
        keypoint matcher's result when it left the pair too thin. Sets `frame.matcher` to the
        path whose result is returned (the one with the most matches); the result's keypoint
        counts are the tracker's index spaces."""
        pipeline = self.pipeline
        # matcher 'loftr' does not switch: every frame is on LoFTR.
        chain = pipeline.textureless_chain if pipeline.mode.switches else (frame.matcher,)
        # richer=False: a sparse but right SIFT result stays; a change of path for more
        # matches would restart the tracks (pairs of a blurred stream alternated between SIFT
        # and XFeat with it: 6 track resets instead of 2, XFeat's frames less precise).
        result, served = pipeline.richest(
            thin, chain, lambda path: self._match_on(path, previous, frame, start),
            richer=False)
        if served is not None:
            frame.matcher = served
        return result

    def _verified(self, previous: Frame, frame: Frame, result: MatchResult,
                  start: float) -> MatchResult:
        """A textureless-state pair's result, or the keypoint matcher's of the same frames when
        its own matches contradict it (Pipeline.keypoint_result_wins, `textureless_verify`;
        only a descriptor-only path's result is checked); then the frame is on the keypoint
        matcher (its tracks are the extractor's points)."""
        pipeline = self.pipeline
        if (previous.features is None or frame.features is None
                or not pipeline.descriptor_only(frame.matcher)
                or not pipeline.verifies(previous.features, frame.features)):
            return result
        keypoint = pipeline.match_features(previous.features, frame.features,
                                           hook=pipeline.budget.deadline(start))
        if not pipeline.keypoint_result_wins(keypoint, result, frame.matcher):
            return result
        if pipeline.refining:
            self._refine(previous, frame, keypoint, start)
        frame.matcher = pipeline.detector_matcher
        return keypoint

    def _match_on(self, path: str, previous: Frame, frame: Frame, start: float) -> MatchResult:
        """The pair on one textureless path, refined when that is on and fits the budget."""
        pipeline = self.pipeline
        if path == TEXTURELESS_LOFTR:
            if previous.loftr is None:
                previous.loftr = pipeline.extract_loftr(previous.image)
            if frame.loftr is None:
                frame.loftr = pipeline.extract_loftr(frame.image)
            return pipeline.match_loftr(previous.loftr, frame.loftr)
        cost = pipeline.keypoint_paths[path].cost
        missing = [view for view in (previous, frame) if path not in view.path_features]
        if missing:
            # Under a latency budget, at the resolution that leaves the pair's match and
            # refinement room (both frames' extractions at a transition from LightGlue).
            side = pipeline.path_side(path, frame.image_size, start, len(missing))
            for view in missing:
                features = pipeline.extract_on(path, view.image, side)
                w, h = features.working_size
                cost.observe_extraction(w * h, len(features),
                                        features.preprocess_ms + features.extract_ms)
                view.path_features[path] = features
        features0, features1 = previous.path_features[path], frame.path_features[path]
        result = pipeline.match_on(path, features0, features1)
        # The direct path's matches are aligned already (and its frame keeps their positions).
        refined = (pipeline.refining and not pipeline.aligns(path)
                   and self._refine(previous, frame, result, start, path))
        cost.observe_pair(result.timings["match_ms"],
                          result.timings["refine_ms"] if refined else None)
        return result

    def _refine(self, previous: Frame, frame: Frame, result: MatchResult, start: float,
                path: str | None = None) -> bool:
        """Sub-pixel refinement of the pair's current keypoints, when it fits the budget
        (`path`: of that textureless path's keypoints; None: the extractor's); True if they
        were refined."""
        if frame.gray is None:  # refinement was switched on at run time
            frame.gray = to_gray(frame.image)
        reference = previous.positions if path is None else previous.path_positions.get(path)
        if not self._refine_pair(result, reference, previous.gray, frame.gray, start,
                                 textureless=path is not None):
            return False
        features = frame.features if path is None else frame.path_features[path]
        positions = features.keypoints.cpu().numpy().astype(np.float32)
        refined = result.refined.astype(bool)
        positions[result.indices1[refined]] = result.keypoints1[refined]
        if path is None:
            frame.positions = positions
        else:
            frame.path_positions[path] = positions
        return True

    def _refine_pair(self, result: MatchResult, positions0: np.ndarray | None,
                     gray0: np.ndarray | None, gray1: np.ndarray, start: float,
                     textureless: bool = False) -> bool:
        """The refinement step of every pair: image 0's keypoints where refinement moved them
        when it was the current image (`positions0`, per keypoint), then image 1's keypoints
        refined against the gray images when it fits the budget (`textureless`: a
        textureless path's result, see Pipeline.refine_result); True if they were."""
        if positions0 is not None:
            result.keypoints0 = positions0[result.indices0].astype(np.float32)
        if not len(result) or gray0 is None:
            return False
        if not self.pipeline.refine_fits(len(result), start, textureless):
            self.refine_skipped += 1
            return False
        self.pipeline.refine_result(result, gray0, gray1, textureless)
        return True

    # --- another view of the current frame (stereo) -----------------------------------------
    def match_view(self, image: np.ndarray, started_ms: float) -> MatchResult:
        """Match the current frame (the last one pushed, image 0) to another image of the same
        moment (image 1: e.g. the right camera of a stereo pair) with the keypoint matcher.

        `image` must have the current frame's size. It is extracted once, with the budget's
        settings; the current frame's features are reused (extracted here when LoFTR drove the
        stream), its keypoints reported where refinement moved them, and image 1's keypoints
        refined when refinement is on and fits the budget of a frame started at `started_ms`.
        Track ids are left to `track_view`, after any filtering.
        """
        frame = self.previous
        if frame is None:
            raise RuntimeError("match_view needs a current frame: push one first")
        pipeline, budget = self.pipeline, self.pipeline.budget
        features0 = frame.features or pipeline.extract(frame.image,
                                                       budget.settings(frame.image_size))
        features1 = pipeline.extract(image, budget.settings(frame.image_size))
        result = pipeline.match_features(features0, features1, hook=budget.deadline(started_ms))
        if pipeline.refining:
            gray0 = frame.gray if frame.gray is not None else to_gray(frame.image)
            self._refine_pair(result, frame.positions, gray0, to_gray(image), started_ms)
        return result

    def track_view(self, result: MatchResult) -> None:
        """Give a `match_view` result the track ids of its current-frame keypoints: a tracked
        keypoint's own id, else a fresh one that the next frame's matches inherit. Where LoFTR
        drives the tracks (its points are other points) the matches get ids of no track."""
        space = self.pipeline.detector_matcher
        if self.tracker.space is None:  # first frame after a (re)start: tracks begin here
            self.tracker.start(result.num_keypoints0, space=space)
        if self.tracker.space == space:
            result.track_ids = self.tracker.claim(result.indices0)
        else:
            result.track_ids = self.tracker.fresh(len(result))

    def _frame(self, image: np.ndarray, start: float) -> Frame:
        """Extract what every frame needs and choose its matcher."""
        mode = self.pipeline.mode
        if mode.detector_free:  # no keypoints needed: LoFTR's backbone runs when matching
            self._record = None
            return Frame(image, (image.shape[1], image.shape[0]), mode.name)
        budget = self.pipeline.budget
        features = self.pipeline.extract(image, budget.settings((image.shape[1], image.shape[0])))
        w, h = features.working_size
        self._record = FrameRecord(
            features.preprocess_ms, features.extract_ms, 0.0, budget.clock() - start, w * h,
            len(features), features.keypoint_cap, max(w, h))
        self._record_size = features.image_size
        matcher = (self.switch.update(self.pipeline.texture(features)) if mode.switches
                   else self.pipeline.detector_matcher)
        refining = self.pipeline.refining
        gray = to_gray(image) if refining or mode.switches else None
        gradient = gradient_tensor(gray) if mode.switches else None
        return Frame(image, features.image_size, matcher, features,
                     gray=gray if refining else None, gradient=gradient)  # gray: refinement's

    def finish_frame(self, total_ms: float | None = None) -> None:
        """Give the latency budget the frame's measurements. `total_ms` is the whole frame as
        the caller saw it (e.g. including publishing); push() calls this itself for a frame
        the caller did not finish."""
        if self._record is None:
            return
        if total_ms is not None:
            self._record.total_ms = total_ms
        self.pipeline.budget.observe(self._record, self._record_size)
        self._record = None

    def _start(self, frame: Frame, stamp_ns: int) -> None:
        self.tracker.reset()
        self.previous, self.previous_stamp = frame, stamp_ns
        self.tracks_reset_pending = True
