"""Real-image sequences with exact ground truth, for the demo, the tests and evaluation.

A virtual camera moves smoothly over a real photograph (a planar scene): frame t is the photo
warped by a known homography H_t, so the true correspondence between any two frames is
H_b @ inv(H_a) (the HPatches protocol). Every frame stays inside the photo: no black borders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import cv2
import numpy as np

CORRECT_PX = 3.0  # a match is correct within this reprojection error (the HPatches threshold)


def load_photo(name: str = "coffee") -> np.ndarray:
    """An RGB photograph shipped with scikit-image (coffee, astronaut, chelsea, rocket, ...)."""
    from skimage import data  # imported lazily: only the demo, tests and tools need it

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def _camera_homography(centre: np.ndarray, angle: float, zoom: float,
                       size: tuple[int, int]) -> np.ndarray:
    """Photo -> frame: the photo point `centre` lands on the frame centre, rotated by `angle`
    (radians) and scaled by `zoom` frame pixels per photo pixel. Pixel centres at integers."""
    w, h = size
    c, s = np.cos(angle), np.sin(angle)
    to_origin = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]], float)
    rotate_scale = np.array([[zoom * c, -zoom * s, 0], [zoom * s, zoom * c, 0], [0, 0, 1]], float)
    to_frame = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]], float)
    return to_frame @ rotate_scale @ to_origin


def _inside(photo_size: tuple[int, int], homography: np.ndarray, size: tuple[int, int]) -> bool:
    w, h = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], float).T
    src = np.linalg.inv(homography) @ corners
    src = src[:2] / src[2]
    pw, ph = photo_size
    return bool((src[0] >= 0).all() and (src[0] <= pw - 1).all()
                and (src[1] >= 0).all() and (src[1] <= ph - 1).all())


@dataclass
class Sequence:
    frames: list[np.ndarray]          # RGB uint8 frames
    homographies: list[np.ndarray]    # photo -> frame t

    def relative(self, a: int, b: int) -> np.ndarray:
        """Homography mapping pixels of frame a to frame b."""
        return self.homographies[b] @ np.linalg.inv(self.homographies[a])


def make_sequence(photo: np.ndarray | str = "coffee", num_frames: int = 10,
                  size: tuple[int, int] = (640, 480), step: float = 6.0,
                  rotation_deg: float = 1.0, seed: int = 0) -> Sequence:
    """A smooth camera path over `photo`: about `step` frame pixels of motion and up to
    `rotation_deg` of roll per frame, with a slowly varying zoom; frames of `size` (w, h)."""
    if isinstance(photo, str):
        photo = load_photo(photo)
    ph, pw = photo.shape[:2]
    w, h = size
    rng = np.random.default_rng(seed)
    # Smallest zoom that fits the frame inside the photo with room to move.
    base_zoom = max(w / (pw * 0.8), h / (ph * 0.8))
    centre = np.array([(pw - 1) / 2, (ph - 1) / 2], float)
    angle, zoom = 0.0, base_zoom * 1.05
    heading = rng.uniform(0, 2 * np.pi)
    frames, homographies = [], []
    for _ in range(num_frames):
        for _attempt in range(50):
            homography = _camera_homography(centre, angle, zoom, size)
            if _inside((pw, ph), homography, size):
                break
            # Pull back towards the photo centre and to a safer zoom until the frame fits.
            centre = centre + 0.2 * (np.array([(pw - 1) / 2, (ph - 1) / 2]) - centre)
            zoom = zoom * 1.02
            angle *= 0.8
        else:
            raise ValueError(f"a {w}x{h} frame does not fit inside a {pw}x{ph} photo")
        homographies.append(homography)
        frames.append(cv2.warpPerspective(photo, homography, (w, h), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REFLECT))
        heading += rng.normal(0, 0.4)
        centre = centre + (step / zoom) * np.array([np.cos(heading), np.sin(heading)])
        angle += np.deg2rad(rotation_deg) * rng.uniform(-1, 1)
        zoom *= float(np.exp(rng.normal(0, 0.01)))
    return Sequence(frames, homographies)


def reprojection_errors(homography: np.ndarray, keypoints0: np.ndarray,
                        keypoints1: np.ndarray) -> np.ndarray:
    """Distance in pixels between H @ keypoints0 and keypoints1 (pixel centres at integers)."""
    if len(keypoints0) == 0:
        return np.zeros(0)
    points = np.concatenate([keypoints0, np.ones((len(keypoints0), 1))], 1) @ homography.T
    projected = points[:, :2] / points[:, 2:3]
    return np.linalg.norm(projected - keypoints1, axis=1)


class Stream(Protocol):
    """What `replay` drives: the engine's SequentialMatcher (push returns an event with the
    frame's `result`, None for the first frame, and `tracks_reset`)."""

    def push(self, image: np.ndarray, stamp: Any) -> Any: ...


