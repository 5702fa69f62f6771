"""Sub-pixel refinement of matches: where each reference keypoint's patch lands in the current image.

Detectors localise to about a pixel or less (ALIKED's median error here is 0.2 px, XFeat's 1 px)
and every error enters the pose. Refinement keeps the reference keypoint fixed and moves the
current one to where the reference patch aligns best, to a hundredth of a pixel on textured
patches.

Method `patch` (the default, chosen by measurement; see the README and bench/evaluate.py):
  * a local affine map per match, fitted by least squares to its nearest matched neighbours
    (the matches themselves carry the local rotation, scale and shear of the view change);
  * an 11x11 patch of the reference image around the keypoint, compared with the current image
    sampled through that affine map around the current keypoint plus a translation t;
  * Gauss-Newton on t with gain and bias compensation (zero-mean patches, least-squares gain),
    all matches at once with one remap per iteration;
  * a match counts as refined when the last step is below 0.05 px, t stays within `max_shift`
    px of the matched keypoint and the aligned patches correlate (NCC) above `min_ncc`;
    otherwise it keeps its matched position and is flagged as not refined.
Method `lk`: OpenCV's pyramidal Lucas-Kanade seeded with the match, with a forward-backward
check; it models translation only, so it loses accuracy under rotation (measured: homography
AUC@1px 0.74 against 0.81 for `patch` on the evaluation set).

Multiscale (`refine_multiscale`, the textureless paths' matches): on blurred, dark or flat
frames an 11x11 patch holds more noise than structure, the alignment above does not converge,
and a match keeps its detector's position (XFeat's: ~2 px off there). The same alignment on a
Gaussian pyramid, coarsest level first, sees wider patches with the noise averaged out; each
finer level takes over a match only where it places it with a smaller standard error, and the
full-resolution alignment from the matched position wins where its standard error is smaller
still (sharp detail). A keypoint matcher's matches get it on a motion-blurred frame only
(`refine_keypoint_matches`: where `refine_patch` finds many of them off).

Coordinates: pixels of the original images, pixel centres at integers (as OpenCV's remap).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

REFINE_METHODS = ("none", "patch", "lk")
# refine_multiscale's matches found off: standard error of the position above this (px).
# Dropping them (with those no level moved) took the SIFT path's precision from 0.991 to 0.994
# and the XFeat fallback's from 0.845 to 0.854 (bench/results/textureless_refinement.md).
MULTISCALE_OFF_STDERR_PX = 1.0
# refine_keypoint_matches on a blurred frame: a match the full-resolution alignment places
# with a standard error up to this (px) keeps that position; the others are aligned coarse
# to fine. Chosen among 0.05, 0.1 and 0.2 on 24 held-out motion-blurred pairs (severity 1,
# 1.5, 2): 0.1 and 0.2 lost 0.01-0.03 AUC@3px against 0.05.
PRECISE_STDERR_PX = 0.05
# ... and a frame counts as blurred where refine_patch finds this share of the matches off
# (see refine_keypoint_matches).
BLURRED_OFF_SHARE = 0.15
FULL_RESOLUTION_SHIFT = 2.0  # px: refine_patch's search range (refine_matches' max_shift)
REFINE_MIN_NCC = 0.8  # refine_patch: aligned patches correlating less are not refined


def to_gray(image: np.ndarray) -> np.ndarray:
    """Gray float32 in [0, 1] from an HxW or HxWx{3,4} image of uint8, uint16 or float."""
    if image.ndim == 3:
        image = image[..., :3]
        weights = np.array([0.299, 0.587, 0.114], np.float32)  # RGB, ITU-R 601
        gray = image.astype(np.float32) @ weights
    else:
        gray = image.astype(np.float32)
    if image.dtype == np.uint8:
        gray /= 255.0
    elif image.dtype == np.uint16:
        gray /= 65535.0
    return np.ascontiguousarray(gray)


def singular_values_2x2(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(smallest, largest) singular values of N x 2 x 2 matrices in closed form (a batched
    SVD of tiny matrices costs 30x more): with m = [[a, b], [c, d]], they are
    |q - r| and q + r for q = |((a + d) / 2, (c - b) / 2)| and r = |((a - d) / 2, (c + b) / 2)|."""
    a, b = matrices[:, 0, 0], matrices[:, 0, 1]
    c, d = matrices[:, 1, 0], matrices[:, 1, 1]
    q = np.hypot((a + d) / 2, (c - b) / 2)
    r = np.hypot((a - d) / 2, (c + b) / 2)
    return np.abs(q - r), q + r


