"""The driver loop of the batch runner (bags/batch.py): the queue of tasks (whole bags or
chunks), one Ray actor per worker kept busy, lost workers' tasks retried, chunked bags
stitched when their last chunk is in. Ray is imported inside the functions."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import batch_worker as W
from . import chunks

T0 = [0.0]  # when run_batch started (perf_counter): the reports' time origin
GIVE_UP_S = 300.0  # a worker whose pings fail this long (it cannot start) is given up
READY_S = 60.0  # how long the start waits for every worker before going on with those ready


@dataclass
class Bag:
    input: Path
    output: Path
    state: str = "pending"        # pending, running, done, skipped, failed
    frames: int = 0               # image messages in the bag
    messages: int = 0
    retries: int = 0
    error: str = ""
    chunks: list[tuple[int, int]] = field(default_factory=list)
    results: dict[int, Any] = field(default_factory=dict)
    fallback: str = ""            # why the chunks were not stitched (the bag ran whole)
    workers: list[dict] = field(default_factory=list)
    started: float = 0.0
    wall_s: float = 0.0
    done_frames: int = 0
    cpu_s: float = 0.0            # CPU time of the worker processes on it (the last attempt)

    def report(self) -> dict[str, Any]:
        return {"input": str(self.input), "output": str(self.output), "state": self.state,
                "frames": self.frames, "messages": self.messages, "retries": self.retries,
                "chunks": len(self.chunks) if self.chunks else 0,
                "chunk_fallback": self.fallback or None, "error": self.error or None,
                "workers": self.workers, "wall_s": round(self.wall_s, 3),
                "cpu_s": round(self.cpu_s, 3),
                "started_s": round(self.started - T0[0], 3) if self.started else None,
                "ended_s": (round(self.started + self.wall_s - T0[0], 3)
                            if self.started else None)}


@dataclass
class Task:
    bag: int
    chunk: int | None             # None: the whole bag
    attempt: int = 0
    tmp: Path | None = None

    @property
    def key(self) -> str:
        return f"{self.bag}:{self.chunk}:{self.attempt}"


class _Progress:
    """Frames done per task, reported by the workers, read by the driver (a Ray actor)."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}

    def report(self, key: str, frames: int) -> None:
        self.done[key] = frames

    def snapshot(self) -> dict[str, int]:
        return dict(self.done)


def _retryable(error: Exception) -> bool:
    """A lost worker (killed, out of memory, node gone) rather than an error in the bag."""
    from ray import exceptions as E

    if isinstance(error, E.RayTaskError):
        cause = getattr(error, "cause", None)
        return isinstance(cause, MemoryError) or "out of memory" in str(cause).lower()
    return isinstance(error, (E.RayActorError, E.WorkerCrashedError, E.NodeDiedError,
                              E.ObjectLostError, E.OutOfMemoryError, E.ActorUnavailableError))


def _error_line(error: Exception) -> str:
    """One line: the innermost exception of a (remote) traceback, e.g. 'BagError: ...'."""
    import re

    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines
             if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*", line)]
    line = named[-1] if named else (lines[0] if lines else type(cause).__name__)
    return line[:300]


