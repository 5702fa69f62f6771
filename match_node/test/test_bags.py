"""Bags without ROS: the message mapping, the typestore, writing and reading sqlite3 and MCAP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from match_node import messages
from match_node.bags import msgtypes, rosbag as bags
from match_node.bags import make as make_bag
from match_node.engine.results import MatchResult

MSG_FILE = Path(__file__).resolve().parents[2] / "match_node_msgs" / "msg" / "Correspondences.msg"


def fake_result(n: int = 7, seed: int = 0) -> MatchResult:
    rng = np.random.default_rng(seed)
    return MatchResult(
        keypoints0=rng.uniform(0, 300, (n, 2)).astype(np.float32),
        keypoints1=rng.uniform(0, 300, (n, 2)).astype(np.float32),
        scores=rng.uniform(0, 1, n).astype(np.float32),
        indices0=rng.integers(0, 500, n), indices1=rng.integers(0, 500, n),
        num_keypoints0=500, num_keypoints1=480, image_size0=(320, 240), image_size1=(320, 240),
        exit_layer=5, num_layers=9, exit_reason=messages.EXIT_CONFIDENCE, kept0=300, kept1=290,
        timings={"preprocess_ms": 1.5, "extract_ms": 20.25, "match_ms": 10.125, "total_ms": 33.0},
        extractor="aliked-n16", matcher="lightglue",
        track_ids=rng.integers(1, 1 << 40, n).astype(np.uint64), latency_budget_ms=50.0,
        keypoint_cap=512, extraction_scale=0.75)


def fields_of(result: MatchResult) -> dict:
    return messages.correspondence_fields(
        result, 1_700_000_000_123_456_789, "cam_optical", 1_700_000_000_023_456_789,
        "cam_optical", messages.PAIRING_SEQUENTIAL, frame_index=3, dropped_frames=2,
        tracks_reset=True, wait_ms=4.5)


def test_fields_follow_the_msg_file():
    """Every field of Correspondences.msg, in its order, and the same constants."""
    ts = msgtypes.typestore()
    consts, fields = ts.fielddefs[messages.MSGTYPE]
    assert list(fields_of(fake_result())) == [name for name, _ in fields]
    constants = {name: value for name, _, value in consts}
    for name in ("PAIRING_SEQUENTIAL", "PAIRING_STEREO", "PAIRING_TEMPORAL_LEFT",
                 "EXIT_FULL_DEPTH", "EXIT_CONFIDENCE", "EXIT_BUDGET", "EXIT_NO_KEYPOINTS"):
        assert getattr(messages, name) == constants[name], name
    # The same constants as the matcher's.
    from match_node.models import lightglue
    assert (lightglue.EXIT_FULL_DEPTH, lightglue.EXIT_NO_KEYPOINTS) == \
        (messages.EXIT_FULL_DEPTH, messages.EXIT_NO_KEYPOINTS)


def test_rclpy_and_bag_messages_have_identical_bytes():
    """The node's message (rclpy) and the offline runner's (rosbags) serialize to the same CDR."""
    pytest.importorskip("match_node_msgs.msg", reason="match_node_msgs not built")
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header

    from match_node.ros.conversions import result_to_msg

    result = fake_result()
    fields = fields_of(result)
    header, reference = Header(frame_id="cam_optical"), Header(frame_id="cam_optical")
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000, 123_456_789
    reference.stamp.sec, reference.stamp.nanosec = 1_700_000_000, 23_456_789
    msg = result_to_msg(result, header, reference, frame_index=3, dropped_frames=2,
                        tracks_reset=True, wait_ms=4.5)
    rclpy_bytes = serialize_message(msg)
    ts = msgtypes.typestore()
    bag_bytes = bytes(ts.serialize_cdr(msgtypes.make_message(ts, messages.MSGTYPE, fields, strict=True),
                                       messages.MSGTYPE))
    # Same layout; Fast CDR leaves alignment padding bytes uninitialised, so compare the bytes
    # after a rosbags round trip of rclpy's (which zeroes padding), and the lengths.
    assert len(rclpy_bytes) == len(bag_bytes)
    assert bytes(ts.serialize_cdr(ts.deserialize_cdr(rclpy_bytes, messages.MSGTYPE),
                                  messages.MSGTYPE)) == bag_bytes
    back = deserialize_message(bag_bytes, type(msg))
    assert back.track_id.tolist() == result.track_ids.tolist()
    assert back.wait_ms == 4.5 and back.tracks_reset and back.dropped_frames == 2


def test_type_hash_matches_rosidl():
    """The typestore's RIHS01 hash of Correspondences is the one rosidl generated."""
    ts = msgtypes.typestore()
    generated = None
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        path = Path(prefix) / "share" / "match_node_msgs" / "msg" / "Correspondences.json"
        if path.is_file():
            generated = json.loads(path.read_text())
            break
    if generated is None:
        pytest.skip("match_node_msgs not built (no Correspondences.json)")
    expected = {h["type_name"]: h["hash_string"] for h in generated["type_hashes"]}
    assert ts.hash_rihs01(messages.MSGTYPE) == expected[messages.MSGTYPE]


def test_msg_file_lookup(monkeypatch, tmp_path):
    # The repository copy when nothing is installed ...
    monkeypatch.setenv("AMENT_PREFIX_PATH", "")
    assert msgtypes.correspondences_msg_path().read_text() == MSG_FILE.read_text()
    # ... the installed one first ...
    share = tmp_path / "share"
    (share / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (share / "ament_index" / "resource_index" / "packages" / "match_node_msgs").touch()
    (share / "match_node_msgs" / "msg").mkdir(parents=True)
    (share / "match_node_msgs" / "msg" / "Correspondences.msg").write_text("uint8 x\n")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    assert msgtypes.correspondences_msg_path() == share / "match_node_msgs" / "msg" / "Correspondences.msg"
    # ... and a clear error when there is neither.
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "nothing"))
    monkeypatch.setattr(msgtypes, "__file__", str(tmp_path / "a" / "b" / "msgtypes.py"))
    with pytest.raises(msgtypes.BagError, match="cannot find match_node_msgs/msg/Correspondences.msg"):
        msgtypes.correspondences_msg_path()


@pytest.mark.parametrize("storage", bags.STORAGES)
def test_round_trip(tmp_path, storage):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(3)]
    right = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
    stamps = make_bag.stamps(3, 10.0)
    K = make_bag.nominal_K(320, 240)
    poses = []
    for i in range(3):
        T = np.eye(4)
        T[:3, :3] = make_bag.quaternion_to_rotation([0.1 * i, -0.2, 0.05, 1.0])
        T[:3, 3] = [0.1 * i, -0.3, 2.0]
        poses.append(T)
    homographies = [np.array([[1, 0.01 * i, 2.0 * i], [0, 1, -1.0], [1e-5, 0, 1]]) for i in range(3)]
    path = make_bag.write_sequence_bag(tmp_path / "stereo", frames, stamps, K, poses=poses,
                                       right_frames=right, baseline=0.12,
                                       homographies=homographies, storage=storage)
    assert bags.storage_of(path) == storage
    topics = bags.topics(path)
    assert {t: s.count for t, s in topics.items()} == {
        make_bag.LEFT_IMAGE: 3, make_bag.LEFT_INFO: 3, make_bag.RIGHT_IMAGE: 3,
        make_bag.RIGHT_INFO: 3, make_bag.GROUND_TRUTH_POSE: 3, make_bag.GROUND_TRUTH_HOMOGRAPHY: 3}

    read = list(bags.read_images(path))
    assert [f.topic for f in read] == [make_bag.LEFT_IMAGE, make_bag.RIGHT_IMAGE] * 3
    assert [f.log_time_ns for f in read] == sorted(f.log_time_ns for f in read)
    for i, (left, right_read) in enumerate(zip(read[::2], read[1::2])):
        assert left.stamp_ns == right_read.stamp_ns == stamps[i]
        assert left.log_time_ns == stamps[i] + 5_000_000  # recorded after it was stamped
        assert left.frame_id == "stereo_left_optical"
        np.testing.assert_array_equal(left.image, frames[i])
        np.testing.assert_array_equal(right_read.image, right[i])
    infos = bags.read_camera_info(path)
    np.testing.assert_allclose(infos[make_bag.LEFT_INFO].K, K)
    assert infos[make_bag.LEFT_INFO].baseline == 0
    assert infos[make_bag.RIGHT_INFO].baseline == pytest.approx(0.12)
    assert infos[make_bag.RIGHT_INFO].P[0, 3] == pytest.approx(-K[0, 0] * 0.12)
    assert (infos[make_bag.RIGHT_INFO].width, infos[make_bag.RIGHT_INFO].height) == (320, 240)

    ts = msgtypes.typestore()
    pose_msgs = [bags.deserialize(m, ts) for m in bags.messages(path, [make_bag.GROUND_TRUTH_POSE])]
    for msg, T in zip(pose_msgs, poses):
        assert msg.header.frame_id == "world"
        np.testing.assert_allclose(make_bag.pose_from_message(msg), T, atol=1e-12)
        # camera-to-world: the position is the camera centre in the world
        np.testing.assert_allclose([msg.pose.position.x, msg.pose.position.y, msg.pose.position.z],
                                   -T[:3, :3].T @ T[:3, 3], atol=1e-12)
    truth = bags.read_homographies(path)
    assert sorted(truth) == [f.log_time_ns for f in read[::2]]
    for H, expected in zip(truth.values(), homographies):
        np.testing.assert_array_equal(H, expected)

    # Self-describing: a typestore built only from the bag's own definitions decodes all of it.
    own = bags.typestore_from_bag(path)
    for message in bags.messages(path):
        own.deserialize_cdr(message.data, message.msgtype)


@pytest.mark.parametrize("storage", bags.STORAGES)
def test_compressed_mono_and_correspondences(tmp_path, storage):
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    path = make_bag.write_sequence_bag(tmp_path / "c", frames, [10, 20], np.eye(3),
                                       storage=storage, compressed="png", log_delay_ns=0)
    read = list(bags.read_images(path, [make_bag.MONO_IMAGE + "/compressed"]))
    assert [f.stamp_ns for f in read] == [10, 20]
    for f, frame in zip(read, frames):
        np.testing.assert_array_equal(f.image, frame)  # png: lossless
    with pytest.raises(msgtypes.BagError, match="no topic"):
        list(bags.read_images(path, ["/nope"]))

    # A Correspondences topic keeps the .msg verbatim (comments too) as its definition.
    out = tmp_path / "corr"
    with bags.BagWriter(out, storage=storage) as writer:
        writer.add_topic("/cam/correspondences", messages.MSGTYPE)
        writer.write_fields("/cam/correspondences", 5, fields_of(fake_result()))
        with pytest.raises(msgtypes.BagError, match="missing field"):
            writer.write_fields("/cam/correspondences", 6, {"pairing": 0})
    info = bags.topics(out)["/cam/correspondences"]
    assert info.msgdef.startswith(MSG_FILE.read_text().rstrip("\n") + "\n")
    assert "MSG: std_msgs/Header" in info.msgdef and "MSG: builtin_interfaces/Time" in info.msgdef
    assert info.rihs01 == msgtypes.typestore().hash_rihs01(messages.MSGTYPE)
    own = bags.typestore_from_bag(out)
    (message,) = list(bags.messages(out))
    msg = own.deserialize_cdr(message.data, message.msgtype)
    expected = fields_of(fake_result())
    assert msg.header.stamp.sec == 1_700_000_000 and msg.header.stamp.nanosec == 123_456_789
    np.testing.assert_array_equal(msg.track_id, expected["track_id"])
    np.testing.assert_array_equal(msg.current_x, expected["current_x"])
    assert msg.extractor == "aliked-n16" and msg.tracks_reset is True and msg.frame_index == 3


def test_writer_refuses_existing_path_and_unknown_topics(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(msgtypes.BagError, match="exists already"):
        bags.BagWriter(tmp_path / "exists")
    with pytest.raises(msgtypes.BagError, match="storage"):
        bags.BagWriter(tmp_path / "x", storage="rosbag1")
    with bags.BagWriter(tmp_path / "y") as writer:
        with pytest.raises(msgtypes.BagError, match="not added"):
            writer.write_raw("/nope", 1, b"\x00\x01\x00\x00")
        with pytest.raises(msgtypes.BagError, match="has no field"):
            msgtypes.make_message(writer.ts, msgtypes.IMAGE, {"colour": 1})


def test_quaternions():
    rng = np.random.default_rng(3)
    for _ in range(50):
        q = rng.normal(size=4)
        R = make_bag.quaternion_to_rotation(q)
        np.testing.assert_allclose(make_bag.quaternion_to_rotation(make_bag.rotation_to_quaternion(R)),
                                   R, atol=1e-12)
    for angle in (np.pi, np.pi - 1e-9):  # near 180 degrees, where the trace form fails
        R = make_bag.quaternion_to_rotation([np.sin(angle / 2), 0, 0, np.cos(angle / 2)])
        np.testing.assert_allclose(make_bag.quaternion_to_rotation(make_bag.rotation_to_quaternion(R)),
                                   R, atol=1e-9)


def test_make_bag_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "match_node.bags.make", str(tmp_path / "b"),
                          "--kind", "mono", "--frames", "3", "--storage", "mcap"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    topics = bags.topics(tmp_path / "b")
    assert {t: s.count for t, s in topics.items()} == {
        make_bag.MONO_IMAGE: 3, make_bag.MONO_INFO: 3, make_bag.GROUND_TRUTH_HOMOGRAPHY: 3}
    frames = list(bags.read_images(tmp_path / "b"))
    assert frames[0].image.shape == (240, 320, 3) and frames[0].msgtype == msgtypes.IMAGE
    again = subprocess.run([sys.executable, "-m", "match_node.bags.make", str(tmp_path / "b")],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr


def test_new_core_modules_import_without_ros():
    code = textwrap.dedent("""
        import importlib.abc, sys
        BLOCKED = ("rclpy", "sensor_msgs", "std_msgs", "builtin_interfaces", "match_node_msgs",
                   "rosgraph_msgs", "geometry_msgs", "rcl_interfaces", "rosbag2_py")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("ROS import from the core: " + name)
        sys.meta_path.insert(0, Block())
        import match_node.messages, match_node.bags.msgtypes, match_node.bags.rosbag
        import match_node.bags.make, match_node.bags.offline
        match_node.bags.msgtypes.typestore()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_make_bag_help_names_only_options_it_has():
    """The help (usage, options and the module docstring it shows) mentions no option that
    the parser lacks (it once documented a nonexistent --log-delay-ms)."""
    import re
    parser = make_bag.build_parser()
    options = {o for action in parser._actions for o in action.option_strings}
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", parser.format_help()))
    assert mentioned and mentioned <= options, mentioned - options
    assert {"--step", "--step-m", "--log-delay-ms"} <= mentioned


def _centres(path) -> np.ndarray:
    """Camera centres (world frame) of a bag's /ground_truth/pose."""
    return np.array([np.linalg.inv(make_bag.pose_from_message(bags.deserialize(m)))[:3, 3]
                     for m in bags.messages(path, [make_bag.GROUND_TRUTH_POSE])])


def test_make_bag_step_length_and_log_delay(tmp_path, capsys):
    """--step-m sets the 3D camera motion per frame (default 6 cm, the VO test's step; the
    renderer's own 2-3 cm are too short for monocular VO at 320x240); --log-delay-ms the
    receive delay of each message."""
    common = ["--kind", "mono3d", "--frames", "4", "--size", "64x48"]
    assert make_bag.main([str(tmp_path / "default"), *common]) == 0
    assert make_bag.main([str(tmp_path / "short"), *common, "--step-m", "0.03",
                          "--log-delay-ms", "20"]) == 0
    default, short = _centres(tmp_path / "default"), _centres(tmp_path / "short")
    # Same path shape, scaled: positions are proportional to the step.
    np.testing.assert_allclose(default, 2.0 * short, atol=1e-9)
    steps = np.linalg.norm(np.diff(default, axis=0), axis=1)
    assert make_bag.DEFAULT_STEP_M == 0.06 and 0.04 < steps.max() < 0.08  # "about" 6 cm
    for path, delay_ns in ((tmp_path / "default", 5_000_000), (tmp_path / "short", 20_000_000)):
        for image in bags.read_images(path, decode=False):
            assert image.log_time_ns - image.stamp_ns == delay_ns
    # Mono (planar): --step in pixels moves the frames further.
    assert make_bag.main([str(tmp_path / "m6"), "--frames", "3", "--size", "64x48"]) == 0
    assert make_bag.main([str(tmp_path / "m18"), "--frames", "3", "--size", "64x48",
                          "--step", "18"]) == 0

    def motion(path) -> float:
        H = bags.read_homographies(path)
        a, b = (H[k] for k in sorted(H)[:2])
        corners = np.array([[0, 0, 1], [63, 0, 1], [0, 47, 1], [63, 47, 1]], float).T
        moved = (b @ np.linalg.inv(a)) @ corners
        return float(np.abs(moved[:2] / moved[2] - corners[:2]).max())
    assert motion(tmp_path / "m18") > 2.0 * motion(tmp_path / "m6")
    for bad in (["--step-m", "0"], ["--step", "-1"], ["--log-delay-ms", "-5"]):
        assert make_bag.main([str(tmp_path / "bad"), *bad]) == 2
    assert "must be > 0" in capsys.readouterr().err
