"""Direct alignment: matches on smooth surfaces where no detector finds repeatable keypoints.

A close-up of a smooth, shaded surface (a blob, a painted wall with soft shadows) holds
structure at the scale of tens of pixels and almost none at the scale of a keypoint: SIFT and
XFeat each find fewer than 10 matches, mostly wrong, on such a pair of bench/lowtexture.py.
The intensities themselves still fix the motion. This is the last path of matcher 'auto''s
textureless chain (`textureless_direct`): in a stream for the frames every other path leaves
thin, and on a single pair for every low-texture pair, where its result is published when it
has at least as many matches (Pipeline.richest):

  * both frames are smoothed where they are noisy (texture.denoise) and high-passed: a
    Gaussian of HIGHPASS_SIGMA px is subtracted, which removes every quadratic intensity
    field exactly (vignetting, lens shading, a lighting gradient: camera-fixed, they would
    pull the alignment to no motion) and keeps the scene's own structure;
  * the global motion, a homography, from phase correlation's shift on a coarse level, then
    ECC (enhanced correlation coefficient: Evangelidis & Psarakis, PAMI 2008; OpenCV's
    findTransformECC) coarse to fine: affine, then homography, away from the borders, where
    the high-pass is not exact;
  * Shi-Tomasi corners of frame 0 (the points with the most two-dimensional structure at
    half resolution), carried into frame 1 by that homography, then each aligned on its own
    coarse to fine (refine.refine_multiscale): a scene that is not a plane still gets each
    point's own position; matches it cannot place within MULTISCALE_OFF_STDERR_PX are
    found off;
  * the epipolar check of the other textureless paths.

It refuses (no match) what it cannot tell apart: a pair whose final correlation is under
MIN_CORRELATION (the frames do not show the same structure: a blank wall's noise, a motion
too large for its basin); an alignment that is not `unique` (started slightly rolled, it
ends elsewhere as well correlated: one round blob on a blank wall); and a surface that
repeats itself (PERIODIC_LIMIT), where it would lock onto whichever period is nearest as
confidently as onto the right one.

Coordinates: pixel centres at integers (as OpenCV's); a DirectFrame's points are pixels of
its working size (a latency budget may shrink it), DirectPath's results original pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import cv2
import numpy as np
import torch

from .budget import PathCost
from .image import working_size
from .refine import multiscale_verdict, refine_multiscale, to_gray
from .results import Features, MatchResult
from .texture import denoise, epipolar_inliers
from ..messages import EXIT_FULL_DEPTH

if TYPE_CHECKING:
    from .families import TexturelessPath

# px: the high-pass's Gaussian. It keeps structure finer than about this and removes any
# quadratic field; chosen among 16, 24 and 32 on the smooth photographs' close-ups and blank
# walls (vignetting, a lamp's spot, a gradient): at 32 the border effects of a vignetted wall
# still drew the alignment, 16 placed cell/closeup/1 to 0.43 px.
HIGHPASS_SIGMA = 16.0
# px of the original image left out at the borders (the high-pass is not exact there).
BORDER = 32
# Long side (px) of the coarsest level the global motion starts on.
COARSEST_SIDE = 160
# The ECC correlation of the high-passed frames below which the pair is refused. Measured on
# bench/lowtexture.py's held-out (seed 0), tuning and smooth pairs: alignments whose matches
# were 90% right ended at 0.93-1.00, those with 84-89% right at 0.86-0.99; wrong ones (a view
# change beyond the basin, not repetitive) at 0.07-0.67; blank walls without a spot at
# 0.03-0.07.
MIN_CORRELATION = 0.7
# A surface whose autocorrelation has a separate peak above this repeats itself (tiles,
# bricks): refused. Repetitive surfaces of bench/lowtexture.py: 0.50-0.64; every other kind
# of 11 photographs (closeups, blur, fog, darkness, walls with a patch): at most 0.40.
PERIODIC_LIMIT = 0.45
# `unique`: the roll (degrees, either way) the global alignment must come back from, and by
# how much (px at the corners of the working image).
ROLL_PROBE_DEG = 2.0
UNIQUE_PX = 2.0
UNIQUE_CORRELATION = 0.005
# Corners per frame at most (and never more than max_keypoints): about 130 ms per pair at
# 640x480 on one CPU thread with 512.
MAX_CORNERS = 512
# px: corners closer than this to each other (or, in track_points, to a tracked point) are
# not taken.
MIN_DISTANCE = 12.0
# Coarse-to-fine levels of each point's own alignment (refine_multiscale): 2^3 = 8x, so a
# point may sit up to about 24 px from where the homography carried it.
POINT_LEVELS = 3


@dataclass
class DirectFrame:
    """One frame prepared for direct alignment, at its working size (`scale`: working /
    original per axis; points here are working pixels, see to_original)."""
    image: np.ndarray          # float32 gray, denoised and high-passed (HIGHPASS_SIGMA)
    corners: np.ndarray        # N x 2 float32, Shi-Tomasi corners (working pixels)
    quality: np.ndarray        # N float32: their corner response, relative to the best
    scale: tuple[float, float] = (1.0, 1.0)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Working pixels -> original pixels (pixel centres at integers in both)."""
        if self.scale == (1.0, 1.0):
            return np.asarray(points, np.float32)
        return ((points + 0.5) / np.asarray(self.scale, np.float32) - 0.5).astype(np.float32)


