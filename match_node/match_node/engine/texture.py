"""How much texture a frame has for a detector, and when to switch to detector-free matching.

The measure comes from the extractor's own output, which the pipeline computes anyway: the
number of confident keypoints and how much of the image they cover (the share of cells of a
coarse grid holding at least one). Walls, floors, fog and night give few confident keypoints,
or keypoints bunched in one corner; both starve a detector-based matcher and its pose.

`MatcherSwitch` turns the measure into a decision with hysteresis: it switches to the
textureless path after `switch_frames` consecutive textureless frames and back after as
many textured ones, with separate low and high thresholds, so it does not flap on frames near
a single threshold.

The textureless path is LoFTR where its official file is available, and otherwise the one
chosen by measurement with the files this project can load offline (bench/lowtexture.py):
SIFT (LightGlue's SIFT settings) on a contrast-normalised image (`contrast_normalise`,
CLAHE), mutual nearest neighbours with the ratio test, an epipolar consistency check
(`epipolar_inliers`) and the pipeline's sub-pixel refinement on the original images.
At night the few grey levels of a frame's content sit under sensor noise of the same size,
and contrast normalisation stretches both: such frames are smoothed first (`denoise`: a
Gaussian as wide as brings the noise, measured by `noise_sigma`, under the path's limit).

Nearest neighbours cannot tell the periods of a repetitive surface (tiles, façades) apart, so
a textureless path's result on such a frame can be mostly wrong while LightGlue, whose context
tells them apart, still finds a few dozen correct matches. `epipolar_agreement` measures how
many of the path's matches the keypoint matcher's own geometry supports; the pipeline
publishes the keypoint matcher's result when that is under half (`textureless_verify`).
The nearest neighbours' own epipolar check says it first: on a repetitive surface it removes
a third to three quarters of them (the wrong periods of different tiles do not share one
geometry), on all other low-texture pairs of bench/lowtexture.py but one (a dark brick
wall, 37%) at most a quarter. Such an ambiguous result (under AMBIGUOUS_SURVIVAL kept) is
checked against the fallback's (XFeat + LighterGlue, whose context tells the periods
apart), and gives way to it when fewer than
FALLBACK_AGREEMENT of its matches agree with the fallback's geometry (`geometric_agreement`:
its homography where one explains it, since a period shift along the rows of tiles stays on
its epipolar line when the camera moves along them). A single pair's nearest-neighbour result
that is right but sparse (a few dozen matches on a blurred surface: a poorly conditioned
geometry) gives way to the fallback's when that has several times as many matches and agrees
with it (SPARSE_FACTOR, `textureless_richer`).

Motion blur in one frame of a pair and not in the other (a jolt, a fast turn) is the other
trap of a keypoint detector: on a 12-20 px streak its keypoints sit towards the streak's ends,
3-6 px from the sharp frame's along the motion, so LightGlue's matches of such a pair are
mostly more than 3 px off (bench/lowtexture.py's motion-blur streams: precision 0.27-0.37),
while SIFT's blobs at a coarse scale stay centred (0.76-0.92). `blur_change` measures it
from the two frames' `gradient_tensor`s: blur along one direction removes gradient energy,
most of it along the motion, which neither a contrast change (even) nor a change of view
(carried by the pair's affine map) does.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Textureless paths of matcher 'auto', in the order they are tried (see Pipeline).
TEXTURELESS_LOFTR = "loftr"
TEXTURELESS_SIFT = "sift-clahe+nn"  # its messages carry extractor 'sift-clahe', matcher 'nn'
TEXTURELESS_XFEAT = "xfeat+lighterglue"  # the fallback: extractor 'xfeat', matcher 'lighterglue'
# The last textureless path (direct.py): Shi-Tomasi corners of a high-passed frame aligned directly.
TEXTURELESS_DIRECT = "shi-tomasi+direct"

# A descriptor-only path's result is ambiguous when its epipolar check kept fewer than this
# share of the matcher's matches: the middle of the gap measured for SIFT-CLAHE + nearest
# neighbours on bench/lowtexture.py's low-texture pairs (tuning, held-out and smooth
# photographs, seeds 0-1) where it found at least texture_min_matches: 0.24-0.66 kept on the
# 31 repetitive surfaces, 0.75-1.00 on the 222 others (bench/results/ambiguity.md).
AMBIGUOUS_SURVIVAL = 0.7
# An ambiguous result gives way to the fallback's when fewer than this share of its matches
# agree with the fallback's geometry (geometric_agreement). Same pairs: 0.00-0.58 on the
# repetitive surfaces (where 0-56% of its matches were correct); 0.84-1.00 on the others but
# for one close-up (0.41 with 94% of its matches correct: XFeat's geometry there is the worse
# one), which kept 85% and is not ambiguous.
FALLBACK_AGREEMENT = 0.75
# geometric_agreement checks against the reference's homography where its inliers are at least
# this share of its fundamental matrix's. A fundamental matrix fits any planar view too, and
# on a repetitive surface it also keeps the reference's own period shifts along its epipolar
# lines, which the homography rejects: XFeat's matches of consecutive frames of a tiled floor,
# 64-71% correct, gave the homography 62-69% of the fundamental matrix's inliers. Only
# ambiguous and sparse results are checked, so the cost of a homography that covers one plane
# of a deep scene is the fallback's (correct, less precise) matches in place of an ambiguous
# SIFT result, and none for a sparse one (it stays unless it agrees).
HOMOGRAPHY_SHARE = 0.5
# A descriptor-only path's result with fewer matches than this many times
# texture_min_matches is sparse: the fallback matches the pair too (`textureless_richer`).
# On the 30 low-texture pairs where SIFT kept 20-79 (held-out, tuning, smooth; not
# repetitive), XFeat found 88-426 and agreed with 29 of them; publishing XFeat's where it had
# 3x as many took their homography AUC@3px from 0.664 to 0.755 (AUC@1px 0.314 -> 0.456).
SPARSE_FACTOR = 4


@dataclass(frozen=True)
class Texture:
    confident: int       # keypoints with a score above the confidence threshold
    coverage: float      # share of grid cells holding at least one confident keypoint
    # The extractor's keypoint cap (0: none). No frame can have more confident keypoints
    # than the cap, so a keypoint threshold above it counts as the cap: a small
    # `max_keypoints`, or the latency budget lowering the cap, does not make every frame
    # look textureless.
    cap: int = 0
    # Keypoint thresholds are stated for 640x480 and scale with the square root of the area
    # the extractor ran on: textured photographs at 320x240 keep 40-60% of their confident
    # keypoints at 640x480 (not 25%), their textureless versions stay near zero.
    scale: float = 1.0

    def _needed(self, keypoints: int) -> float:
        needed = keypoints * self.scale
        return min(needed, self.cap) if self.cap > 0 else needed

    def is_low(self, min_keypoints: int, min_coverage: float) -> bool:
        return self.confident < self._needed(min_keypoints) or self.coverage < min_coverage

    def is_high(self, min_keypoints: int, min_coverage: float) -> bool:
        return self.confident >= self._needed(min_keypoints) and self.coverage >= min_coverage


def measure_texture(keypoints: np.ndarray, scores: np.ndarray, image_size: tuple[int, int],
                    score_threshold: float = 0.2, grid: tuple[int, int] = (16, 12),
                    cap: int = 0, working_size: tuple[int, int] | None = None) -> Texture:
    """Texture of a frame from its keypoints (N x 2 pixels) and their detection scores
    (`cap`: the keypoint cap the extractor ran with, 0 for none; `working_size`: the size it
    ran at, default `image_size`).

    The grid is 16 x 12 cells whatever the resolution (40 px cells at 640x480), so coverage
    means the same at any image size.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    ww, wh = working_size if working_size and min(working_size) > 0 else image_size
    scale = float(np.sqrt(ww * wh / (640 * 480)))
    confident = keypoints[scores > score_threshold]
    if len(confident) == 0:
        return Texture(0, 0.0, cap, scale)
    w, h = image_size
    columns = np.clip((confident[:, 0] / w * grid[0]).astype(int), 0, grid[0] - 1)
    rows = np.clip((confident[:, 1] / h * grid[1]).astype(int), 0, grid[1] - 1)
    occupied = np.unique(rows * grid[0] + columns).size
    return Texture(len(confident), occupied / (grid[0] * grid[1]), cap, scale)