@dataclass
class Published:
    """One message of a replayed stream, scored against the sequence's homographies."""
    frame: int              # index of the current frame (the reference is frame - 1)
    result: Any             # the engine's MatchResult
    tracks_reset: bool
    errors: np.ndarray      # per match: reprojection error (px) under the true homography

    @property
    def path(self) -> str:
        """The extractor and matcher that produced it, as `extractor+matcher`."""
        return f"{self.result.extractor}+{self.result.matcher}"

    @property
    def correct(self) -> int:
        return int(np.count_nonzero(self.errors < CORRECT_PX))

    @property
    def precision(self) -> float:
        """Share of correct matches (0 for an empty message)."""
        return self.correct / len(self.errors) if len(self.errors) else 0.0


def replay(stream: Stream, frames: Iterable[np.ndarray], sequence: Sequence) -> list[Published]:
    """Push `frames` (the sequence's frames, possibly degraded) into `stream` with stamps
    0, 1, ... and score every published result against `sequence`'s true homographies."""
    published = []
    for t, frame in enumerate(frames):
        event = stream.push(frame, t)
        if event.result is None:
            continue
        result = event.result
        errors = reprojection_errors(sequence.relative(t - 1, t),
                                     np.asarray(result.keypoints0, np.float64),
                                     np.asarray(result.keypoints1, np.float64))
        published.append(Published(t, result, bool(event.tracks_reset), errors))
    return published


LOW_TEXTURE_KINDS = ("blur", "low_contrast", "fog", "uniform")


def low_texture(image: np.ndarray, kind: str) -> np.ndarray:
    """A low-texture version of a real photograph, as cameras see walls, fog or motion blur.

    blur: strong Gaussian blur; low_contrast: 8% of the original contrast; fog: 85% blended
    towards light grey; uniform: everything outside a central sixth of the frame replaced by
    its mean colour (a large blank wall with one textured patch). Geometry is unchanged, so the
    ground truth of the original still holds.
    """
    img = image.astype(np.float32)
    if kind == "blur":
        out = cv2.GaussianBlur(img, (0, 0), sigmaX=6.0)
    elif kind == "low_contrast":
        mean = img.mean(axis=(0, 1), keepdims=True)
        out = mean + 0.08 * (img - mean)
    elif kind == "fog":
        out = 0.15 * img + 0.85 * 200.0
    elif kind == "uniform":
        h, w = img.shape[:2]
        out = np.empty_like(img)
        out[...] = img.mean(axis=(0, 1), keepdims=True)
        y0, x0 = int(h * 0.4), int(w * 0.4)
        out[y0:y0 + h // 6, x0:x0 + w // 6] = img[y0:y0 + h // 6, x0:x0 + w // 6]
    else:
        raise ValueError(f"unknown low-texture kind {kind!r}; choose from {LOW_TEXTURE_KINDS}")
    return np.clip(out, 0, 255).astype(np.uint8)
