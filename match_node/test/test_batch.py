"""The batch runner on Ray (bags/batch.py): the same messages as one offline run per bag,
chunks stitched into the single-run result, a killed worker's bag retried without losing or
doubling anything, a corrupt bag reported while the others finish, --resume."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("ray")

from match_node import params as P  # noqa: E402
from match_node.bags import batch, batch_worker, chunks, make as make_bag  # noqa: E402
from match_node.bags import rosbag as bags  # noqa: E402
from match_node.bags import offline  # noqa: E402
from match_node.bags.offline import run_offline  # noqa: E402
from test_offline import comparable  # noqa: E402
from test_offline import correspondences as offline_messages  # noqa: E402

TOPIC = make_bag.MONO_IMAGE
PARAMS = {"device": "cpu", "max_keypoints": 256, "allow_download": False}
# What chunks reproduce exactly (chunks.inexact_reasons): no refinement chain, no guard.
CHUNK_PARAMS = {**PARAMS, "refine": "none", "exit_guard": 0.0}
FRAMES = 6
# Byte-identical floats need the same torch thread count as the sequential run here
# (reductions are split by thread).
THREADS = torch.get_num_threads()


@pytest.fixture(scope="module")
def ray_session():
    import ray
    batch.start_ray(None, 2, quiet=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_in")
    return [make_bag.mono_bag(root / f"bag{i}", num_frames=FRAMES, size=(160, 120), step=4,
                              seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def sequential(inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_seq")
    return {bag.name: (root / bag.name, run_offline(bag, root / bag.name, TOPIC, PARAMS))
            for bag in inputs}


def correspondences(path) -> list[tuple[int, dict]]:
    """(log time, every field but the timings) of each Correspondences message."""
    return [(t, comparable(m)) for t, m in offline_messages(path)]


def assert_same_bag(path, reference) -> None:
    got, want = correspondences(path), correspondences(reference)
    assert len(got) == len(want) > 0
    for (t_got, m_got), (t_want, m_want) in zip(got, want):
        assert t_got == t_want
        assert m_got == m_want
    # the copied topics too
    others = [t for t in bags.topics(reference) if t != "/camera/correspondences"]
    assert sorted(others) == sorted(t for t in bags.topics(path) if t != "/camera/correspondences")
    for topic in others:
        assert ([(m.log_time_ns, m.data) for m in bags.messages(path, [topic])]
                == [(m.log_time_ns, m.data) for m in bags.messages(reference, [topic])])


def no_partials(out_dir) -> bool:
    return not [p for p in out_dir.iterdir() if batch_worker.PARTIAL in p.name]


def test_ray_equals_sequential(ray_session, inputs, sequential, tmp_path):
    out = tmp_path / "out"
    summary = batch.run_batch(inputs, out, TOPIC, PARAMS, workers=2, quiet=True,
                              threads=THREADS, shutdown=False)
    assert (summary["done"], summary["failed"], summary["retries"]) == (3, 0, 0)
    assert summary["frames"] == 3 * FRAMES and summary["messages"] == 3 * (FRAMES - 1)
    assert len({w["pid"] for b in summary["bags"] for w in b["workers"]}) == 2  # both worked
    for bag in inputs:
        reference, ref_summary = sequential[bag.name]
        assert_same_bag(out / bag.name, reference)
        done = json.loads((out / bag.name / batch_worker.DONE_MARKER).read_text())
        for key in ("frames", "messages", "matches_per_frame", "exit_layers", "restarts",
                    "precision_per_frame", "precision_at_3px"):
            assert done[key] == ref_summary[key], key
    assert no_partials(out)


@pytest.mark.parametrize("matcher", ["lightglue", "auto"])
def test_chunked_equals_sequential(ray_session, tmp_path, matcher):
    """Chunks of 4 frames stitched = one run. With matcher 'auto' these small images are
    textureless to the switch, whose hysteresis state then differs at a chunk border: the
    stitch refuses and the bag runs whole (the result is still the single run's)."""
    params = {**CHUNK_PARAMS, "matcher": matcher}
    bag = make_bag.mono_bag(tmp_path / "long", num_frames=11, size=(160, 120), step=4)
    reference = tmp_path / "single"
    ref_summary = run_offline(bag, reference, TOPIC, params)
    summary = batch.run_batch([bag], tmp_path / "out", TOPIC, params, workers=2,
                              chunk_frames=4, quiet=True, threads=THREADS, shutdown=False)
    report = summary["bags"][0]
    assert report["state"] == "done" and report["chunks"] == 3, report
    if matcher == "lightglue":
        assert report["chunk_fallback"] is None
        assert len({w["pid"] for w in report["workers"]}) == 2  # chunks ran in parallel
    else:
        assert "texture switch" in report["chunk_fallback"]
    assert_same_bag(tmp_path / "out" / "long", reference)
    ids = [set(np.frombuffer(m["track_id"][1], np.uint64).tolist())
           for _, m in correspondences(tmp_path / "out" / "long")]
    assert len(ids) == 10  # messages of frames 1..10; tracks run across the borders 3|4, 7|8
    if matcher == "lightglue":
        assert ids[2] & ids[3] and ids[6] & ids[7] and ids[1] & ids[2] & ids[3]
    done = json.loads((tmp_path / "out" / "long" / batch_worker.DONE_MARKER).read_text())
    for key in ("frames", "messages", "matches_per_frame", "restarts", "precision_per_frame"):
        assert done[key] == ref_summary[key], key
    assert no_partials(tmp_path / "out")


def test_stitch_restarts_and_drops(tmp_path):
    """Without Ray: chunks run in one process and stitched, across a stamp jump at a chunk's
    first frame (4), an unusable frame (6) and a stamp jump at an overlap frame (7), whose
    drop the message of frame 8 reports."""
    from match_node.engine.pipeline import Pipeline
    from match_node.groundtruth.planar import make_sequence

    sequence = make_sequence("coffee", num_frames=12, size=(160, 120), step=4)
    stamps = make_bag.stamps(12, 10.0)
    for jump_at in (4, 7):  # a jump beyond max_stamp_jump_s (10 s) restarts tracking
        stamps[jump_at:] = [t + 11_000_000_000 for t in stamps[jump_at:]]
    K = make_bag.nominal_K(160, 120)
    plain = make_bag.write_sequence_bag(tmp_path / "plain", list(sequence.frames), stamps, K)
    # Frame 6 replaced by a 320x240 image, over max_input_pixels below: dropped as unusable.
    big = make_bag.write_sequence_bag(tmp_path / "big", [np.zeros((240, 320, 3), np.uint8)],
                                      [stamps[6]], K)
    big_data = next(bags.messages(big, [TOPIC])).data
    bag = tmp_path / "jumps"
    with bags.BagWriter(bag) as writer:
        connections, position = {}, -1
        for message in bags.messages(plain):
            if message.topic == TOPIC:
                position += 1
                if position == 6:
                    message = dataclasses.replace(message, data=big_data)
            offline.copy_message(writer, connections, message)
    params = {**CHUNK_PARAMS, "matcher": "lightglue", "max_input_pixels": 160 * 120}
    reference = tmp_path / "single"
    ref_summary = run_offline(bag, reference, TOPIC, params)
    values = P.validate(params)
    pipeline = Pipeline({k: v for k, v in values.items() if P.SPECS[k].scope == "pipeline"})
    results = []
    for start, stop in chunks.plan(12, 4):
        pipeline.reset_running_estimates()
        results.append(chunks.run_chunk(bag, TOPIC, values, pipeline, start, stop))
    out = tmp_path / "stitched"
    summary = batch_worker.stitch_bag(str(bag), tmp_path / "tmp", out, TOPIC, results, {})
    assert_same_bag(out, reference)
    got = [m for _, m in correspondences(out)]  # frames 1, 2, 3, 5, 8, 9, 10, 11
    assert len(got) == 8
    assert (got[3]["frame_index"], got[3]["tracks_reset"]) == (5, True)
    # frame 6 was never pushed: frame 8 is the stream's 7th
    assert (got[4]["frame_index"], got[4]["dropped_frames"], got[4]["tracks_reset"]) == \
        (7, 1, True)
    ids = [set(np.frombuffer(m["track_id"][1], np.uint64).tolist()) for m in got]
    assert not got[5]["tracks_reset"] and ids[5] & ids[4]  # tracks continue from frame 8
    assert not ids[4] & ids[3]  # after the restart at 7: new ids, never reused
    for key in ("frames", "messages", "dropped", "restarts", "matches_per_frame"):
        assert summary[key] == ref_summary[key], key
    assert summary["restarts"] == 3 and summary["dropped"] == 1


def test_chunk_plan_and_refusal(tmp_path):
    assert chunks.plan(11, 4) == [(0, 4), (4, 8), (8, 11)]
    assert chunks.plan(9, 4) == [(0, 4), (4, 9)]  # no chunk under half a chunk
    assert chunks.plan(4, 4) == [(0, 4)] and chunks.plan(7, 0) == [(0, 7)]
    assert chunks.inexact_reasons(P.validate(CHUNK_PARAMS)) == []
    assert len(chunks.inexact_reasons(P.validate(PARAMS))) == 2  # refine, exit guard
    with pytest.raises(P.ParameterError, match="refine"):
        batch.run_batch([tmp_path / "x"], tmp_path / "out", TOPIC, PARAMS, chunk_frames=4,
                        quiet=True, shutdown=False)


def test_killed_worker_is_retried(ray_session, inputs, sequential, tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "killed"
    summary = batch.run_batch(inputs, out, TOPIC, PARAMS, workers=2, retries=2, quiet=True,
                              kill_at=("bag1", 3, str(marker)), threads=THREADS,
                              shutdown=False)
    assert marker.exists()  # the worker did die at frame 3 of bag1
    by_name = {b["output"].rsplit("/", 1)[-1]: b for b in summary["bags"]}
    assert by_name["bag1"]["retries"] == 1 and summary["retries"] == 1
    assert [b["state"] for b in summary["bags"]] == ["done"] * 3
    assert no_partials(out)
    for bag in inputs:
        times = [t for t, _ in correspondences(out / bag.name)]
        assert len(times) == len(set(times)) == FRAMES - 1  # each message exactly once
        assert_same_bag(out / bag.name, sequential[bag.name][0])


def test_corrupt_bag_and_resume(ray_session, inputs, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(inputs[0], corrupt)
    for db in corrupt.glob("*.db3"):
        db.write_bytes(b"not a database" * 100)
    out = tmp_path / "out"
    bag_list = tmp_path / "bags.txt"
    bag_list.write_text(f"# a list file\n{corrupt}\n{inputs[1]}\n")
    run = [*batch.expand_bags([str(inputs[0].parent / "bag[02]")], str(bag_list))]
    summary = batch.run_batch(run, out, TOPIC, PARAMS, workers=2, quiet=True, shutdown=False)
    states = {b["input"].rsplit("/", 1)[-1]: b for b in summary["bags"]}
    assert set(states) == {"bag0", "bag2", "corrupt", "bag1"}
    assert states["corrupt"]["state"] == "failed" and states["corrupt"]["error"]
    assert "\n" not in states["corrupt"]["error"]
    assert [states[n]["state"] for n in ("bag0", "bag1", "bag2")] == ["done"] * 3
    assert (summary["done"], summary["failed"]) == (3, 1)
    assert no_partials(out) and not (out / "corrupt").exists()

    # --resume: the three done bags are skipped (by count), the corrupt one fails again.
    again = batch.run_batch(run, out, TOPIC, PARAMS, workers=2, resume=True, quiet=True,
                            shutdown=False)
    assert (again["done"], again["skipped"], again["failed"]) == (0, 3, 1)
    assert again["messages"] == 3 * (FRAMES - 1)
    # without --resume a finished output is never overwritten
    plain = batch.run_batch([inputs[1]], out, TOPIC, PARAMS, quiet=True, shutdown=False)
    assert plain["failed"] == 1 and "--resume" in plain["bags"][0]["error"]


def test_cli_missing_topic(inputs, tmp_path):
    """The command line: a bag without the topic fails alone, exit code 1, summary file."""
    summary_path = tmp_path / "s.json"
    code = batch.main([str(inputs[2]), "--out-dir", str(tmp_path / "out"), "--topic",
                       "/nope/image_raw", "--quiet", "--summary", str(summary_path),
                       *sum((["--set", f"{k}={str(v).lower()}"] for k, v in PARAMS.items()),
                            [])])
    assert code == 1
    summary = json.loads(summary_path.read_text())
    assert summary["failed"] == 1 and "no image topic" in summary["bags"][0]["error"]


def test_workers_that_cannot_start(ray_session, inputs, tmp_path):
    """A worker whose pipeline cannot be built (here: a weights file that does not exist)
    fails every bag with that error instead of waiting for it."""
    params = {**PARAMS, "extractor_weights": str(tmp_path / "missing.pth")}
    summary = batch.run_batch(inputs[:2], tmp_path / "out", TOPIC, params, workers=1,
                              quiet=True, shutdown=False)
    assert summary["failed"] == 2
    assert all("missing.pth" in b["error"] for b in summary["bags"]), summary["bags"]