class MatcherSwitch:
    """Chooses between a detector-based matcher and a detector-free one, with hysteresis."""

    def __init__(self, detector_based: str = "lightglue", detector_free: str = "loftr",
                 low_keypoints: int = 150, low_coverage: float = 0.30,
                 high_keypoints: int = 250, high_coverage: float = 0.40,
                 switch_frames: int = 2) -> None:
        if high_keypoints < low_keypoints or high_coverage < low_coverage:
            raise ValueError("the 'textured again' thresholds must not be below the "
                             "'textureless' ones (that would make the switch flap)")
        self.detector_based, self.detector_free = detector_based, detector_free
        self.low = (low_keypoints, low_coverage)
        self.high = (high_keypoints, high_coverage)
        self.switch_frames = max(1, switch_frames)
        self.current = detector_based
        self._streak = 0
        self.switches = 0

    def update(self, texture: Texture) -> str:
        """Feed one frame's texture; return the matcher to use for it."""
        if self.current == self.detector_based:
            leaving = texture.is_low(*self.low)
        else:
            leaving = texture.is_high(*self.high)
        self._streak = self._streak + 1 if leaving else 0
        if self._streak >= self.switch_frames:
            self.current = (self.detector_free if self.current == self.detector_based
                            else self.detector_based)
            self._streak = 0
            self.switches += 1
        return self.current


