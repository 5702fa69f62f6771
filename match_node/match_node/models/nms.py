"""Non-maximum suppression on dense score maps, shared by the detectors that use the
SuperPoint-style rule (SuperPoint, ALIKED)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def simple_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Zero every score that is not a local maximum within `radius` (max-norm), with two
    rounds that recover maxima hidden behind suppressed neighbours, as the official code.

    scores: B x H x W or B x C x H x W. Two maxima closer than `radius` survive only if
    their scores tie.
    """
    if radius < 0:
        raise ValueError("nms_radius must be >= 0")

    def max_pool(x: torch.Tensor) -> torch.Tensor:
        # A square max filter is separable: rows then columns, the same maxima at 2k instead
        # of k^2 comparisons. The -inf padding of max_pool2d keeps the image edge neutral.
        k = 2 * radius + 1
        x = F.max_pool2d(x, kernel_size=(1, k), stride=1, padding=(0, radius))
        return F.max_pool2d(x, kernel_size=(k, 1), stride=1, padding=(radius, 0))

    zeros = torch.zeros_like(scores)
    is_max = scores == max_pool(scores)
    for _ in range(2):
        # Points near a kept maximum are out; among the rest, local maxima of what remains
        # are new keypoints (they were only masked by a point that is now suppressed).
        suppressed = max_pool(is_max.float()) > 0
        remaining = torch.where(suppressed, zeros, scores)
        is_max = is_max | ((remaining == max_pool(remaining)) & ~suppressed)
    return torch.where(is_max, scores, zeros)


def local_maxima_above(scores: torch.Tensor, radius: int, threshold: float,
                       rounds: int = 2, candidates: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Row-major flat indices of the pixels of one H x W score map that `simple_nms` keeps
    with a score above `threshold` (> 0): the same pixels, computed on those pixels only.
    With `rounds` 0 (no recovery rounds): the plain rule `x == max_pool(x) & x > threshold`
    (XFeat's). `candidates`: `(scores > threshold).nonzero()` where the caller has it.

    Why it is exact: a pixel q can suppress, or tie with, a pixel p of its window only with a
    score of at least p's (a maximum of a window holds its largest score; a later-round
    maximum is compared with p's score while p is not suppressed, and a suppressed p stays
    suppressed). So whether a pixel above the threshold survives depends only on the other
    pixels above it, and the pixels below never need a max-pool. With ALIKED's threshold
    (0.2) they are ~1% of a real frame: 3 ms instead of 68 for ten full-resolution max-pools
    at 640x480 on 2 CPU threads.
    """
    if threshold <= 0:
        raise ValueError("local_maxima_above needs a threshold above 0 (use simple_nms)")
    h, w = scores.shape
    if candidates is None:
        candidates = (scores > threshold).nonzero()            # M x 2 (y, x), row-major
    padded_w = w + 2 * radius
    centre = (candidates[:, 0] + radius) * padded_w + candidates[:, 1] + radius
    steps = torch.arange(-radius, radius + 1, device=scores.device)
    window = centre[:, None] + (steps[:, None] * padded_w + steps[None, :]).reshape(-1)
    # The map padded with -inf (outside the image nothing counts); in the recovery rounds
    # the same flat layout holds the candidates' state, -inf / False everywhere else.
    padded = F.pad(scores, (radius,) * 4, value=float("-inf")).reshape(-1)
    values = padded[centre]
    is_max = values >= padded[window].max(dim=1).values       # M x (2r+1)^2 windows
    if rounds:
        flags = torch.zeros_like(padded, dtype=torch.bool)
        remaining_map = torch.full_like(padded, float("-inf"))
    for _ in range(rounds):  # simple_nms's two recovery rounds, on the candidates
        flags[centre] = is_max
        suppressed = flags[window].any(dim=1)
        remaining = torch.where(suppressed, torch.zeros_like(values), values)
        remaining_map[centre] = remaining
        is_max = is_max | ((remaining >= remaining_map[window].max(dim=1).values)
                           & ~suppressed)
    kept = candidates[is_max]
    return kept[:, 0] * w + kept[:, 1]
