import subprocess
import sys

import cv2
import numpy as np

from match_node.groundtruth.planar import reprojection_errors

from conftest import HOMOGRAPHY


def test_cli_writes_npz_and_plot(tmp_path, coffee_pair):
    image0, image1, homography = coffee_pair
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path, image in zip(paths, (image0, image1)):
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    config = tmp_path / "c.yaml"
    config.write_text("/**:\n  ros__parameters:\n    max_keypoints: 300\n    image_transport: raw\n")
    out = subprocess.run(
        [sys.executable, "-m", "match_node.match", *map(str, paths), "--config", str(config),
         "--set", "device=cpu", "--set", "allow_download=false",
         "--output", str(tmp_path / "r.npz"), "--plot", str(tmp_path / "r.png")],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = np.load(tmp_path / "r.npz")
    assert data["keypoints0"].shape[1] == 2 and len(data["keypoints0"]) == len(data["scores"])
    assert list(data["timing_names"]) == ["preprocess_ms", "extract_ms", "match_ms", "total_ms"]
    errors = reprojection_errors(HOMOGRAPHY, data["keypoints0"], data["keypoints1"])
    assert len(errors) > 100 and (errors < 3).mean() > 0.95
    picture = cv2.imread(str(tmp_path / "r.png"))
    assert picture.shape[1] > 2 * image0.shape[1]


def test_cli_reports_bad_parameter(tmp_path):
    out = subprocess.run([sys.executable, "-m", "match_node.match", "a.png", "b.png",
                          "--set", "max_keypoints=0", "--output", str(tmp_path / "r.npz")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "max_keypoints" in out.stderr
