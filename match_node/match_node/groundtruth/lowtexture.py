"""Low-texture image pairs with exact homographies, generated from real photographs.

Cameras on robots see blank walls, fog, night, defocus and motion blur; a detector-based
matcher starves there. This module renders such pairs deterministically from photographs that
ship with scikit-image, for evaluation (bench/lowtexture.py) and tests:

  * the scene is a real photograph (a plane), possibly turned into a low-texture surface first
    (scene kinds: a blank wall with one textured patch, a repetitive surface, a close-up);
  * two views of it are rendered with known photo-to-frame homographies H0 and H1 that keep
    every frame inside the photo (no borders, no reflected content), so the true
    correspondence of the pair is exactly H = H1 @ inv(H0) (pixel centres at integers);
  * then the camera degrades each frame independently (frame kinds: defocus blur, low
    contrast, fog, darkness with sensor noise, motion blur), with its own random draw per
    frame. Every frame-space degradation is a symmetric filter or a per-pixel map, so it
    moves no point: the homography stays exact.

    pair = make_pair("coffee", "fog", seed=0, size=(640, 480))
    pair.image0, pair.image1, pair.homography   # image0 pixel -> image1 pixel

`severity` (default 1, the sets everything was measured on) scales a frame kind's degradation
on the same views and draws, to find where a method breaks (bench/lowtexture.py --severity).
Everything is a function of (photo, kind, seed, size, severity): the same arguments give the
same bytes.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from .planar import load_photo

# Frame kinds degrade each rendered frame; scene kinds change the surface before rendering.
FRAME_KINDS = ("blur", "low_contrast", "blur_low_contrast", "fog", "dark", "motion_blur")
SCENE_KINDS = ("wall_patch", "repetitive", "closeup")
KINDS = FRAME_KINDS + SCENE_KINDS
ALL_KINDS = ("original",) + KINDS  # "original": the photo as it is (a textured control)

# Photographs of scikit-image that load offline, split so that mechanisms and thresholds can
# be chosen on one group and checked on the other.
TUNING_PHOTOS = ("coffee", "astronaut", "rocket", "brick", "camera")
HELD_OUT_PHOTOS = ("chelsea", "motorcycle", "gravel", "coins", "immunohistochemistry",
                   "hubble_deep_field", "grass", "clock")
# Smooth photographs added later as a broader check (a lunar surface, a retina, a cell):
# they showed the XFeat fallback's ~2 px error and chose refine_coarse_levels with the held-out
# pairs, so they are no longer held out.
SMOOTH_PHOTOS = ("moon", "retina", "cell")


@dataclass
class Pair:
    image0: np.ndarray        # uint8, HxWx3 RGB (gray photographs are repeated to 3 channels)
    image1: np.ndarray
    homography: np.ndarray    # 3x3, image0 pixel -> image1 pixel (pixel centres at integers)
    photo: str
    kind: str
    seed: int
    severity: float = 1.0     # see degrade

    @property
    def id(self) -> str:
        kind = self.kind if self.severity == 1.0 else f"{self.kind}@{self.severity:g}"
        return f"{self.photo}/{kind}/{self.seed}"


def _rng(*keys: object) -> np.random.Generator:
    """A generator seeded by names and numbers, the same in every process (no hash salt)."""
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


def camera_homography(centre: np.ndarray, angle: float, zoom: float, tilt: np.ndarray,
                      size: tuple[int, int]) -> np.ndarray:
    """Photo -> frame: the photo point `centre` lands on the frame centre, rotated by `angle`
    (radians), scaled by `zoom` frame pixels per photo pixel, with a perspective `tilt`
    (2-vector, per frame pixel from the centre). Pixel centres at integers."""
    w, h = size
    c, s = np.cos(angle), np.sin(angle)
    to_origin = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]], float)
    rotate = np.array([[zoom * c, -zoom * s, 0], [zoom * s, zoom * c, 0], [0, 0, 1]], float)
    perspective = np.array([[1, 0, 0], [0, 1, 0], [tilt[0], tilt[1], 1]], float)
    to_frame = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]], float)
    return to_frame @ perspective @ rotate @ to_origin


def inside(photo_size: tuple[int, int], homography: np.ndarray, size: tuple[int, int],
           margin: float = 2.0) -> bool:
    """Whether the whole frame of `size` maps inside the photo (with `margin` photo pixels)."""
    w, h = size
    xs, ys = np.meshgrid(np.linspace(0, w - 1, 9), np.linspace(0, h - 1, 9))
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    src = np.linalg.inv(homography) @ points
    if np.any(src[2] <= 0):
        return False
    src = src[:2] / src[2]
    pw, ph = photo_size
    return bool((src[0] >= margin).all() and (src[0] <= pw - 1 - margin).all()
                and (src[1] >= margin).all() and (src[1] <= ph - 1 - margin).all())


def render(photo: np.ndarray, homography: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The frame of `size` seen through `homography` (photo -> frame), bilinear."""
    return cv2.warpPerspective(photo, homography, size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)


