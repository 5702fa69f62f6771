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
