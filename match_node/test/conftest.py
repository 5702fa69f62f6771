"""Shared fixtures: real photographs with known homographies and a pipeline loaded once."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

# Keep tests reproducible and light on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def warp(image: np.ndarray, homography: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpPerspective(image, homography, size or (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)


# A moderate viewpoint change: rotation, scale, shear and perspective.
HOMOGRAPHY = np.array([[0.96, 0.06, 12.0], [-0.05, 0.98, 6.0], [8e-5, -4e-5, 1.0]])


@pytest.fixture(scope="session")
def coffee_pair():
    from match_node.groundtruth.planar import load_photo
    image0 = load_photo("coffee")
    return image0, warp(image0, HOMOGRAPHY), HOMOGRAPHY


@pytest.fixture(scope="session")
def pipeline():
    from match_node import Pipeline
    return Pipeline(device="cpu", max_keypoints=512, allow_download=False)


@pytest.fixture(scope="session")
def loftr_checkpoint(tmp_path_factory):
    """An official-layout LoFTR Lightning checkpoint with random weights (no official LoFTR
    file is available offline): it exercises the real loader and the full model."""
    import torch
    kornia_loftr = pytest.importorskip("kornia.feature.loftr")
    torch.manual_seed(0)
    state = kornia_loftr.LoFTR(pretrained=None).state_dict()
    path = tmp_path_factory.mktemp("loftr") / "outdoor_ds.ckpt"
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in state.items()}, "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of small tensors: on the shared, loaded 2-core machine a
    second thread mostly waits for the first (measured: SuperGlue 0.4 s vs 3-4 s per
    assignment, the SuperPoint file 20 s vs 42 s)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ros():
    """rclpy initialised for a test module that runs real nodes (see rosutil for isolation)."""
    import rosutil  # noqa: F401  (sets ROS_DOMAIN_ID before rclpy creates its context)
    import rclpy
    rclpy.init()
    yield
    rclpy.try_shutdown()
