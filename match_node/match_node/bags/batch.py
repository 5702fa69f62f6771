"""Many bags on a Ray cluster: the offline runner (bags/offline.py) as Ray tasks.

    python -m match_node.bags.batch BAGS... --out-dir DIR --topic /camera/image_raw
        [--list FILE] [--config FILE.yaml] [--set name=value ...] [--workers N]
        [--address ADDR] [--cpus-per-worker N] [--gpus-per-worker F] [--threads N]
        [--resume] [--retries K] [--chunk-frames N] [--chunk-inexact]
        [--summary FILE.json] [--quiet]

BAGS are bag paths or globs; `--list` adds one per line (# comments). Each bag's output is
DIR/<bag name> (a rosbag2 directory, what offline.py writes, with the bag's summary in
DIR/<name>/match_node_batch.json).

Ray: a local cluster is started on demand (no dashboard, a small object store) unless
`--address` joins an existing one (`ray start --head`; inputs and DIR must then be on a file
system every node sees). One actor per worker builds the pipeline once and runs bags (or
chunks of bags) from the driver's queue; each asks `--cpus-per-worker` CPUs and, where the
cluster has GPUs, `--gpus-per-worker` GPUs (default: the GPUs shared among the workers, at
most one each; 0 keeps the workers on the CPU).

Outputs are written under a temporary name (DIR/<name>.partial-<id>) and renamed when
complete, so DIR never holds half a bag. `--resume` skips bags whose output is complete. A
worker that dies (killed, out of memory, its node lost) is restarted by Ray and its bag
retried up to `--retries` times; an error in a bag's data (corrupt file, missing topic) fails
that bag only. The summary (stdout and `--summary`, default DIR/batch_summary.json) lists
each bag's state (done / skipped / failed), retries, frames, messages and error; the exit
code is 1 when any bag failed.

`--chunk-frames N` splits bags longer than N frames into chunks run in parallel and
stitched so that messages equal a single run's (see bags/chunks.py for what is carried over,
what is checked, and the parameters for which it cannot be identical: those are refused
unless `--chunk-inexact`).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from . import batch_worker as W
from . import chunks, offline, rosbag as bags
from .batch_driver import T0, Bag, Task, drive
from .. import params as P

SUMMARY_NAME = "batch_summary.json"
OBJECT_STORE_BYTES = 200 * 1024 * 1024


def expand_bags(patterns: list[str], list_file: str | None = None) -> list[Path]:
    """Paths, globs and the lines of a list file, in order, without repeats."""
    items = list(patterns)
    if list_file:
        for line in Path(list_file).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                items.append(line)
    found: list[Path] = []
    for item in items:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise FileNotFoundError(f"no bag matches {item!r}")
        for match in matches:
            path = Path(match)
            if path not in found:
                found.append(path)
    return found


def output_name(bag: Path) -> str:
    name = bag.name.rstrip("/")
    return name[: -len(bag.suffix)] if bag.suffix in (".db3", ".mcap") else name


def start_ray(address: str | None, cpus: int, quiet: bool):
    """Connect to `address`, or start a light local cluster with `cpus` CPUs."""
    import logging

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Workers import match_node from where this process does.
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    kwargs: dict[str, Any] = dict(log_to_driver=not quiet, logging_level=logging.WARNING,
                                  configure_logging=True)
    if address:
        return ray.init(address=address, **kwargs)
    return ray.init(num_cpus=cpus, include_dashboard=False,
                    object_store_memory=OBJECT_STORE_BYTES, **kwargs)


def run_batch(inputs: list[Path], out_dir: str | Path, topic: str,
              values: dict[str, Any] | None = None, *, workers: int = 1,
              address: str | None = None, cpus_per_worker: float = 1,
              gpus_per_worker: float | None = None, threads: int | None = None,
              resume: bool = False, retries: int = 2, chunk_frames: int = 0,
              chunk_inexact: bool = False, options: dict[str, Any] | None = None,
              quiet: bool = False, kill_at: tuple[str, int, str] | None = None,
              shutdown: bool = True) -> dict[str, Any]:
    """Run every bag of `inputs` into `out_dir` on Ray; returns the batch summary.

    `options` go to offline.run_offline (output_topic, storage, copy_topics, ground_truth);
    `kill_at` is the worker's test hook (batch_worker.Worker). A Ray session started here
    is shut down at the end (unless `shutdown` is False); one already running is used."""
    import ray

    started = T0[0] = time.perf_counter()
    values = P.validate(values or {})
    options = dict(options or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in W.stale_partials(out_dir):
        W.remove_partial(stale)
    if chunk_frames > 0 and not chunk_inexact and chunks.inexact_reasons(values):
        raise P.ParameterError("chunks would not equal a single run: "
                               + "; ".join(chunks.inexact_reasons(values))
                               + " (or accept the difference: --chunk-inexact)")
    names = [output_name(p) for p in inputs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise P.ParameterError(f"several bags would write the same output: {', '.join(twice)}")

    plan: list[Bag] = [Bag(p, out_dir / n) for p, n in zip(inputs, names)]
    tasks: deque[Task] = deque()
    for index, bag in enumerate(plan):
        if W.is_complete(bag.output):
            if resume:
                bag.state = "skipped"
                summary = json.loads((bag.output / W.DONE_MARKER).read_text(encoding="utf-8"))
                bag.frames, bag.messages = summary.get("frames", 0), summary.get("messages", 0)
                continue
            bag.state, bag.error = "failed", f"{bag.output} exists already (--resume skips it)"
            continue
        if bag.output.exists():
            bag.state, bag.error = "failed", f"{bag.output} exists and is not a complete output"
            continue
        try:
            info = bags.topics(bag.input)
            if topic not in info or info[topic].msgtype not in bags.IMAGE_TYPES:
                raise bags.BagError(f"no image topic {topic}")
            bag.frames = info[topic].count
        except Exception as error:  # noqa: BLE001 - any unreadable bag fails alone
            bag.state, bag.error = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
            continue
        bag.chunks = chunks.plan(bag.frames, chunk_frames) if chunk_frames > 0 else []
        if len(bag.chunks) > 1:
            tasks.extend(Task(index, c) for c in range(len(bag.chunks)))
        else:
            bag.chunks = []
            tasks.append(Task(index, None))

    started_here = bool(tasks) and not ray.is_initialized()
    if started_here:
        start_ray(address, max(1, int(workers * cpus_per_worker)), quiet)
    ready = finished = None
    try:
        if tasks:
            ready = drive(plan, tasks, topic, values, options, workers, cpus_per_worker,
                           gpus_per_worker, threads, retries, quiet, kill_at)
            finished = time.perf_counter()  # the last bag is written; Ray's shutdown is not work
    finally:
        if shutdown and started_here and ray.is_initialized():
            ray.shutdown()
    states = [b.state for b in plan]
    frames = sum(b.frames for b in plan if b.state == "done")
    end = time.perf_counter()
    wall = end - started
    # From the workers being ready (models loaded) to the last bag written: the throughput
    # that scales (Ray's start, the model loads and Ray's shutdown are fixed costs).
    processing = finished - ready if ready and finished else 0.0
    return {"bags": [b.report() for b in plan], "out_dir": str(out_dir),
            "done": states.count("done"), "skipped": states.count("skipped"),
            "failed": states.count("failed"), "frames": frames,
            "messages": sum(b.messages for b in plan if b.state in ("done", "skipped")),
            "retries": sum(b.retries for b in plan), "workers": workers,
            "wall_s": round(wall, 3), "frames_per_s": round(frames / wall, 3) if wall else 0.0,
            "cpu_s": round(sum(b.cpu_s for b in plan), 3),
            "processing_s": round(processing, 3),
            "processing_frames_per_s": round(frames / processing, 3) if processing else 0.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m match_node.bags.batch", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bags", nargs="*", help="input bags: paths or globs")
    parser.add_argument("--list", help="a file with one bag path or glob per line")
    parser.add_argument("--out-dir", required=True, help="directory of the output bags")
    offline.add_run_arguments(parser, "each input's")
    parser.add_argument("--workers", type=int, help="worker processes (actors); default: "
                        "the local CPUs, or the cluster's CPUs / --cpus-per-worker")
    parser.add_argument("--address", help="join this Ray cluster (default: start one here)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float,
                        help="default: the cluster's GPUs shared among the workers (max 1)")
    parser.add_argument("--threads", type=int, help="torch and OpenCV threads per worker "
                        "(default: --cpus-per-worker)")
    parser.add_argument("--resume", action="store_true", help="skip bags already done")
    parser.add_argument("--retries", type=int, default=2,
                        help="attempts after a worker is lost (default 2)")
    parser.add_argument("--chunk-frames", type=int, default=0,
                        help="split bags longer than this into chunks (0: off)")
    parser.add_argument("--chunk-inexact", action="store_true",
                        help="chunk even where the result cannot equal a single run")
    parser.add_argument("--summary", help=f"JSON summary (default: OUT_DIR/{SUMMARY_NAME})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        values = offline.parameters_from(args)
        inputs = expand_bags(args.bags, args.list)
    except (P.ParameterError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not inputs:
        print("error: no bags given", file=sys.stderr)
        return 2
    workers = args.workers
    if workers is None:
        if args.address:
            import ray
            start_ray(args.address, 0, args.quiet)
            workers = max(1, int(ray.cluster_resources().get("CPU", 1) // args.cpus_per_worker))
        else:
            workers = max(1, min(len(inputs), os.cpu_count() or 1))
    # Test hook: MATCH_NODE_BATCH_KILL=<bag name>:<frame>:<marker file> kills the worker
    # running that bag at that frame, once (batch_worker.Worker).
    hook = os.environ.get("MATCH_NODE_BATCH_KILL", "").split(":", 2)
    kill_at = (hook[0], int(hook[1]), hook[2]) if len(hook) == 3 else None
    options = {k: v for k, v in (("output_topic", args.output_topic),
                                 ("storage", args.storage)) if v}
    try:
        summary = run_batch(inputs, args.out_dir, args.topic, values, workers=workers,
                            address=args.address, cpus_per_worker=args.cpus_per_worker,
                            gpus_per_worker=args.gpus_per_worker, threads=args.threads,
                            resume=args.resume, retries=args.retries,
                            chunk_frames=args.chunk_frames, chunk_inexact=args.chunk_inexact,
                            options=options, quiet=args.quiet, kill_at=kill_at)
    except P.ParameterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = offline.write_summary(args.summary or Path(args.out_dir) / SUMMARY_NAME, summary)
    for bag in summary["bags"]:
        print(f"[batch] {bag['state']:>7s} {bag['input']}: {bag['messages']} messages, "
              f"{bag['frames']} frames, {bag['retries']} retries"
              + (f" - {bag['error']}" if bag["error"] else ""), file=sys.stderr)
    print(f"[batch] {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} "
          f"failed; {summary['frames_per_s']:.2f} frames/s (summary {path})", file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