def view_pair(photo_size: tuple[int, int], size: tuple[int, int], rng: np.random.Generator,
              zoom_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Two camera homographies (photo -> frame) of a moderate viewpoint change: 15-45 px of
    translation, up to 12 degrees of roll, 0.88-1.12 scale and a perspective tilt, both frames
    inside the photo. `zoom_factor` > 1 moves the camera closer (a close-up)."""
    pw, ph = photo_size
    w, h = size
    fit = max(w / pw, h / ph)  # zoom at which the frame just covers the photo
    for _attempt in range(200):
        zoom0 = fit * zoom_factor * rng.uniform(1.35, 1.6)
        angle0 = np.deg2rad(rng.uniform(-5, 5))
        tilt0 = rng.uniform(-1.5e-4, 1.5e-4, 2)
        room = np.array([pw, ph]) * 0.5 - 0.5 * np.array([w, h]) / zoom0 * 1.1
        if np.any(room <= 0):
            continue
        centre0 = np.array([(pw - 1) / 2, (ph - 1) / 2]) + rng.uniform(-1, 1, 2) * room * 0.5
        h0 = camera_homography(centre0, angle0, zoom0, tilt0, size)
        heading = rng.uniform(0, 2 * np.pi)
        shift = rng.uniform(15, 45) * np.array([np.cos(heading), np.sin(heading)])
        centre1 = centre0 + shift / zoom0
        zoom1 = zoom0 * rng.uniform(0.88, 1.12)
        angle1 = angle0 + np.deg2rad(rng.uniform(-12, 12))
        tilt1 = tilt0 + rng.uniform(-2.5e-4, 2.5e-4, 2)
        h1 = camera_homography(centre1, angle1, zoom1, tilt1, size)
        if inside(photo_size, h0, size) and inside(photo_size, h1, size):
            return h0, h1
    raise ValueError(f"no view pair of {w}x{h} fits inside a {pw}x{ph} photo")


# --- scene kinds: the surface itself has little texture --------------------------------------
def wall_with_patch(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A blank wall: the photo's own shading at a very low frequency (a smooth real surface),
    keeping the original detail in one patch of a fifth of the photo's sides, near the middle
    so that both views see it."""
    ph, pw = photo.shape[:2]
    sigma = max(pw, ph) / 12
    wall = cv2.GaussianBlur(photo.astype(np.float32), (0, 0), sigmaX=sigma)
    pw5, ph5 = pw // 5, ph // 5
    x0 = int(pw * rng.uniform(0.38, 0.45))
    y0 = int(ph * rng.uniform(0.38, 0.45))
    out = wall.copy()
    out[y0:y0 + ph5, x0:x0 + pw5] = photo[y0:y0 + ph5, x0:x0 + pw5]
    return out


def repetitive(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A repetitive surface (tiles, bricks, a façade): one tile cut from the photo repeated
    over the plane, shaded by the photo's own smooth illumination. Its period is 1/6 to 1/4
    of the photo, so the view change of `view_pair` stays below half a period."""
    ph, pw = photo.shape[:2]
    tw = int(pw * rng.uniform(1 / 6, 1 / 4))
    th = int(ph * rng.uniform(1 / 6, 1 / 4))
    x0, y0 = int(rng.uniform(0, pw - tw)), int(rng.uniform(0, ph - th))
    tile = photo[y0:y0 + th, x0:x0 + tw].astype(np.float32)
    reps = (ph // th + 1, pw // tw + 1) + (1,) * (photo.ndim - 2)
    tiled = np.tile(tile, reps)[:ph, :pw]
    gray = photo.astype(np.float32).mean(axis=-1) if photo.ndim == 3 else photo.astype(np.float32)
    shading = cv2.GaussianBlur(gray, (0, 0), sigmaX=max(pw, ph) / 6)
    shading = 0.6 + 0.4 * shading / max(float(shading.mean()), 1e-3)
    if photo.ndim == 3:
        shading = shading[..., None]
    return tiled * shading


def repetitive_scene(photo: str, seed: int = 0, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """The tiled scene (uint8 RGB) that make_pair(photo, "repetitive", seed, size) views, for
    camera paths over it (groundtruth.planar.make_sequence)."""
    scene = repetitive(_as_rgb(load_photo(photo)).astype(np.float32),
                       _rng("pair", photo, "repetitive", seed, *size))
    return np.clip(np.round(scene), 0, 255).astype(np.uint8)


# --- frame kinds: the camera degrades the image ----------------------------------------------
def _noise(frame: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return frame + rng.normal(0.0, sigma, frame.shape).astype(np.float32)


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """A centred line kernel (a straight motion during the exposure), normalised to sum 1.
    It is point-symmetric about its centre, so it blurs without moving anything."""
    size = int(np.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    direction = np.array([np.cos(angle), np.sin(angle)])
    for t in np.linspace(-length / 2, length / 2, 4 * size):
        x, y = c + t * direction
        # Bilinear splat of each sample point.
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                            (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                kernel[y0 + dy, x0 + dx] += wgt
    kernel = 0.5 * (kernel + kernel[::-1, ::-1])  # exact point symmetry
    return kernel / kernel.sum()


def _check_severity(severity: float) -> None:
    if not severity > 0:  # also refuses NaN
        raise ValueError(f"severity must be positive, got {severity}")


def degrade(frame: np.ndarray, kind: str, rng: np.random.Generator,
            motion_angle: float = 0.0, severity: float = 1.0) -> np.ndarray:
    """A frame-space degradation (float32 in, float32 out, 0-255 scale). `motion_angle`
    (radians): direction of the image motion for motion blur. `severity` scales how much of
    the scene the degradation takes away (1: the sets the mechanism was measured on; the
    random draws are the same at every severity): the blur's sigma and the motion's length
    are multiplied by it; the contrast left (low contrast), the light (darkness) and the
    scene's share of the light through fog are divided by it. The scene kinds ignore it."""
    _check_severity(severity)
    if kind == "blur":              # strong defocus
        sigma = rng.uniform(5.0, 7.0) * severity
        return _noise(cv2.GaussianBlur(frame, (0, 0), sigmaX=sigma), rng, 1.0)
    if kind == "low_contrast":      # 5-8% of the contrast (haze, flat light)
        mean = frame.mean(axis=(0, 1), keepdims=True)
        return _noise(mean + rng.uniform(0.05, 0.08) / severity * (frame - mean), rng, 0.7)
    if kind == "blur_low_contrast":  # defocused and flat
        sigma = rng.uniform(3.5, 4.5) * severity
        blurred = cv2.GaussianBlur(frame, (0, 0), sigmaX=sigma)
        mean = blurred.mean(axis=(0, 1), keepdims=True)
        return _noise(mean + rng.uniform(0.15, 0.2) / severity * (blurred - mean), rng, 0.7)
    if kind == "fog":               # 85-90% airlight, slightly uneven
        h, w = frame.shape[:2]
        ys = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        haze = rng.uniform(0.85, 0.9)
        if severity != 1.0:  # the scene's share of the light divided (bit for bit at 1)
            haze = 1.0 - (1.0 - haze) / severity
        density = haze + 0.04 * (ys - 0.5)  # thicker towards the bottom
        if frame.ndim == 3:
            density = density[..., None]
        airlight = rng.uniform(190, 215)
        return _noise((1 - density) * frame + density * airlight, rng, 0.7)
    if kind == "dark":              # night: 5-8% of the light, shot and read noise
        gain = rng.uniform(0.05, 0.08) / severity
        signal = frame * gain * 2.0  # electrons at 0.5 DN per electron
        electrons = rng.poisson(np.clip(signal, 0, None)).astype(np.float32)
        return _noise(electrons * 0.5, rng, 1.2)
    if kind == "motion_blur":       # 12-20 px straight motion during the exposure
        kernel = motion_kernel(rng.uniform(12, 20) * severity, motion_angle)
        blurred = cv2.filter2D(frame, -1, kernel, borderType=cv2.BORDER_REFLECT)
        return _noise(blurred, rng, 1.0)
    if kind in SCENE_KINDS or kind == "original":
        return _noise(frame, rng, 0.7)  # the sensor's own noise
    raise ValueError(f"unknown low-texture kind {kind!r}; choose from {ALL_KINDS}")


def degrade_frame(frame: np.ndarray, kind: str, seed: int = 0,
                  heading: float | None = None) -> np.ndarray:
    """A frame kind (see FRAME_KINDS) applied to one uint8 frame, e.g. of a sequence.py
    sequence, with a draw of its own for `seed` (geometry unchanged). Motion blur runs along
    `heading` (radians; default one fixed direction) within 12.5 degrees, as consecutive
    frames of a moving camera blur alike (as in make_pair)."""
    if kind not in FRAME_KINDS:
        raise ValueError(f"unknown frame kind {kind!r}; choose from {FRAME_KINDS}")
    if heading is None:
        heading = _rng("sequence heading", kind).uniform(0, np.pi)
    rng = _rng("sequence frame", kind, seed, *frame.shape)
    angle = heading + np.deg2rad(rng.uniform(-12.5, 12.5))
    out = degrade(frame.astype(np.float32), kind, rng, motion_angle=angle)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def degrade_frames(frames: list[np.ndarray], kinds: list[str | None]) -> list[np.ndarray]:
    """Frame t degraded by kinds[t] (see degrade_frame, with seed t), or as it is where that
    is None: a stream that goes into and out of fog, night or blur."""
    if len(frames) != len(kinds):
        raise ValueError(f"{len(frames)} frames but {len(kinds)} kinds")
    return [frame if kind is None else degrade_frame(frame, kind, t)
            for t, (frame, kind) in enumerate(zip(frames, kinds))]


WALL_LIGHTS = ("flat", "gradient", "spot")


def blank_wall(seed: int, light: str = "flat", shift: float = 0.0, noise: float = 1.0,
               slope: float = 0.1) -> np.ndarray:
    """A 640x480 frame (RGB uint8) of a wall with nothing on it: vignetting fixed to the
    camera (35% darker at the middle of each edge), lit `light`ly: 'flat', a 'gradient' of
    `slope` grey levels per px along x, or a lamp's round 'spot' (80 grey levels, sigma 70
    px); the gradient or the spot moved `shift` px along x with the wall (the camera moved);
    sensor noise of `noise` grey levels drawn from `seed` (draw each frame's anew). Nothing
    of it is matchable but the spot, which has no orientation."""
    if light not in WALL_LIGHTS:
        raise ValueError(f"unknown wall light {light!r}; choose from {WALL_LIGHTS}")
    y, x = np.mgrid[0:480, 0:640].astype(np.float64)
    wall = 90.0 * (1 - 0.35 * (((x - 320) / 320) ** 2 + ((y - 240) / 240) ** 2))
    if light == "spot":
        wall += 80.0 * np.exp(-((x - 420 - shift) ** 2 + (y - 300) ** 2) / (2 * 70.0 ** 2))
    elif light == "gradient":
        wall += slope * (x - shift)
    wall += np.random.default_rng(seed).normal(0.0, noise, wall.shape)
    return _as_rgb(np.clip(np.round(wall), 0, 255).astype(np.uint8))


def _as_rgb(photo: np.ndarray) -> np.ndarray:
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    return np.ascontiguousarray(photo[..., :3])


def make_pair(photo: str | np.ndarray, kind: str, seed: int = 0,
              size: tuple[int, int] = (640, 480), name: str | None = None,
              severity: float = 1.0) -> Pair:
    """One pair of `kind` (see KINDS, or "original") from a photograph (a skimage name or an
    array), with its exact homography image0 -> image1; `severity` scales the degradation
    (see degrade: the same views and draws, more of the scene taken away)."""
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown low-texture kind {kind!r}; choose from {ALL_KINDS}")
    _check_severity(severity)  # the scene kinds ignore it, but never take a wrong one
    name = name or (photo if isinstance(photo, str) else "array")
    image = _as_rgb(load_photo(photo) if isinstance(photo, str) else photo)
    rng = _rng("pair", name, kind, seed, *size)
    scene = image.astype(np.float32)
    if kind == "wall_patch":
        scene = wall_with_patch(scene, rng)
    elif kind == "repetitive":
        scene = repetitive(scene, rng)
    ph, pw = scene.shape[:2]
    h0, h1 = view_pair((pw, ph), size, rng, zoom_factor=5.0 if kind == "closeup" else 1.0)
    # Consecutive frames of a moving camera blur in similar directions (within 25 degrees).
    heading = rng.uniform(0, np.pi)
    frames = []
    for index, homography in enumerate((h0, h1)):
        frame = render(scene, homography, size)
        frame_rng = _rng("frame", name, kind, seed, index, *size)
        angle = heading + np.deg2rad(frame_rng.uniform(-12.5, 12.5))
        frame = degrade(frame, kind, frame_rng, motion_angle=angle, severity=severity)
        frames.append(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    return Pair(frames[0], frames[1], h1 @ np.linalg.inv(h0), name, kind, seed, severity)


def make_pairs(photos: tuple[str, ...] = HELD_OUT_PHOTOS, kinds: tuple[str, ...] = KINDS,
               seeds: tuple[int, ...] = (0,), size: tuple[int, int] = (640, 480),
               severity: float = 1.0) -> list[Pair]:
    """Every (photo, kind, seed) combination, in that order, at `severity` (see degrade)."""
    return [make_pair(photo, kind, seed, size, severity=severity) for photo in photos
            for kind in kinds for seed in seeds]