def prepare(gray: np.ndarray, max_noise: float, max_corners: int,
            working_size: tuple[int, int] | None = None) -> DirectFrame:
    """`gray` (float, [0, 1]) at `working_size` (w, h; None: its own), smoothed where noisy
    (texture.denoise, `max_noise`; 0: never) and high-passed, with at most `max_corners`
    corners away from the borders."""
    gray = np.asarray(gray, np.float32)
    h, w = gray.shape
    scale = (1.0, 1.0)
    if working_size is not None and tuple(working_size) != (w, h):
        gray = cv2.resize(gray, tuple(working_size), interpolation=cv2.INTER_AREA)
        scale = (working_size[0] / w, working_size[1] / h)
    if max_noise > 0:
        gray = denoise(gray, max_noise)
    image = gray - cv2.GaussianBlur(gray, (0, 0), HIGHPASS_SIGMA)
    corners, quality = _corners(image, max_corners)
    return DirectFrame(np.ascontiguousarray(image), corners, quality, scale)


def resized(frame: DirectFrame, shape: tuple[int, int]) -> DirectFrame:
    """`frame` at another working size (`shape`: rows, columns), for a pair whose frames were
    prepared at different sizes (a latency budget changed the size in between)."""
    if frame.image.shape == tuple(shape):
        return frame
    h, w = frame.image.shape
    factor = np.array([shape[1] / w, shape[0] / h], np.float32)
    image = cv2.resize(frame.image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    corners = ((frame.corners + 0.5) * factor - 0.5).astype(np.float32)
    scale = (frame.scale[0] * float(factor[0]), frame.scale[1] * float(factor[1]))
    return DirectFrame(image, corners, frame.quality, scale)


def _corners(image: np.ndarray, max_corners: int, min_distance: float = MIN_DISTANCE
             ) -> tuple[np.ndarray, np.ndarray]:
    """Shi-Tomasi corners of a high-passed image, found at half resolution (smooth surfaces'
    structure is coarse) at least `min_distance` px apart, inside the BORDER."""
    h, w = image.shape
    empty = np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    if max_corners <= 0 or min(h, w) <= 2 * BORDER + 8:
        return empty
    small = cv2.pyrDown(image)
    found = cv2.goodFeaturesToTrack(small, max_corners, 0.001, min_distance / 2, blockSize=7)
    if found is None:
        return empty
    points = found.reshape(-1, 2).astype(np.float32) * 2.0
    inside = ((points[:, 0] >= BORDER) & (points[:, 1] >= BORDER)
              & (points[:, 0] < w - BORDER) & (points[:, 1] < h - BORDER))
    points = points[inside]
    response = cv2.cornerMinEigenVal(small, 7)
    rows = np.clip(np.round(points[:, 1] / 2).astype(int), 0, small.shape[0] - 1)
    cols = np.clip(np.round(points[:, 0] / 2).astype(int), 0, small.shape[1] - 1)
    quality = response[rows, cols]
    quality = quality / max(float(quality.max(initial=0.0)), 1e-12)
    return points, quality.astype(np.float32)


def _pyramid(image: np.ndarray) -> list[np.ndarray]:
    """Levels of `image` from full resolution down to a long side of COARSEST_SIDE or less."""
    levels = [image]
    while max(levels[-1].shape) > COARSEST_SIDE and min(levels[-1].shape) >= 16:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels


def periodicity(image: np.ndarray) -> float:
    """How much a high-passed frame repeats itself: the highest peak of its normalised
    autocorrelation (on the coarsest level) that stands apart from the central one, i.e.
    with a dip of 0.1 or more on the way to it (a smooth frame's autocorrelation only falls
    away from the centre; a tiled one rises again at each period). 0: none."""
    level = _pyramid(image)[-1]
    h, w = level.shape
    if min(h, w) < 8:
        return 0.0
    window = cv2.createHanningWindow((w, h), cv2.CV_32F)
    centred = (level - float((level * window).sum() / window.sum())) * window
    spectrum = np.fft.fft2(centred)
    autocorrelation = np.fft.fftshift(np.fft.ifft2(np.abs(spectrum) ** 2).real)
    cy, cx = h // 2, w // 2
    if autocorrelation[cy, cx] <= 0:
        return 0.0
    autocorrelation /= autocorrelation[cy, cx]
    local_max = autocorrelation == cv2.dilate(autocorrelation.astype(np.float32),
                                              np.ones((5, 5), np.uint8))
    local_max[cy, cx] = False
    ys, xs = np.nonzero(local_max & (autocorrelation > 0.1))
    steps = np.linspace(0.0, 1.0, 40)
    best = 0.0
    for y, x in zip(ys, xs):
        line = autocorrelation[np.round(cy + steps * (y - cy)).astype(int),
                               np.round(cx + steps * (x - cx)).astype(int)]
        if autocorrelation[y, x] - line.min() >= 0.1:
            best = max(best, float(autocorrelation[y, x]))
    return best


def global_homography(image0: np.ndarray, image1: np.ndarray, fine_levels: int = 2,
                      roll_deg: float = 0.0) -> tuple[np.ndarray | None, float]:
    """The homography (3 x 3, frame 0 pixel -> frame 1 pixel) that aligns two high-passed
    frames, and the ECC correlation it ends at (None, 0: no convergence). Phase correlation
    on the coarsest level gives the shift (and `roll_deg`, a rotation about the frame's
    centre, the start: see `unique`); ECC refines an affine there and a homography on the
    next `fine_levels` - 1 finer levels, with BORDER masked out."""
    if image0.shape != image1.shape:
        return None, 0.0
    pyramid0, pyramid1 = _pyramid(image0), _pyramid(image1)
    coarsest = len(pyramid0) - 1
    a, b = pyramid0[coarsest], pyramid1[coarsest]
    if min(a.shape) < 8:
        return None, 0.0
    (dx, dy), _ = cv2.phaseCorrelate(a, b, cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F))
    centre = ((a.shape[1] - 1) / 2, (a.shape[0] - 1) / 2)
    warp = np.vstack([cv2.getRotationMatrix2D(centre, roll_deg, 1.0), [0, 0, 1]])
    warp = (np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]]) @ warp).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    correlation = 0.0
    finest = max(coarsest - fine_levels + 1, 0)
    for level in range(coarsest, finest - 1, -1):
        a, b = pyramid0[level], pyramid1[level]
        if level < coarsest:  # the warp of the coarser level, in this level's pixels
            double = np.diag([2.0, 2.0, 1.0]).astype(np.float32)
            warp = double @ warp @ np.linalg.inv(double)
        margin = int(np.ceil(BORDER / 2 ** level))
        mask = np.zeros(a.shape, np.uint8)
        mask[margin:-margin, margin:-margin] = 1
        try:
            if level == coarsest:
                correlation, affine = cv2.findTransformECC(
                    a, b, np.ascontiguousarray(warp[:2]), cv2.MOTION_AFFINE, criteria, mask, 5)
                warp = np.vstack([affine, [0, 0, 1]]).astype(np.float32)
            else:
                correlation, warp = cv2.findTransformECC(a, b, warp, cv2.MOTION_HOMOGRAPHY,
                                                         criteria, mask, 5)
        except cv2.error:  # no convergence (e.g. nothing to correlate)
            return None, 0.0
    scale = np.diag([2.0 ** finest, 2.0 ** finest, 1.0])
    homography = scale @ warp.astype(np.float64) @ np.linalg.inv(scale)
    return homography, float(correlation)