# Laplacian-of-differences mask of Immerkaer's noise estimate: it cancels any locally planar
# image (ramps, smooth shading), so what it responds to is mostly the sensor's noise.
_NOISE_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
DENOISE_MAX_SIGMA = 4.0  # px: the most a textureless path's pre-smoothing blurs a frame


def noise_sigma(gray: np.ndarray) -> float:
    """Standard deviation of a gray image's white noise, in its own units (J. Immerkaer, Fast
    noise variance estimation, CVIU 1996). On white noise the response to _NOISE_MASK has a
    standard deviation of 6 sigma (the mask's squares sum to 36), so a mean absolute value of
    6 sigma sqrt(2 / pi); on planar content it is zero."""
    gray = np.asarray(gray, np.float32)
    if min(gray.shape[:2]) < 3:
        return 0.0
    response = cv2.filter2D(gray, -1, _NOISE_MASK)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6.0)


def denoise_sigma(gray: np.ndarray, max_noise: float) -> float:
    """The Gaussian blur (sigma, px) that brings the noise of a gray image (float, [0, 1]) down
    to `max_noise` grey levels once its contrast (0.5th to 99.5th percentile) is stretched to
    the full 0-255 range (0: it is below already, or `max_noise` is 0).
    At night or under heavy gain a frame holds a few grey levels of content under a noise of
    the same size; contrast normalisation (or XFeat's instance normalisation) stretches both,
    and the detector's keypoints land on noise. A Gaussian of sigma s divides white noise by
    2 s sqrt(pi) and keeps structure coarser than s; it is symmetric, so it moves no point.
    At most DENOISE_MAX_SIGMA."""
    if max_noise <= 0 or gray.size == 0:
        return 0.0
    dn = np.asarray(gray, np.float32) * 255.0
    low, high = np.percentile(dn[::2, ::2], (0.5, 99.5))
    stretched = noise_sigma(dn) * 255.0 / max(float(high - low), 1.0)
    if stretched <= max_noise:
        return 0.0
    return float(min(stretched / (2.0 * np.sqrt(np.pi) * max_noise), DENOISE_MAX_SIGMA))


def denoise(gray: np.ndarray, max_noise: float) -> np.ndarray:
    """`gray` (float, [0, 1]) blurred by `denoise_sigma`, or as it is when that is under half
    a pixel."""
    sigma = denoise_sigma(gray, max_noise)
    if sigma < 0.5:
        return gray
    return cv2.GaussianBlur(np.asarray(gray, np.float32), (0, 0), sigma)