def drive(plan: list[Bag], tasks: deque[Task], topic: str, values: dict[str, Any],
           options: dict[str, Any], workers: int, cpus_per_worker: float,
           gpus_per_worker: float | None, threads: int | None, retries: int, quiet: bool,
           kill_at) -> float:
    """Keep every worker busy with the next task; retry lost ones; stitch chunked bags.
    Returns when the workers were ready (perf_counter)."""
    import ray

    from .progress import Bars

    if gpus_per_worker is None:
        gpus = ray.cluster_resources().get("GPU", 0)
        gpus_per_worker = min(1.0, gpus / workers) if gpus else 0.0
    actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=-1,
                       max_task_retries=0)(W.Worker)
    pool = [actor.remote(values, threads or max(1, int(cpus_per_worker)), kill_at)
            for _ in range(workers)]
    progress = None if quiet else ray.remote(num_cpus=0)(_Progress).remote()
    bars = Bars(plan, quiet)
    # The models load before the clock of the first bag starts. Workers the cluster cannot
    # place yet (too few CPUs or GPUs) join when they can: the wait is for the first one.
    starting = {worker.info.remote(): worker for worker in pool}
    ready, waiting = ray.wait(list(starting), num_returns=len(starting), timeout=READY_S)
    if not ready:
        ready, waiting = ray.wait(list(starting), num_returns=1)
    ready_at = time.perf_counter()
    idle, pings, later, last_error = [], {}, [], ""
    inflight: dict[Any, tuple[Any, Task | None]] = {r: (starting[r], None) for r in waiting}
    for ref in ready:
        inflight[ref] = (starting[ref], None)  # answered: taken as a ping below
    while tasks or any(task is not None for _, task in inflight.values()):
        if not pool:  # every worker is lost for good (e.g. its model cannot load)
            for task in tasks:
                _fail(plan[task.bag], f"no worker left to run it ({last_error})", bars)
            break
        while idle and tasks:
            task = tasks.popleft()
            bag = plan[task.bag]
            if bag.state == "failed":
                continue
            if bag.state == "pending":
                bag.state, bag.started = "running", time.perf_counter()
            worker = idle.pop(0)
            if task.chunk is None:
                task.tmp = W.partial_dir(bag.output)
                ref = worker.run_bag.remote(str(bag.input), str(task.tmp), str(bag.output),
                                            topic, options, task.key, progress)
            else:
                start, stop = bag.chunks[task.chunk]
                ref = worker.run_chunk.remote(str(bag.input), bag.output.name, topic, start,
                                              stop, options, task.key, progress)
            inflight[ref] = (worker, task)
        for due, worker in list(later):  # pings of failed workers, once a second
            if due <= time.monotonic():
                later.remove((due, worker))
                inflight[worker.info.remote()] = (worker, None)
        if not inflight:
            time.sleep(0.2)
            continue
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
        if progress is not None:
            bars.update(ray.get(progress.snapshot.remote()),
                        [v for v in inflight.values() if v[1] is not None])
        for ref in ready:
            worker, task = inflight.pop(ref)
            if task is None:  # a ping of a restarted worker
                try:
                    ray.get(ref)
                    idle.append(worker)
                    pings.pop(id(worker), None)
                except Exception as error:  # noqa: BLE001 - restarting: ask again, or give up
                    last_error = _error_line(error)
                    first = pings.setdefault(id(worker), time.monotonic())
                    # A worker whose constructor failed (e.g. no weights) never starts.
                    broken = "creation task" in str(error)
                    if not broken and time.monotonic() - first < GIVE_UP_S:
                        later.append((time.monotonic() + 1.0, worker))
                    else:
                        pool.remove(worker)
                continue
            bag = plan[task.bag]
            try:
                result = ray.get(ref)
                idle.append(worker)
            except Exception as error:  # noqa: BLE001 - every failure is reported per bag
                W.remove_partial(task.tmp)
                if _retryable(error):
                    # Ray restarts the worker; it takes tasks again once it answers.
                    inflight[worker.info.remote()] = (worker, None)
                else:
                    idle.append(worker)
                if _retryable(error) and task.attempt < retries and bag.state != "failed":
                    bag.retries += 1
                    tasks.appendleft(Task(task.bag, task.chunk, task.attempt + 1))
                    bars.note(bag, f"retry {bag.retries}: {_error_line(error)}")
                else:
                    _fail(bag, _error_line(error), bars)
                continue
            if bag.state == "failed":
                continue
            if task.chunk is None:
                _done(bag, result, bars)
                continue
            bag.results[task.chunk] = result
            bag.done_frames += result.stop - result.start
            if len(bag.results) == len(bag.chunks):
                _stitch(bag, topic, options, tasks, task.bag, bars)
    bars.close()
    return ready_at


def _done(bag: Bag, summary: dict[str, Any], bars) -> None:
    bag.state, bag.messages = "done", summary["messages"]
    bag.workers = summary.get("workers") or [summary.get("worker")]
    bag.cpu_s = summary.get("cpu_s", 0.0)
    bag.wall_s = time.perf_counter() - bag.started
    bag.done_frames = bag.frames
    bars.finish(bag)


def _fail(bag: Bag, error: str, bars) -> None:
    bag.state, bag.error = "failed", error
    bag.wall_s = time.perf_counter() - bag.started
    bars.finish(bag)


def _stitch(bag: Bag, topic: str, options: dict[str, Any], tasks: deque[Task], index: int,
            bars) -> None:
    """All chunks are in: write the stitched output, or run the bag whole when they differ
    from what a single run does (chunks.ChunkMismatch)."""
    results = [bag.results[c] for c in range(len(bag.chunks))]
    tmp = W.partial_dir(bag.output)
    try:
        summary = W.stitch_bag(str(bag.input), tmp, bag.output, topic, results, options)
    except chunks.ChunkMismatch as error:
        W.remove_partial(tmp)
        bag.fallback = str(error)
        bag.results, bag.done_frames = {}, 0
        tasks.append(Task(index, None))
        bars.note(bag, f"chunks differ from one run ({error}); running it whole")
        return
    except Exception as error:  # noqa: BLE001 - the bag fails alone
        import traceback
        traceback.print_exc()
        W.remove_partial(tmp)
        _fail(bag, f"{type(error).__name__}: {error}".splitlines()[0], bars)
        return
    bag.results = {}
    _done(bag, summary, bars)