def unique(image0: np.ndarray, image1: np.ndarray, homography: np.ndarray,
           correlation: float) -> bool:
    """Whether the alignment is the only one nearby: started ROLL_PROBE_DEG rolled either
    way, global_homography does not end at another homography (image corners more than
    UNIQUE_PX apart) that correlates as well (within UNIQUE_CORRELATION). A frame whose only
    structure is one round blob (a lamp's spot on a blank wall) aligns as well rolled about
    the blob as not, and the roll moves everything away from it: there the first alignment
    is one of many (on such a wall 47% of its matches were over 3 px off). A start that
    ends elsewhere with a lower correlation (outside the basin, on a wide view change) or
    fails says nothing against the first."""
    h, w = image0.shape
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)

    def carried(matrix: np.ndarray) -> np.ndarray:
        return cv2.perspectiveTransform(corners[None], matrix)[0]

    for roll in (ROLL_PROBE_DEG, -ROLL_PROBE_DEG):
        other, other_correlation = global_homography(image0, image1, roll_deg=roll)
        if (other is not None and other_correlation >= correlation - UNIQUE_CORRELATION
                and np.abs(carried(other) - carried(homography)).max() > UNIQUE_PX):
            return False
    return True


@dataclass
class DirectMatches:
    """What `match` found: frame 0's corners it placed in frame 1."""
    indices0: np.ndarray       # K: corner index in frame 0
    keypoints1: np.ndarray     # K x 2 float32: their position in frame 1 (its working pixels)
    stderr: np.ndarray         # K: standard error of that position (px)
    correlation: float         # the global alignment's ECC correlation
    periodicity: float         # frame 0's (`periodicity`)
    refused: str | None = None  # why nothing was matched, if so


