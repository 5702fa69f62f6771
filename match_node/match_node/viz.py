"""Drawing matches: two images side by side with a line per match, coloured by confidence."""
from __future__ import annotations

import cv2
import numpy as np


def _to_bgr(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)


def draw_matches(image0: np.ndarray, image1: np.ndarray, keypoints0: np.ndarray,
                 keypoints1: np.ndarray, scores: np.ndarray | None = None,
                 title: str | None = None, max_lines: int = 400) -> np.ndarray:
    """Return a BGR picture of the two images with match lines (red = low, green = high)."""
    left, right = _to_bgr(image0), _to_bgr(image1)
    height = max(left.shape[0], right.shape[0])
    gap = 8
    canvas = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    canvas[:left.shape[0], :left.shape[1]] = left
    offset = left.shape[1] + gap
    canvas[:right.shape[0], offset:] = right
    count = len(keypoints0)
    order = np.arange(count)
    if count > max_lines:  # keep the picture readable: draw the most confident matches
        order = np.argsort(-scores)[:max_lines] if scores is not None else order[:max_lines]
    for i in order:
        s = 1.0 if scores is None else float(np.clip(scores[i], 0, 1))
        colour = (0, int(255 * s), int(255 * (1 - s)))
        p0 = tuple(int(round(v)) for v in keypoints0[i])
        p1 = (int(round(keypoints1[i][0])) + offset, int(round(keypoints1[i][1])))
        cv2.line(canvas, p0, p1, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, p0, 2, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, p1, 2, colour, -1, cv2.LINE_AA)
    if title:
        cv2.putText(canvas, title, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, title, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas
