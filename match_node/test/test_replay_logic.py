"""The replay tool's decisions without ROS (runs in CI): what it waits for before it starts, in
every mode, the flow-control topic of stereo bags, and how a stop request ends its waits.

No test here measures time: waits are given a condition that becomes true, or a short
timeout whose expiry is the expected outcome.
"""
from __future__ import annotations

import signal
import threading

import pytest

from match_node.ros import replay as R
from match_node.ros import replay_logic as L


def test_default_wait_topic_of_stereo_bags_is_the_stereo_output():
    assert L.default_wait_topic(["/stereo/left/image_raw", "/stereo/right/image_raw"]) \
        == "/stereo/correspondences/stereo"
    assert L.default_wait_topic(["/rig/right/image_raw/compressed",
                                 "/rig/left/image_raw/compressed"]) == "/rig/correspondences/stereo"
    assert L.default_wait_topic(["/camera/image_raw"]) == "/camera/correspondences"
    assert L.default_wait_topic(["/camera/image_raw/compressed"]) == "/camera/correspondences"
    # Not a pair: two cameras that are not left/right of one rig.
    assert L.stereo_namespace(["/a/left/image_raw", "/b/right/image_raw"]) is None
    assert L.stereo_namespace(["/a/left/image_raw", "/a/right/image_rect"]) is None
    assert L.stereo_namespace(["/front/image_raw", "/rear/image_raw"]) is None


def test_only_the_stereo_output_acks_the_first_frame():
    assert L.first_frame_acked("/stereo/correspondences/stereo")
    assert not L.first_frame_acked("/stereo/correspondences/temporal")
    assert not L.first_frame_acked("/camera/correspondences")


def test_not_ready_names_what_is_missing():
    assert L.not_ready({"/cam/image_raw": 1}, "/cam/correspondences", 1,
                       {"/cam/camera_info": 1}) == []
    assert L.not_ready({"/cam/image_raw": 0}, "/cam/correspondences", 0,
                       {"/cam/camera_info": 0, "/cam/correspondences": 2}) == [
        "a subscriber on /cam/image_raw", "a publisher of /cam/correspondences",
        "a subscriber on /cam/camera_info"]
    # No wait topic (rate mode without --wait-topic): its publisher is not required.
    assert L.not_ready({"/cam/image_raw": 1}, None, 0, {}) == []


def test_wait_until_ready_polls_until_the_condition_holds():
    answers = iter([["a subscriber on /x"], ["a subscriber on /x"], []])
    logged = []
    missing = L.wait_until_ready(lambda: next(answers), 60.0, L.Stop(), logged.append,
                                 settle_s=0.0)
    assert missing == []
    assert logged == ["waiting up to 60 s for a subscriber on /x"]


def test_wait_until_ready_gives_up_with_what_is_missing():
    missing = L.wait_until_ready(lambda: ["a publisher of /y"], 0.1, L.Stop(), lambda _: None)
    assert missing == ["a publisher of /y"]


def test_wait_until_ready_ends_on_a_stop_request():
    stop = L.Stop()
    calls = []

    def missing():
        calls.append(1)
        if len(calls) == 3:
            stop.handler(signal.SIGINT, None)
        return ["a subscriber on /x"]

    with pytest.raises(L.Interrupted):
        L.wait_until_ready(missing, 600.0, stop, lambda _: None)


def test_stop_is_a_flag_and_a_second_signal_changes_nothing():
    stop = L.Stop()
    assert stop.sleep(0.0) and not stop.requested
    stop.handler(signal.SIGINT, None)  # no exception: the main thread is never interrupted
    stop.handler(signal.SIGTERM, None)
    assert stop.requested and stop.signal_name == "SIGINT"
    assert stop.sleep(600.0) is False  # returns at once once stopping


def test_ack_wait_sees_acks_and_stop_requests():
    acks, stop = L.Acks(), L.Stop()
    data = bytes([0, 1, 0, 0]) + (5).to_bytes(4, "little") + (7).to_bytes(4, "little")
    assert L.header_stamp_ns(data) == 5_000_000_007
    threading.Timer(0.05, acks.add, args=(data,)).start()
    assert acks.wait(5_000_000_007, 600.0, stop)
    assert not acks.wait(1, 0.05, stop)  # never acked: the timeout expires
    threading.Timer(0.05, stop.handler, args=(signal.SIGINT, None)).start()
    with pytest.raises(L.Interrupted):
        acks.wait(2, 600.0, stop)


def test_every_mode_waits_for_subscribers_by_default():
    parser = R.build_parser()
    for mode in ([], ["--rate", "2"], ["--as-fast-as-consumed"]):
        args = parser.parse_args(["bag", *mode])
        assert args.wait_subscribers == 30.0
    args = parser.parse_args(["bag", "--wait-for-subscriber", "/a", "/b",
                              "--wait-for-subscriber", "/c"])
    assert args.wait_for_subscriber == ["/a", "/b", "/c"]
