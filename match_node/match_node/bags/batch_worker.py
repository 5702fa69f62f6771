"""The worker side of the batch runner (bags/batch.py): one model per worker process, bags and
chunks of bags run into temporary outputs that appear under their final name in one rename.

No Ray import here: `Worker` is a plain class that batch.py makes a Ray actor; everything else
(outputs, done markers) works without Ray, so it is also what a sequential run uses.

Output layout, for a bag written to OUT (a rosbag2 directory):
    OUT.partial-<uuid>/NAME/...     while it is written (NAME = OUT's name, so the .db3/.mcap
                                    inside is named as a single run names it)
    OUT/match_node_batch.json       written into the bag directory last, before the rename:
                                    the bag's summary; its presence marks the output complete
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from . import chunks, offline

DONE_MARKER = "match_node_batch.json"
PARTIAL = ".partial-"


def partial_dir(final: Path) -> Path:
    """A fresh temporary directory name next to `final` (not created)."""
    return final.with_name(f"{final.name}{PARTIAL}{uuid.uuid4().hex[:12]}")


def is_complete(final: Path) -> bool:
    """Whether `final` is a complete output of this runner (its done marker parses)."""
    try:
        summary = json.loads((final / DONE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "messages" in summary


def remove_partial(path: Path | None) -> None:
    if path is not None and path.exists():
        shutil.rmtree(path, ignore_errors=True)


def stale_partials(out_dir: Path) -> list[Path]:
    """Temporary outputs left behind by a killed run (the names this runner gives them)."""
    return sorted(p for p in out_dir.glob(f"*{PARTIAL}*") if p.is_dir()) if out_dir.is_dir() \
        else []


def publish(tmp: Path, final: Path, summary: dict[str, Any]) -> bool:
    """Write the done marker into the bag `tmp/<final.name>` and rename it to `final`.

    False (and the temporary output removed) when `final` exists already: another attempt
    finished it first, so nothing is written twice."""
    bag = tmp / final.name
    marker = bag / DONE_MARKER
    with open(marker.with_suffix(".tmp"), "w", encoding="utf-8") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(marker.with_suffix(".tmp"), marker)
    try:
        os.rename(bag, final)
    except OSError:
        if not is_complete(final):
            raise
        remove_partial(tmp)
        return False
    remove_partial(tmp)
    return True


def write_bag(tmp: Path, final: Path, write: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run `write(path)` into `tmp/<final.name>`, then publish it as `final`."""
    tmp.mkdir(parents=True)
    summary = write(tmp / final.name)
    summary["output"] = str(final)
    publish(tmp, final, summary)
    return summary


class Worker:
    """One worker process: the pipeline is built once, then bags and chunks run with it.

    `threads`: torch and OpenCV threads of this process. `kill_at` is a test hook (bag name, frame,
    marker file): the process exits abruptly (os._exit, as if killed) when it reaches that
    frame of that bag, once (the marker file records that it happened).
    """

    def __init__(self, values: dict[str, Any], threads: int = 1,
                 kill_at: tuple[str, int, str] | None = None) -> None:
        import torch

        from .. import params as P
        from ..engine.pipeline import Pipeline

        if threads > 0:  # the process's whole share: torch's and OpenCV's thread pools
            import cv2
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
        self.values = values
        self.pipeline = Pipeline({k: v for k, v in values.items()
                                  if P.SPECS[k].scope == "pipeline"})
        self.kill_at = kill_at
        self.where = {"host": socket.gethostname(), "pid": os.getpid(), "node": _node_id(),
                      "device": str(self.pipeline.device)}

    def info(self) -> dict[str, Any]:
        return dict(self.where)

    def _where(self) -> dict[str, Any]:
        """Where it ran, and the process's peak memory so far (MB; Linux reports KiB)."""
        import resource
        return {**self.where,
                "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}

    def _callback(self, name: str, key: str, progress) -> Callable:
        done, last = [0], [0.0]

        def frame(_record) -> None:
            done[0] += 1
            if self.kill_at and self.kill_at[0] == name and done[0] == self.kill_at[1]:
                marker = Path(self.kill_at[2])
                if not marker.exists():
                    marker.write_text(f"killed {name} at frame {done[0]} in {os.getpid()}\n")
                    os._exit(17)
            now = time.monotonic()
            if progress is not None and now - last[0] > 0.3:
                last[0] = now
                progress.report.remote(key, done[0])
        return frame

    def run_bag(self, in_bag: str, tmp: str, final: str, topic: str,
                options: dict[str, Any], key: str = "", progress=None) -> dict[str, Any]:
        """The whole bag, as offline.run_offline, into `final` via `tmp`."""
        self.pipeline.reset_running_estimates()
        cpu = time.process_time()
        callback = self._callback(Path(final).name, key, progress)

        def write(path: Path) -> dict[str, Any]:
            return offline.run_offline(in_bag, path, topic, self.values, pipeline=self.pipeline,
                                       progress=callback, **options)
        summary = write_bag(Path(tmp), Path(final), write)
        summary["worker"] = self._where()
        summary["cpu_s"] = round(time.process_time() - cpu, 3)  # this process, all threads
        return summary

    def run_chunk(self, in_bag: str, name: str, topic: str, start: int, stop: int,
                  options: dict[str, Any], key: str = "", progress=None) -> chunks.ChunkResult:
        """Frames [start, stop) of the bag (chunks.run_chunk); nothing is written."""
        self.pipeline.reset_running_estimates()
        cpu = time.process_time()
        result = chunks.run_chunk(in_bag, topic, self.values, self.pipeline, start, stop,
                                  output_topic=options.get("output_topic"),
                                  ground_truth=options.get("ground_truth",
                                                           offline.GROUND_TRUTH_HOMOGRAPHY),
                                  progress=self._callback(name, key, progress))
        result.extra["worker"] = self._where()
        result.extra["cpu_s"] = round(time.process_time() - cpu, 3)
        return result


def _node_id() -> str:
    try:
        import ray
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return ""


def stitch_bag(in_bag: str, tmp: Path, final: Path, topic: str, results: list,
               options: dict[str, Any]) -> dict[str, Any]:
    """Stitch a bag's chunk results (chunks.stitch) and publish the output; raises
    chunks.ChunkMismatch when the chunks cannot reproduce a single run."""
    from . import rosbag as bags

    started = time.perf_counter()
    stitched = chunks.stitch(results)
    extra = dict(results[0].extra)
    extra.pop("worker", None)
    extra.pop("cpu_s", None)
    in_topics = bags.topics(in_bag)
    copy = offline.copy_topics_of(in_bag, in_topics, [topic], options.get("copy_topics"))
    storage = options.get("storage") or extra["storage"]
    extra.update(storage=storage, copied_topics=sorted(copy))

    def write(path: Path) -> dict[str, Any]:
        count = chunks.write_stitched(in_bag, path, topic, extra["output_topic"], stitched,
                                      storage, copy)
        summary = offline.summarise(stitched.log, count, stitched.errors, extra)
        summary["wall_s"] = round(time.perf_counter() - started, 3)
        summary["chunks"] = [[r.start, r.stop] for r in results]
        summary["workers"] = [r.extra.get("worker") for r in results]
        summary["cpu_s"] = round(sum(r.extra.get("cpu_s", 0.0) for r in results), 3)
        return summary
    return write_bag(tmp, final, write)