def local_affines(keypoints0: np.ndarray, keypoints1: np.ndarray,
                  neighbours: int = 10) -> np.ndarray:
    """Per match, the 2x2 linear part of the affine map fitted to its `neighbours` nearest
    matches (in image 0, itself included). Identity where the fit is degenerate or implausible
    (singular values outside 0.5..2: the neighbours disagree, e.g. across an outlier)."""
    n = len(keypoints0)
    affines = np.tile(np.eye(2, dtype=np.float32), (n, 1, 1))
    if n < 4:
        return affines
    k = min(neighbours, n)
    # dx^2 + dy^2 per coordinate: the same numbers as summing a K x K x 2 array over its
    # last axis, 15x faster (that reduction over a length-2 axis dominated the fit).
    points = torch.from_numpy(np.ascontiguousarray(keypoints0, np.float32))
    squared = ((points[:, None, 0] - points[None, :, 0]) ** 2
               + (points[:, None, 1] - points[None, :, 1]) ** 2)
    # The k smallest per row, unordered (torch's top-k: 2x faster than np.argpartition here).
    nearest = squared.topk(k, dim=1, largest=False, sorted=False).indices.numpy()
    x = np.concatenate([keypoints0[nearest] - keypoints0[:, None],
                        np.ones((n, k, 1), np.float32)], -1)         # n x k x 3
    y = keypoints1[nearest] - keypoints1[:, None]                     # n x k x 2
    # Normal equations, lightly regularised so collinear neighbours do not blow up.
    xtx = np.einsum("nki,nkj->nij", x, x) + 1e-3 * np.eye(3, dtype=np.float32)
    xty = np.einsum("nki,nkj->nij", x, y)
    linear = np.transpose(np.linalg.solve(xtx, xty)[:, :2], (0, 2, 1))
    smallest, largest = singular_values_2x2(linear)
    plausible = (smallest > 0.5) & (largest < 2.0)
    affines[plausible] = linear[plausible]
    return affines


