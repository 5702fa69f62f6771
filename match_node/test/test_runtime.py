import threading

from match_node.runtime import FrameStats, LatestSlot
from match_node.tracker import Tracker

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


def test_frame_stats():
    stats = FrameStats(window=20)
    for i in range(16):
        stats.published(float(i), missed=i >= 12, exit_layer=3 if i % 2 else 9, now=i * 0.1)
    for _ in range(3):
        stats.dropped(now=2.0)
    stats.error(now=2.0)
    summary = stats.summary(num_layers=9)
    assert summary["latency_p50_ms"] == pytest.approx(7.5)
    assert summary["rate_hz"] == pytest.approx(10.0)
    assert summary["budget_miss_rate"] == pytest.approx(4 / 16)
    assert summary["drop_rate"] == pytest.approx(3 / 20)
    assert summary["error_rate"] == pytest.approx(1 / 20)
    assert summary["exit_layer_histogram"] == [0, 0, 8, 0, 0, 0, 0, 0, 8]


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
