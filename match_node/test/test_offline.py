"""The offline runner: bag in, bag out, deterministic, precise against the stored ground truth."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from match_node import messages
from match_node.bags import rosbag as bags
from match_node.bags import make as make_bag
from match_node.bags.offline import run_offline

FRAMES = 6
PARAMS = {"device": "cpu", "max_keypoints": 512, "allow_download": False}


@pytest.fixture(scope="module")
def mono_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("offline") / "mono"
    return make_bag.mono_bag(path, num_frames=FRAMES, size=(320, 240), step=5, storage="sqlite3")


def correspondences(path):
    """(log time, message) of every Correspondences message, decoded with a typestore built
    from nothing but the bag's own connection definitions."""
    ts = bags.typestore_from_bag(path)
    assert messages.MSGTYPE in ts.types
    return [(m.log_time_ns, ts.deserialize_cdr(m.data, m.msgtype))
            for m in bags.messages(path, msgtypes=[messages.MSGTYPE])]


def comparable(msg) -> dict:
    """Every field but the timings, arrays as (dtype, bytes): byte-identical values."""
    out = {}
    for name in msg.__dataclass_fields__:
        if name in messages.TIMING_FIELDS or name == "__msgtype__":
            continue
        value = getattr(msg, name)
        if isinstance(value, np.ndarray):
            value = (str(value.dtype), value.tobytes())
        elif hasattr(value, "__dataclass_fields__"):
            value = repr(value)
        out[name] = value
    return out


def test_offline_runner(mono_bag, tmp_path):
    out_cli = tmp_path / "cli"
    summary_path = tmp_path / "summary.json"
    run = subprocess.run(
        [sys.executable, "-m", "match_node.bags.offline", str(mono_bag), str(out_cli),
         "--topic", make_bag.MONO_IMAGE, *sum((["--set", f"{k}={str(v).lower()}"]
                                               for k, v in PARAMS.items()), []),
         "--summary", str(summary_path)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == FRAMES and summary["messages"] == FRAMES - 1
    assert summary["precision_at_3px"] > 0.95, summary
    assert min(summary["matches_per_frame"]) > 100
    assert sum(summary["exit_layers"].values()) == FRAMES - 1
    assert summary["timings_ms"]["total_ms"]["mean"] > 0
    assert summary["output_topic"] == "/camera/correspondences"
    assert summary["copied_topics"] == [make_bag.MONO_INFO]
    assert summary["deterministic"] is True
    assert '"precision_at_3px"' in run.stdout  # printed as well

    # The output: one message per frame but the first, at its image's log time and stamp.
    images = list(bags.read_images(mono_bag, decode=False))
    out = correspondences(out_cli)
    assert len(out) == FRAMES - 1
    for t, (log_time, msg) in enumerate(out, start=1):
        assert log_time == images[t].log_time_ns != images[t].stamp_ns
        stamp = messages.time_to_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
        reference = messages.time_to_ns(msg.reference_stamp.sec, msg.reference_stamp.nanosec)
        assert (stamp, reference) == (images[t].stamp_ns, images[t - 1].stamp_ns)
        assert msg.header.frame_id == msg.reference_frame_id == "camera_optical"
        assert msg.frame_index == t and msg.dropped_frames == 0
        assert msg.tracks_reset == (t == 1)
        assert msg.pairing == messages.PAIRING_SEQUENTIAL
        assert len(msg.current_x) == len(msg.track_id) == summary["matches_per_frame"][t - 1]
    # CameraInfo copied byte for byte with its log times.
    copied = [(m.log_time_ns, m.data) for m in bags.messages(out_cli, [make_bag.MONO_INFO])]
    original = [(m.log_time_ns, m.data) for m in bags.messages(mono_bag, [make_bag.MONO_INFO])]
    assert copied == original

    # Deterministic: a second run (in this process, MCAP this time) gives the same messages.
    out_api = tmp_path / "api"
    summary2 = run_offline(mono_bag, out_api, make_bag.MONO_IMAGE, PARAMS, storage="mcap")
    assert bags.storage_of(out_api) == "mcap"
    again = correspondences(out_api)
    assert [t for t, _ in again] == [t for t, _ in out]
    for (_, a), (_, b) in zip(out, again):
        assert comparable(a) == comparable(b)
    assert summary2["precision_at_3px"] == summary["precision_at_3px"]


def test_offline_errors(mono_bag, tmp_path):
    run = subprocess.run([sys.executable, "-m", "match_node.bags.offline", str(mono_bag),
                          str(tmp_path / "o"), "--topic", "/nope", "--set", "device=cpu"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "/camera/image_raw" in run.stderr
    run = subprocess.run([sys.executable, "-m", "match_node.bags.offline", str(mono_bag),
                          str(tmp_path / "o"), "--topic", make_bag.MONO_IMAGE,
                          "--set", "max_keypoints=0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "max_keypoints" in run.stderr