def _sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of an HxW(xC) float image at N x M x 2 points (x, y)."""
    return cv2.remap(image, points[..., 0].astype(np.float32), points[..., 1].astype(np.float32),
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@dataclass
class PatchAlignment:
    """Per match, where the affine-aware patch alignment left it (see `align_patches`)."""
    shift: np.ndarray    # K x 2: translation of the current keypoint (px of the images given)
    step: np.ndarray     # K: the last Gauss-Newton step (inf: never stepped)
    ncc: np.ndarray      # K: normalised cross-correlation of the aligned patches
    stderr: np.ndarray   # K: standard error of the translation along its worst direction (px)


def align_patches(gray0: np.ndarray, gray1: np.ndarray, keypoints0: np.ndarray,
                  keypoints1: np.ndarray, radius: int = 5, max_iterations: int = 12,
                  max_shift: float = 2.0, neighbours: int = 10) -> PatchAlignment:
    """The Gauss-Newton alignment of the module doc, without deciding what to keep: each
    reference patch (side 2 `radius` + 1) against the current image through its match's
    local affine, translation only, gain and bias compensated. A match stops iterating when
    its step is below 0.01 px or it went `max_shift` + 1 px away.

    The standard error is the residual's variance (per pixel, after gain and bias) times the
    inverse of the alignment's normal matrix, along its worse axis: small where the patch
    has structure in both directions well above the noise, large on a smooth ramp or an
    edge, whose position along itself the patch cannot tell (however well it correlates)."""
    k0 = np.asarray(keypoints0, np.float32).reshape(-1, 2)
    k1 = np.asarray(keypoints1, np.float32).reshape(-1, 2)
    grad_x = cv2.Sobel(gray1, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    grad_y = cv2.Sobel(gray1, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    stacked = np.ascontiguousarray(np.dstack([gray1, grad_x, grad_y]))  # one remap for all three
    steps = np.arange(-radius, radius + 1, dtype=np.float32)
    offsets = np.stack(np.meshgrid(steps, steps), -1).reshape(-1, 2)  # M x 2
    template = _sample(gray0, k0[:, None] + offsets[None])            # K x M
    template = template - template.mean(1, keepdims=True)
    # K x M x 2: each match's affine applied to the patch offsets (a batched matmul; the
    # equivalent einsum took 11 ms of the ~70 for 900 matches).
    warped = offsets @ local_affines(k0, k1, neighbours).transpose(0, 2, 1)

    def linearise(index: np.ndarray, shift: np.ndarray):
        samples = _sample(stacked, k1[index, None] + shift[:, None] + warped[index])
        patch, gx, gy = (samples[..., c] - samples[..., c].mean(1, keepdims=True)
                         for c in range(3))
        # Gain compensation: the best scale of the current patch onto the template.
        gain = (template[index] * patch).sum(1) / np.maximum((patch * patch).sum(1), 1e-9)
        residual = gain[:, None] * patch - template[index]
        jx, jy = gain[:, None] * gx, gain[:, None] * gy
        normal = ((jx * jx).sum(1), (jx * jy).sum(1), (jy * jy).sum(1))
        return patch, residual, jx, jy, normal

    shift = np.zeros_like(k1)
    step = np.full(len(k1), np.inf, np.float32)
    active = np.ones(len(k1), bool)
    for _ in range(max_iterations):
        index = np.flatnonzero(active)
        if len(index) == 0:
            break
        _, residual, jx, jy, (a, b, c) = linearise(index, shift[index])
        rx, ry = (jx * residual).sum(1), (jy * residual).sum(1)
        det = a * c - b * b
        solvable = det > 1e-12
        dx = np.where(solvable, -(c * rx - b * ry) / np.where(solvable, det, 1), 0.0)
        dy = np.where(solvable, -(a * ry - b * rx) / np.where(solvable, det, 1), 0.0)
        delta = np.clip(np.stack([dx, dy], -1), -1.0, 1.0).astype(np.float32)
        shift[index] += delta
        step[index] = np.abs(delta).max(1)
        active[index] = solvable & (step[index] >= 0.01) & (np.abs(shift[index]).max(1) < max_shift + 1)
    patch, residual, _, _, (a, b, c) = linearise(np.arange(len(k1)), shift)
    ncc = (template * patch).sum(1) / np.sqrt(np.maximum(
        (template * template).sum(1) * (patch * patch).sum(1), 1e-18))
    # Degrees of freedom: the translation, the gain and the two means.
    variance = (residual * residual).sum(1) / max(residual.shape[1] - 4, 1)
    smallest = (a + c) / 2 - np.sqrt(((a - c) / 2) ** 2 + b * b)
    stderr = np.sqrt(variance / np.maximum(smallest, 1e-18))
    return PatchAlignment(shift, step, ncc.astype(np.float32), stderr.astype(np.float32))


def refine_patch(gray0: np.ndarray, gray1: np.ndarray, keypoints0: np.ndarray,
                 keypoints1: np.ndarray, radius: int = 5, max_iterations: int = 12,
                 max_shift: float = 2.0, min_ncc: float = REFINE_MIN_NCC,
                 neighbours: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine-aware patch alignment (see the module doc). Returns the refined current
    keypoints (K x 2; unrefined ones unchanged), the mask of refined matches and the mask of
    matches found off: the alignment moved them `max_shift` px or more (see refine_matches)."""
    k1 = np.asarray(keypoints1, np.float32).reshape(-1, 2)
    if len(k1) == 0:
        return k1.copy(), np.zeros(0, bool), np.zeros(0, bool)
    aligned = align_patches(gray0, gray1, keypoints0, k1, radius, max_iterations, max_shift,
                            neighbours)
    return _patch_verdict(aligned, k1, max_shift, min_ncc)