def match(frame0: DirectFrame, frame1: DirectFrame) -> DirectMatches:
    """Align frame 0's corners in frame 1 (see the module doc); the epipolar check is left to
    the caller. Nothing is matched where the frame repeats itself or the alignment does not
    reach MIN_CORRELATION."""
    nothing = np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    if len(frame0.corners) == 0:
        return DirectMatches(*nothing, 0.0, 0.0, refused="no corners")
    frame0 = resized(frame0, frame1.image.shape)
    periodic = periodicity(frame0.image)
    if periodic > PERIODIC_LIMIT:
        return DirectMatches(*nothing, 0.0, periodic, refused="a repetitive surface")
    homography, correlation = global_homography(frame0.image, frame1.image)
    if homography is None or correlation < MIN_CORRELATION:
        return DirectMatches(*nothing, correlation, periodic, refused="no alignment")
    if not unique(frame0.image, frame1.image, homography, correlation):
        return DirectMatches(*nothing, correlation, periodic, refused="an ambiguous alignment")
    corners = frame0.corners.astype(np.float64)
    carried = np.c_[corners, np.ones(len(corners))] @ homography.T
    with np.errstate(divide="ignore", invalid="ignore"):
        predicted = carried[:, :2] / carried[:, 2:]
    h, w = frame1.image.shape
    inside = (np.all(np.isfinite(predicted), axis=1) & (carried[:, 2] > 0)
              & (predicted[:, 0] >= BORDER / 2) & (predicted[:, 1] >= BORDER / 2)
              & (predicted[:, 0] < w - BORDER / 2) & (predicted[:, 1] < h - BORDER / 2))
    indices0 = np.flatnonzero(inside)
    points, stderr = refine_multiscale(frame0.image, frame1.image, frame0.corners[indices0],
                                       predicted[indices0].astype(np.float32),
                                       levels=POINT_LEVELS)
    _, off = multiscale_verdict(stderr)
    return DirectMatches(indices0[~off], points[~off].astype(np.float32), stderr[~off],
                         correlation, periodic)


def track_points(placed: np.ndarray, frame1: DirectFrame) -> tuple[np.ndarray, np.ndarray]:
    """Frame 1's points for the next pair, as a tracker keeps them: the points placed in it
    (`placed`, first, so match k is point k: quality 1) and then its own corners at least
    MIN_DISTANCE px from all of them, up to as many as it had. Returns (points, quality)."""
    placed = np.asarray(placed, np.float32).reshape(-1, 2)
    own, quality = frame1.corners, frame1.quality
    if len(placed) and len(own):
        gaps = np.linalg.norm(own[:, None] - placed[None], axis=2).min(1)
        own, quality = own[gaps >= MIN_DISTANCE], quality[gaps >= MIN_DISTANCE]
    room = max(len(frame1.corners) - len(placed), 0)
    points = np.concatenate([placed, own[:room]]).astype(np.float32)
    return points, np.concatenate([np.ones(len(placed), np.float32), quality[:room]])


