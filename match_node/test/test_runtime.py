import threading

from match_node import params as P
from match_node.engine import framelog
from match_node.engine.framelog import FrameLog, FrameStats, Published, publish_rate
from match_node.ros.runtime import ERROR, OK, WARN, LatestSlot, assess_health
from match_node.engine.tracker import Tracker

import numpy as np
import pytest


def test_latest_slot_keeps_only_newest_and_counts_replacements():
    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.take(0.1) == 3
    assert slot.take(0.01) is None
    assert slot.replaced == 2


def test_latest_slot_wakes_waiting_worker_and_closes():
    slot = LatestSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    worker.start()
    slot.put("frame")
    worker.join(2.0)
    assert got == ["frame"]
    waiting = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    waiting.start()
    slot.close()
    waiting.join(2.0)
    assert not waiting.is_alive() and got[-1] is None


def published(latency_ms: float, missed: bool, exit_layer: int, now: float,
              messages: int = 1) -> FrameLog:
    """The record of a frame matched and published (`messages` times: stereo publishes two)."""
    return FrameLog(framelog.MATCHED, ended=now,
                    published=[Published(now, latency_ms, missed, exit_layer)] * messages)


def test_frame_stats():
    stats = FrameStats(window=20)
    for i in range(16):
        stats.add(published(float(i), missed=i >= 12, exit_layer=3 if i % 2 else 9, now=i * 0.1))
    for reason in ("invalid", "stamp", "unpaired"):
        stats.add(FrameLog(framelog.DROPPED, reason=reason, ended=2.0))
    stats.add(FrameLog(framelog.ERROR, ended=2.0))
    for _ in range(5):
        stats.add(FrameLog(framelog.SUPERSEDED))
    stats.add(FrameLog(framelog.RESTARTED, ended=2.0))  # nothing published: no trace
    summary = stats.summary(num_layers=9, now=1.5)
    assert summary["latency_p50_ms"] == pytest.approx(7.5)
    assert summary["rate_hz"] == pytest.approx(10.0)
    assert summary["budget_miss_rate"] == pytest.approx(4 / 16)
    # Failures are shares of the 20 frames taken; superseded frames are counted apart.
    assert summary["invalid_rate"] == pytest.approx(3 / 20)
    assert summary["error_rate"] == pytest.approx(1 / 20)
    assert summary["failure_rate"] == pytest.approx(4 / 20)
    assert summary["superseded_rate"] == pytest.approx(5 / 20)  # of the last 20 received
    assert summary["exit_layer_histogram"] == [0, 0, 8, 0, 0, 0, 0, 0, 8]
    assert summary["window_frames"] == 20 and summary["window_published"] == 16


def test_frame_stats_count_every_message_and_a_failure_after_one():
    stats = FrameStats()
    stats.add(published(10.0, missed=False, exit_layer=2, now=0.0, messages=2))  # stereo
    failed = published(30.0, missed=True, exit_layer=1, now=0.1)
    failed.status = framelog.ERROR  # e.g. the debug picture failed after the message was out
    stats.add(failed)
    summary = stats.summary(num_layers=3, now=0.1)
    assert summary["window_published"] == 3 and summary["window_frames"] == 4
    assert summary["error_rate"] == pytest.approx(1 / 4)
    assert summary["exit_layer_histogram"] == [1, 2, 0]
    assert summary["budget_miss_rate"] == pytest.approx(1 / 3)


def test_publish_rate_decays_once_publishing_stalls():
    times = [i * 0.5 for i in range(11)]  # 2 Hz up to t = 5 s
    assert publish_rate(times, now=5.2) == pytest.approx(2.0)
    assert publish_rate(times, now=15.5) == pytest.approx(10 / 15.0)  # 10 s overdue
    assert publish_rate(times, now=1000.0) < 0.02
    assert publish_rate(times[:1], now=5.0) == 0.0  # one frame: not measurable


THRESHOLDS = {name: P.SPECS[name].default for name in (
    "diagnostics_miss_warn", "diagnostics_miss_error", "diagnostics_drop_warn",
    "diagnostics_drop_error", "expected_rate_hz", "diagnostics_rate_warn",
    "diagnostics_rate_error")}


def overloaded(superseded_per_frame: int, frames: int = 20, failed: int = 0,
               rate_hz: float = 2.0) -> FrameStats:
    """A node publishing at `rate_hz` behind a camera `superseded_per_frame + 1` times faster."""
    stats = FrameStats()
    for i in range(frames):
        for _ in range(superseded_per_frame):
            stats.add(FrameLog(framelog.SUPERSEDED))
        stats.add(published(500.0, missed=False, exit_layer=9, now=i / rate_hz))
    for _ in range(failed):
        stats.add(FrameLog(framelog.DROPPED, reason="invalid", ended=frames / rate_hz))
    return stats


def test_superseded_frames_alone_are_never_an_error():
    # Camera at 30 Hz, node at 2 Hz on a CPU: 14 of 15 frames superseded, by design.
    stats = overloaded(superseded_per_frame=14)
    summary = stats.summary(now=9.6)
    assert summary["superseded_rate"] == pytest.approx(14 / 15, abs=0.01)
    assert summary["failure_rate"] == 0.0
    level, message = assess_health(summary, THRESHOLDS, received=300)
    assert level == OK and "superseded" in message
    # Even with every frame but one superseded, over any window.
    stats = overloaded(superseded_per_frame=1000, frames=3)
    level, _ = assess_health(stats.summary(now=1.1), THRESHOLDS, received=3003)
    assert level == OK


# 2 of 22 frames taken (9%): OK; 5 of 25 (20%): WARN; 30 of 50 (60%): ERROR. The 280
# superseded frames around them change nothing.
@pytest.mark.parametrize("failed,expected", [(2, OK), (5, WARN), (30, ERROR)])
def test_failures_are_shares_of_the_frames_taken(failed, expected):
    stats = overloaded(superseded_per_frame=14, failed=failed)
    level, message = assess_health(stats.summary(now=9.6), THRESHOLDS, received=300 + failed)
    assert level == expected
    if expected != OK:
        assert "failed" in message


@pytest.mark.parametrize("expected_rate,level", [(0.0, OK), (2.0, OK), (2.4, OK), (3.0, WARN),
                                                 (4.5, ERROR)])
def test_rate_is_judged_against_the_expected_rate(expected_rate, level):
    stats = overloaded(superseded_per_frame=14, rate_hz=2.0)
    thresholds = {**THRESHOLDS, "expected_rate_hz": expected_rate}
    got, message = assess_health(stats.summary(now=9.6), thresholds, received=300)
    assert got == level
    if level != OK:
        assert f"expected {expected_rate:g} Hz" in message


def test_rate_is_not_judged_before_it_can_be_measured():
    stats = overloaded(superseded_per_frame=0, frames=1)
    thresholds = {**THRESHOLDS, "expected_rate_hz": 30.0}
    assert assess_health(stats.summary(now=0.1), thresholds, received=1)[0] == OK


def test_a_stalled_stream_falls_below_the_expected_rate():
    stats = overloaded(superseded_per_frame=0, rate_hz=10.0)  # 10 Hz up to t = 1.9 s
    thresholds = {**THRESHOLDS, "expected_rate_hz": 10.0}
    assert assess_health(stats.summary(now=1.95), thresholds, received=20)[0] == OK
    level, message = assess_health(stats.summary(now=60.0), thresholds, received=20)
    assert level == ERROR and "expected 10 Hz" in message


def test_stopped_worker_and_budget_misses():
    summary = overloaded(superseded_per_frame=0).summary(now=9.6)
    level, message = assess_health(summary, THRESHOLDS, received=20, worker_stopped="")
    assert level == ERROR and message.startswith("worker stopped")
    level, message = assess_health(summary, THRESHOLDS, received=20,
                                   worker_stopped="SystemExit: 1")
    assert level == ERROR and "worker stopped: SystemExit: 1" in message
    missed = FrameStats()
    for i in range(10):
        missed.add(published(50.0, missed=i < 3, exit_layer=1, now=i * 0.1))
    level, message = assess_health(missed.summary(now=0.95), THRESHOLDS, budget_ms=40.0,
                                   received=10)
    assert level == ERROR and "30% of frames over the 40 ms budget" in message
    # A budget that is off is not judged; a device warning is a WARN.
    level, message = assess_health(missed.summary(now=0.95), THRESHOLDS, received=10,
                                   warnings=["CUDA not available, using the CPU"])
    assert level == WARN and message == "CUDA not available, using the CPU"
    assert assess_health(FrameStats().summary(), THRESHOLDS) == (OK, "waiting for images")


def test_tracker_inherits_and_issues_fresh_ids():
    tracker = Tracker()
    tracker.start(5)
    ids1 = tracker.update(4, np.array([0, 1, 2]), np.array([1, 2, 3]))
    assert list(ids1) == [1, 2, 3]
    # Keypoint 2 of frame 1 carries id 2, keypoint 0 of frame 1 had no track.
    ids2 = tracker.update(3, np.array([2, 0]), np.array([0, 1]))
    assert list(ids2) == [2, 4]
    tracker.start(3)  # a reset never reuses ids
    assert list(tracker.update(2, np.array([0]), np.array([1]))) == [5]
    with pytest.raises(IndexError):
        tracker.update(2, np.array([7]), np.array([0]))