def _patch_verdict(aligned: PatchAlignment, keypoints1: np.ndarray, max_shift: float,
                   min_ncc: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """refine_patch's result from its alignment: (keypoints, refined, off)."""
    refined = _converged(aligned, max_shift, min_ncc)
    out = keypoints1.copy()
    out[refined] += aligned.shift[refined]
    return out, refined, np.linalg.norm(aligned.shift, axis=1) >= max_shift


def refine_lk(gray0: np.ndarray, gray1: np.ndarray, keypoints0: np.ndarray,
              keypoints1: np.ndarray, radius: int = 5, levels: int = 0,
              max_shift: float = 2.0, max_fb_error: float = 0.5
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pyramidal Lucas-Kanade from image 0 to 1 seeded with the match, kept where tracking
    back lands within `max_fb_error` px of the reference keypoint. Also returns the matches
    found off: tracked there and back consistently, but `max_shift` px or more away."""
    k0 = np.asarray(keypoints0, np.float32).reshape(-1, 1, 2)
    k1 = np.asarray(keypoints1, np.float32).reshape(-1, 1, 2)
    if len(k0) == 0:
        return k1.reshape(-1, 2).copy(), np.zeros(0, bool), np.zeros(0, bool)
    g0, g1 = (np.clip(g * 255.0, 0, 255).astype(np.uint8) for g in (gray0, gray1))
    window = (2 * radius + 1, 2 * radius + 1)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    forward, status_f, _ = cv2.calcOpticalFlowPyrLK(
        g0, g1, k0, k1.copy(), winSize=window, maxLevel=levels, criteria=criteria,
        flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
    backward, status_b, _ = cv2.calcOpticalFlowPyrLK(
        g1, g0, forward, k0.copy(), winSize=window, maxLevel=levels, criteria=criteria,
        flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
    forward, backward = forward.reshape(-1, 2), backward.reshape(-1, 2)
    k0, k1 = k0.reshape(-1, 2), k1.reshape(-1, 2)
    consistent = ((status_f[:, 0] == 1) & (status_b[:, 0] == 1)
                  & (np.linalg.norm(backward - k0, axis=1) < max_fb_error))
    near = np.linalg.norm(forward - k1, axis=1) < max_shift
    refined = consistent & near
    out = k1.copy()
    out[refined] = forward[refined]
    return out, refined, consistent & ~near


def refine_multiscale(gray0: np.ndarray, gray1: np.ndarray, keypoints0: np.ndarray,
                      keypoints1: np.ndarray, levels: int = 2, radius: int = 7,
                      max_shift: float = 3.0, min_ncc: float = 0.5,
                      full_resolution: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Coarse-to-fine alignment of the current keypoints (see the module doc), each match
    placed where the alignment knows its position best:

      * the chain: `align_patches` on Gaussian pyramid levels `levels`..0 (cv2.pyrDown:
        level L's pixel x is pixel 2^L x of the image), each level starting where the
        coarser ones left a match, and moving it only where its alignment converged within
        `max_shift` px of that level, with NCC above `min_ncc`, and with a smaller standard
        error (in image px) than the level that placed it so far: on a blurred or noisy frame
        full resolution's small patch sees a smooth ramp plus noise and would trade a good
        coarse position for a worse one;
      * full resolution alone from the matched position (refine_patch's 11x11 patch and 2 px
        range), where its standard error is no larger than the chain's: on sharp detail a
        coarse level can pull a right match onto the wrong one of two similar structures,
        and no finer level starting there finds its way back (`full_resolution=False`: the
        chain alone, for bench/textureless_refinement.py's comparison).

    Measured on the SIFT path's matches (bench/results/textureless_refinement.md), AUC@1px
    of the homography: 19 sharp pairs, full resolution only 0.966, the chain 0.921, both
    0.969; 133 low-texture pairs 0.601, 0.680, 0.728 (the XFeat fallback's 29: 0.020, 0.221,
    0.223). Returns the keypoints (K x 2) and each match's standard error (px; inf: nothing
    moved it)."""
    k0 = np.asarray(keypoints0, np.float32).reshape(-1, 2)
    k1 = np.asarray(keypoints1, np.float32).reshape(-1, 2)
    chain = k1.copy()
    stderr = np.full(len(k0), np.inf, np.float32)
    if len(k0) == 0:
        return chain, stderr
    pyramid0, pyramid1 = [gray0], [gray1]
    for _ in range(levels):
        pyramid0.append(cv2.pyrDown(pyramid0[-1]))
        pyramid1.append(cv2.pyrDown(pyramid1[-1]))
    for level in range(levels, -1, -1):
        scale = float(2 ** level)
        aligned = align_patches(pyramid0[level], pyramid1[level], k0 / scale, chain / scale,
                                radius=radius, max_shift=max_shift)
        level_stderr = aligned.stderr * scale
        better = (_converged(aligned, max_shift, min_ncc) & (level_stderr < stderr))
        chain[better] += aligned.shift[better] * scale
        stderr[better] = level_stderr[better]
    if not full_resolution:
        return chain, stderr
    full = align_patches(gray0, gray1, k0, k1, max_shift=FULL_RESOLUTION_SHIFT)
    full_stderr = np.where(_converged(full, FULL_RESOLUTION_SHIFT, min_ncc), full.stderr, np.inf)
    direct = np.isfinite(full_stderr) & (full_stderr <= stderr)
    chain[direct] = k1[direct] + full.shift[direct]
    stderr[direct] = full_stderr[direct]
    return chain, stderr


def refine_keypoint_matches(gray0: np.ndarray, gray1: np.ndarray, keypoints0: np.ndarray,
                            keypoints1: np.ndarray, levels: int = 2,
                            blurred_share: float = BLURRED_OFF_SHARE
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """A keypoint matcher's matches (ALIKED, DISK, SuperPoint) with `refine: patch`:
    refine_patch, unless it finds `blurred_share` of them or more off. On a motion-blurred
    frame the detector places keypoints several px along the blur and the full-resolution
    patch, which sees a ramp along it, converges there or walks off: then the matches it
    does not place to within PRECISE_STDERR_PX (standard error) are aligned coarse to fine
    (refine_multiscale, `levels` pyramid levels), found off where that leaves them above
    MULTISCALE_OFF_STDERR_PX.

    Why only then: on sharp real frames the coarse levels' wide patches straddle depth
    edges, and the consecutive-frame pose of the Middlebury sequence (bench/pose.py) got
    worse with them on every frame (AUC@5deg 0.806 -> 0.715), though on planar pairs they
    help. refine_patch finds up to 8% of the matches off on the sharp pairs measured
    (textured evaluation pairs, repetitive surfaces, Middlebury: 3%), 10-40% on most
    motion-blurred ones. Measured on the ALIKED + LightGlue matches of held-out motion-blurred
    pairs, see bench/refinement.py.

    Returns (keypoints, refined, off, whether the coarse alignment ran)."""
    k0 = np.asarray(keypoints0, np.float32).reshape(-1, 2)
    k1 = np.asarray(keypoints1, np.float32).reshape(-1, 2)
    if len(k0) == 0:
        return k1.copy(), np.zeros(0, bool), np.zeros(0, bool), False
    full = align_patches(gray0, gray1, k0, k1, max_shift=FULL_RESOLUTION_SHIFT)
    points, refined, off = _patch_verdict(full, k1, FULL_RESOLUTION_SHIFT, REFINE_MIN_NCC)
    if levels <= 0 or off.mean() < blurred_share:
        return points, refined, off, False
    precise = refined & (full.stderr <= PRECISE_STDERR_PX)
    stderr = np.where(precise, full.stderr, np.inf).astype(np.float32)
    points = np.where(precise[:, None], points, k1)
    rest = np.flatnonzero(~precise)
    if len(rest):
        points[rest], stderr[rest] = refine_multiscale(gray0, gray1, k0[rest], k1[rest],
                                                       levels=levels)
    return (points, *multiscale_verdict(stderr), True)


def multiscale_verdict(stderr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The refined and off masks of a coarse-to-fine alignment from its standard errors
    (refine_multiscale): refined where a step moved the match (finite), off where none did or
    the standard error is above MULTISCALE_OFF_STDERR_PX."""
    refined = np.isfinite(stderr)
    return refined, ~(refined & (stderr <= MULTISCALE_OFF_STDERR_PX))


def _converged(aligned: PatchAlignment, max_shift: float, min_ncc: float) -> np.ndarray:
    """Matches whose alignment converged (last step under 0.05 px) within `max_shift` px,
    with the aligned patches correlating above `min_ncc`."""
    return ((aligned.step < 0.05) & (np.linalg.norm(aligned.shift, axis=1) < max_shift)
            & (aligned.ncc > min_ncc))


def refine_matches(method: str, gray0: np.ndarray, gray1: np.ndarray, keypoints0: np.ndarray,
                   keypoints1: np.ndarray, max_shift: float = 2.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine the current keypoints of matches with `method` ('patch' or 'lk'): the refined
    keypoints, the refined mask and the off mask (matches the refinement places `max_shift`
    px or more from where they were matched: measured on real pairs, such matches are off by
    ~2.5 px, median, where refined ones are off by 0.05 px)."""
    if method == "patch":
        return refine_patch(gray0, gray1, keypoints0, keypoints1, max_shift=max_shift)
    if method == "lk":
        return refine_lk(gray0, gray1, keypoints0, keypoints1, max_shift=max_shift)
    raise ValueError(f"unknown refinement method {method!r}; choose from {REFINE_METHODS}")