class DirectPath:
    """The direct path as matcher 'auto''s chain runs it (Pipeline.extract_on / match_on): no
    model to load, the same seams as the keypoint paths' (extract a frame, match a pair, a
    cost for the latency budget)."""

    def __init__(self, spec: TexturelessPath) -> None:
        self.spec = spec
        self.cost = PathCost()

    def apply(self, params: Mapping[str, Any]) -> None:
        """Nothing to set: it has no model."""

    def extract(self, image: np.ndarray, smooth: bool, cap: int, side: int, start: float,
                clock: Callable[[], float]) -> Features:
        """A frame's high-passed image and corners (prepare) at up to `side` px on
        the long side (0: its own), as Features: the corners are the keypoints (original
        pixels), with no descriptor; at most min(`cap`, MAX_CORNERS)."""
        gray = to_gray(image)
        h, w = gray.shape
        frame = prepare(gray, self.spec.max_noise if smooth else 0.0,
                        min(cap, MAX_CORNERS), working_size(w, h, side))
        elapsed = clock() - start
        # On the host, whatever the pipeline's device: the alignment is numpy and OpenCV.
        return Features(torch.from_numpy(frame.to_original(frame.corners)),
                        torch.zeros(len(frame.corners), 0, device="cpu"),
                        torch.from_numpy(frame.quality),
                        (w, h), extract_ms=elapsed, working_size=frame.image.shape[::-1],
                        keypoint_cap=cap, direct=frame)

    def match(self, features0: Features, features1: Features, start: float,
              clock: Callable[[], float], budget_ms: float) -> MatchResult:
        """Align frame 0's corners in frame 1 (`match`), then the epipolar check. As a
        tracker does, frame 1's keypoints become the points placed in it, followed by its own
        corners away from them (`track_points`): a stream tracks them on from there, so
        their track ids persist. Scores: 1 / (1 + the position's standard error in px)."""
        return self.result(match(features0.direct, features1.direct), features0, features1,
                           start, clock, budget_ms)

    def result(self, found: DirectMatches, features0: Features, features1: Features,
               start: float, clock: Callable[[], float], budget_ms: float) -> MatchResult:
        """The MatchResult of `found`, the alignment of these two frames (see `match` above);
        for a caller that also wants the alignment itself (why it refused)."""
        frame1 = features1.direct
        kpts0 = features0.keypoints.cpu().numpy()[found.indices0]
        kpts1 = frame1.to_original(found.keypoints1)
        keep = epipolar_inliers(kpts0, kpts1, self.spec.epipolar_px)
        epipolar_dropped = int(len(keep) - np.count_nonzero(keep))
        indices0, kpts0, placed = found.indices0[keep], kpts0[keep], kpts1[keep]
        stderr = found.stderr[keep] / frame1.scale[0]  # original pixels
        points, quality = track_points(found.keypoints1[keep], frame1)
        frame1.corners, frame1.quality = points, quality
        features1.keypoints = torch.from_numpy(frame1.to_original(points))
        features1.scores = torch.from_numpy(quality)
        features1.descriptors = torch.zeros(len(points), 0, device="cpu")
        match_ms = clock() - start
        extractor, matcher = self.spec.name.split("+")
        return MatchResult(
            keypoints0=kpts0.astype(np.float32), keypoints1=placed.astype(np.float32),
            scores=(1.0 / (1.0 + stderr)).astype(np.float32),
            indices0=indices0.astype(np.int64), indices1=np.arange(len(placed), dtype=np.int64),
            num_keypoints0=len(features0), num_keypoints1=len(features1),
            image_size0=features0.image_size, image_size1=features1.image_size,
            exit_layer=0, num_layers=0, exit_reason=EXIT_FULL_DEPTH,
            kept0=len(features0), kept1=len(features1),
            timings={"preprocess_ms": features1.preprocess_ms,
                     "extract_ms": features1.extract_ms, "match_ms": match_ms, "refine_ms": 0.0,
                     "total_ms": features1.preprocess_ms + features1.extract_ms + match_ms},
            extractor=extractor, matcher=matcher, latency_budget_ms=budget_ms,
            keypoint_cap=features1.keypoint_cap, extraction_scale=frame1.scale[0],
            refined=np.ones(len(placed), np.uint8), epipolar_dropped=epipolar_dropped)