def contrast_normalise(gray: np.ndarray, clip_limit: float = 2.0,
                       tiles: tuple[int, int] = (8, 8)) -> np.ndarray:
    """CLAHE (contrast-limited adaptive histogram equalisation) of a gray image in [0, 1]
    (float) or uint8; returns uint8. Fog, haze, flat light and darkness leave a few grey
    levels of contrast that a detector's fixed contrast threshold ignores; CLAHE stretches
    them per tile (8 x 8 tiles, whatever the size), with the stretch limited by `clip_limit`
    so that flat regions do not become noise."""
    if gray.dtype != np.uint8:
        gray = np.clip(np.round(np.asarray(gray, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tiles).apply(gray)


def _msac_params(threshold_px: float) -> "cv2.UsacParams":
    """OpenCV USAC as MSAC with inner local optimisation, uniform sampling (seeded, so
    repeatable), at MAGSAC++'s confidence and iteration cap."""
    params = cv2.UsacParams()
    params.threshold = threshold_px
    params.confidence = 0.999
    params.maxIterations = 10000
    params.score = cv2.SCORE_METHOD_MSAC
    params.loMethod = cv2.LOCAL_OPTIM_INNER_LO
    params.sampler = cv2.SAMPLING_UNIFORM
    return params


def epipolar_inliers(keypoints0: np.ndarray, keypoints1: np.ndarray,
                     threshold_px: float = 1.5, min_matches: int = 12,
                     fast: bool = False) -> np.ndarray:
    """Mask of matches consistent with one fundamental matrix (`threshold_px`), the geometric
    check that nearest-neighbour matching lacks (LightGlue's context does it implicitly). Any
    rigid scene satisfies it, planar or not. With fewer than `min_matches` matches, or when no
    model is found, every match is kept.

    The estimator is MAGSAC++, or with `fast` MSAC with inner local optimisation: on 114
    XFeat nearest-neighbour pairs of real camera paths (346 matches each, 90% correct, 0.75 px)
    both kept the same matches (precision 0.965 / 0.968, recall 0.855 / 0.852) while MSAC took
    3.6 ms median and 10 ms at p95 against MAGSAC++'s 9 and 37 ms, whose sigma-consensus
    scoring is the cost. The real-time path (`epipolar_filter_px`) uses `fast`."""
    k0 = np.asarray(keypoints0, np.float64).reshape(-1, 2)
    k1 = np.asarray(keypoints1, np.float64).reshape(-1, 2)
    keep = np.ones(len(k0), bool)
    if len(k0) < max(min_matches, 8):
        return keep
    try:
        if fast:
            _, mask = cv2.findFundamentalMat(k0, k1, _msac_params(threshold_px))
        else:
            _, mask = cv2.findFundamentalMat(k0, k1, cv2.USAC_MAGSAC, threshold_px, 0.999,
                                             10000)
    except cv2.error:  # degenerate input (e.g. all points on a line)
        return keep
    if mask is None:
        return keep
    return mask.ravel().astype(bool)


def sampson_distances(fundamental: np.ndarray, keypoints0: np.ndarray,
                      keypoints1: np.ndarray) -> np.ndarray:
    """First-order geometric distance (px) of each match to the epipolar geometry
    `fundamental` (image 0 -> image 1)."""
    x0 = np.c_[np.asarray(keypoints0, np.float64).reshape(-1, 2), np.ones(len(keypoints0))]
    x1 = np.c_[np.asarray(keypoints1, np.float64).reshape(-1, 2), np.ones(len(keypoints1))]
    lines1 = x0 @ fundamental.T     # epipolar lines in image 1
    lines0 = x1 @ fundamental       # and in image 0
    residual = np.sum(x1 * lines1, axis=1)
    norm = lines1[:, 0] ** 2 + lines1[:, 1] ** 2 + lines0[:, 0] ** 2 + lines0[:, 1] ** 2
    return np.abs(residual) / np.sqrt(np.maximum(norm, 1e-12))


def epipolar_agreement(reference0: np.ndarray, reference1: np.ndarray,
                       keypoints0: np.ndarray, keypoints1: np.ndarray,
                       threshold_px: float = 4.0, min_reference: int = 20) -> float | None:
    """Share of the matches (keypoints0, keypoints1) within `threshold_px` of the epipolar
    geometry fitted (MAGSAC++, 1.5 px) to the reference matches (reference0, reference1).
    None when there are fewer than `min_reference` reference matches, no match to check, or
    no model: nothing to say.

    The reference is the keypoint matcher's result of the same pair: precise when it has a
    few dozen matches (the 56 low-texture pairs of bench/lowtexture.py, tuning and held-out
    photographs, where LightGlue left at least 20: precision 0.84-1.00, median 1.00), even
    where they are too few or too bunched to publish.
    The threshold is loose (4 px, not the fit's 1.5 px) because a geometry fitted to a few
    bunched matches extrapolates poorly: on a close-up whose 32 LightGlue matches sit in one
    region, 51% of the correct SIFT matches were within 2 px, 83% within 4 px; on a repetitive
    surface, 14% of the SIFT matches were within 4 px, and those were its correct ones."""
    r0 = np.asarray(reference0, np.float64).reshape(-1, 2)
    r1 = np.asarray(reference1, np.float64).reshape(-1, 2)
    if len(r0) < max(min_reference, 8) or len(keypoints0) == 0:
        return None
    try:
        fundamental, _ = _reference_fundamental(r0, r1)
    except cv2.error:  # degenerate reference (e.g. all points on a line)
        return None
    return _share_on_epipolar_lines(fundamental, keypoints0, keypoints1, threshold_px)


def _reference_fundamental(reference0: np.ndarray, reference1: np.ndarray
                           ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The reference matches' fundamental matrix (MAGSAC++, 1.5 px) and inlier mask, as
    OpenCV returns them (raises cv2.error on degenerate input)."""
    return cv2.findFundamentalMat(reference0, reference1, cv2.USAC_MAGSAC, 1.5, 0.999, 10000)


def _share_on_epipolar_lines(fundamental: np.ndarray | None, keypoints0: np.ndarray,
                             keypoints1: np.ndarray, threshold_px: float) -> float | None:
    """Share of the matches within `threshold_px` (Sampson) of `fundamental`; None without
    a model."""
    if fundamental is None or fundamental.shape != (3, 3):
        return None
    distances = sampson_distances(fundamental, keypoints0, keypoints1)
    return float(np.mean(distances < threshold_px))


def geometric_agreement(reference0: np.ndarray, reference1: np.ndarray,
                        keypoints0: np.ndarray, keypoints1: np.ndarray,
                        threshold_px: float = 4.0, min_reference: int = 20) -> float | None:
    """Share of the matches (keypoints0, keypoints1) that agree with the geometry of the
    reference matches: within `threshold_px` of the transfer by a homography where one
    explains the reference (its MAGSAC++ inliers at 1.5 px at least HOMOGRAPHY_SHARE of the
    fundamental matrix's: a planar surface, a rotation, or a motion too small for parallax,
    or the dominant plane of a scene), else of its epipolar geometry (`epipolar_agreement`).
    None as there.

    A fundamental matrix cannot see a shift along its epipolar lines, and that is where a
    repetitive surface's period shifts lie when the camera moves along the rows of tiles:
    over consecutive frames of a tiled, low-contrast surface, SIFT's matches one period (165
    px) off agreed with the epipolar geometry of XFeat's correct matches on 3 of 4 frames, and
    with its homography on none. On bench/lowtexture.py's pairs (planar: the homography
    is chosen) the repetitive ones agreed 0.00-0.58, the others 0.84-1.00 but for one close-up
    (bench/results/ambiguity.md)."""
    r0 = np.asarray(reference0, np.float64).reshape(-1, 2)
    r1 = np.asarray(reference1, np.float64).reshape(-1, 2)
    k0 = np.asarray(keypoints0, np.float64).reshape(-1, 2)
    k1 = np.asarray(keypoints1, np.float64).reshape(-1, 2)
    if len(r0) < max(min_reference, 8) or len(k0) == 0:
        return None
    try:
        fundamental, fundamental_mask = _reference_fundamental(r0, r1)
        homography, homography_mask = cv2.findHomography(r0, r1, cv2.USAC_MAGSAC, 1.5)
    except cv2.error:  # degenerate reference (e.g. all points on a line)
        return None
    if homography is None or homography_mask is None or (
            fundamental_mask is not None
            and homography_mask.sum() < HOMOGRAPHY_SHARE * fundamental_mask.sum()):
        # The fundamental matrix fitted above: epipolar_agreement would fit it again.
        return _share_on_epipolar_lines(fundamental, k0, k1, threshold_px)
    transferred = cv2.perspectiveTransform(k0.reshape(-1, 1, 2), homography).reshape(-1, 2)
    return float(np.mean(np.linalg.norm(transferred - k1, axis=1) < threshold_px))


def gradient_tensor(gray: np.ndarray) -> np.ndarray:
    """A frame's mean structure tensor (2 x 2, float64): the mean of g g^T over the image,
    g the gradient at a scale of 1 px (a Gaussian of sigma 1, then Sobel), for `blur_change`.
    Its quadratic form u^T J u is the frame's gradient energy along the unit direction u."""
    image = np.asarray(gray, np.float32)
    smooth = cv2.GaussianBlur(image, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    xy = float(np.mean(gx * gy))
    return np.array([[np.mean(gx * gx), xy], [xy, np.mean(gy * gy)]], np.float64)


@dataclass(frozen=True)
class BlurChange:
    """How a pair's gradient energy changed from frame 0 to frame 1 (see `blur_change`)."""
    anisotropy: float   # largest / smallest factor over directions (>= 1; 1: alike)
    energy: float       # geometric mean of the factors (< 1: frame 1 lost energy)

    def is_motion_blur(self, min_anisotropy: float, min_energy_change: float) -> bool:
        """Motion blur in one frame only: the energy changed unevenly over directions (by a
        ratio over `min_anisotropy`) and overall (by a factor over `min_energy_change`,
        either way)."""
        change = max(self.energy, 1.0 / max(self.energy, 1e-12))
        return self.anisotropy > min_anisotropy and change > min_energy_change


def blur_change(tensor0: np.ndarray, tensor1: np.ndarray,
                linear: np.ndarray | None = None) -> BlurChange:
    """The factors by which a pair's gradient energy changed from frame 0 to frame 1 along
    each direction (the generalised eigenvalues of their gradient tensors), summarised by
    their ratio and their geometric mean. Frame 0's tensor is carried into frame 1 by the
    linear part `linear` (2 x 2, image 0 -> image 1 pixels, e.g. of an affine fitted to the
    pair's matches; gradients transform by its inverse transpose), so that a rotation or a
    shear of the view does not count.

    A contrast change scales every direction alike (ratio 1); motion blur in one frame
    removes energy in every direction but most along the motion. Measured on the camera
    paths of groundtruth.planar over 13 photographs and 3 seeds (bench/lowtexture.py's
    photographs; 12-20 px of motion blur in frames 4-7 of 12):

    | pairs | ratio | geometric mean, either way | both over 1.4 / 1.65 |
    |---|---|---|---|
    | sharp, consecutive | <= 1.26 | <= 1.12 | 0 of 234 |
    | sharp and blurred (either order) | 1.22-5.2, median 2.24 | 1.5-7.1, median 3.25 | 74 of 78 |
    | both blurred, streaks of other lengths and directions | <= 4.2, median 1.4 | <= 1.7, median 1.16 | 1 of 117 |
    | sharp and defocused, flat, foggy or dark (either order) | <= 6.8, median 1.0-1.2 | 2.2-529 | 6-19 of 78 per kind |

    The last row's flagged pairs go to the textureless path, which serves those frames
    anyway once the switch has seen them.
    """
    j0 = np.asarray(tensor0, np.float64)
    if linear is not None:
        inverse = np.linalg.inv(np.asarray(linear, np.float64))
        j0 = inverse.T @ j0 @ inverse
    values, vectors = np.linalg.eigh(j0)
    if values[0] <= 1e-12 * max(values[1], 1e-300):
        return BlurChange(1.0, 1.0)  # no gradient along some direction of frame 0: no measure
    whiten = vectors @ np.diag(values ** -0.5) @ vectors.T
    factors = np.linalg.eigvalsh(whiten @ np.asarray(tensor1, np.float64) @ whiten)
    if factors[1] <= 0:
        return BlurChange(1.0, 1.0)
    low = max(factors[0], 1e-12 * factors[1])
    return BlurChange(float(factors[1] / low), float(np.sqrt(low * factors[1])))


def pair_linear_map(keypoints0: np.ndarray, keypoints1: np.ndarray,
                    min_matches: int = 8) -> np.ndarray | None:
    """The linear part (2 x 2) of an affine map fitted to a pair's matches by least median
    of squares (no threshold to choose, robust to half the matches being wrong), or None
    with fewer than `min_matches` matches or no fit."""
    k0 = np.asarray(keypoints0, np.float64).reshape(-1, 2)
    k1 = np.asarray(keypoints1, np.float64).reshape(-1, 2)
    if len(k0) < max(min_matches, 3):
        return None
    try:
        affine, _ = cv2.estimateAffine2D(k0, k1, method=cv2.LMEDS)
    except cv2.error:  # degenerate input (e.g. all points on a line)
        return None
    if affine is None or abs(np.linalg.det(affine[:, :2])) < 1e-6:
        return None
    return affine[:, :2]
