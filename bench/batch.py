"""Throughput of the batch runner on Ray (match_node.bags.batch): 1 and 2 workers on this
machine, and 2 workers on a Ray cluster of two local node processes.

    python -m bench.batch [--bags 4] [--frames 15] [--size 320x240] [--repeats 2]
                          [--max-keypoints 512] [--no-cluster] [--output bench/results]

The bags are real-photo sequences (bags/make.py: a camera path over coffee, astronaut,
chelsea, ... with exact homographies). Every worker is one process with one torch thread and
one model (CPU). Throughput is frames / processing time, from the workers being ready (models
loaded) to the last bag written; the end-to-end wall time (Ray start, model loading) is shown
too. The cluster run starts `ray start --head --num-cpus 1` and `ray start --address ...
--num-cpus 1` as subprocesses (a temporary Ray directory), joins it with `--address`, reports
which node ran which bag, and stops exactly the processes of that directory.

Writes batch.md and batch.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from match_node.bags import batch, make as make_bag

PHOTOS = ("coffee", "astronaut", "chelsea", "coffee", "astronaut", "chelsea")
TOPIC = make_bag.MONO_IMAGE
CLUSTER = "Ray cluster: 2 local nodes x 1 CPU"
PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "match_node"


def make_bags(root: Path, count: int, frames: int, size: tuple[int, int]) -> list[Path]:
    return [make_bag.mono_bag(root / f"bag{i}", num_frames=frames, size=size, step=5,
                              photo=PHOTOS[i % len(PHOTOS)], seed=i) for i in range(count)]


def one_run(inputs: list[Path], out: Path, params: dict[str, Any], workers: int,
            address: str | None = None) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    summary = batch.run_batch(inputs, out, TOPIC, params, workers=workers, address=address,
                              threads=1, quiet=True)
    assert summary["done"] == len(inputs), summary
    summary["loadavg_before"] = round(load, 2)
    return summary


# --- a two-node local cluster -------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def start_cluster(temp: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    port = free_port()
    common = ["--num-cpus", "1", "--object-store-memory", str(batch.OBJECT_STORE_BYTES),
              "--disable-usage-stats"]
    subprocess.run([ray_cli(), "start", "--head", "--port", str(port), "--temp-dir",
                    str(temp), "--include-dashboard=false", *common], env=env, check=True,
                   capture_output=True, timeout=120)
    address = f"127.0.0.1:{port}"
    subprocess.run([ray_cli(), "start", "--address", address, *common], env=env, check=True,
                   capture_output=True, timeout=120)
    return address


def cluster_pids(temp: Path) -> list[int]:
    """Processes whose command line names the cluster's temporary directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if str(temp) in cmdline:
            pids.append(int(entry.name))
    return pids


def stop_cluster(temp: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = cluster_pids(temp)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + 10
        while pids and time.time() < deadline and cluster_pids(temp):
            time.sleep(0.5)
    shutil.rmtree(temp, ignore_errors=True)


def cluster_run(inputs: list[Path], out: Path, params: dict[str, Any]) -> dict[str, Any]:
    import ray

    temp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: socket paths
    try:
        address = start_cluster(temp)
        batch.start_ray(address, 0, quiet=True)
        nodes = {n["NodeID"]: ("head" if "node:__internal_head__" in n["Resources"] else
                               "second") for n in ray.nodes() if n["Alive"]}
        ray.shutdown()
        summary = one_run(inputs, out, params, 2, address=address)
        summary["nodes"] = nodes
        summary["node_of_bag"] = {Path(b["input"]).name: nodes.get(b["workers"][0]["node"], "?")
                                  for b in summary["bags"]}
        return summary
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_cluster(temp)


# --- report ----------------------------------------------------------------------------------
def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def cores_used(run: dict) -> float:
    return run["cpu_s"] / run["processing_s"] if run["processing_s"] else 0.0


def cpu_ms_per_frame(run: dict) -> float:
    return 1e3 * run["cpu_s"] / run["frames"] if run["frames"] else 0.0


def write(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    one = median(results["1 worker"], "processing_frames_per_s")
    lines = [
        "# Batch processing on Ray: throughput", "",
        f"`python -m bench.batch` on {platform.node()} ({os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}), torch threads 1 per worker, device "
        f"cpu. {args.bags} bags x {args.frames} frames at {args.size}, real photos "
        f"(bags/make.py), default parameters but max_keypoints={args.max_keypoints}. "
        f"Median of {args.repeats} runs each (1 and 2 workers interleaved). frames/s = "
        "frames / processing time (workers ready, i.e. models loaded, to the last bag "
        "written, before Ray's shutdown); wall = the whole command including Ray start and model loading; cores "
        "used = the workers' CPU time (all their threads) / processing time; CPU ms per frame "
        "= the workers' CPU time / frames.", "",
        "| setup | workers | frames/s (median) | vs 1 worker | cores used | CPU ms per frame "
        "| wall s | load avg before each run |",
        "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        fps = median(runs, "processing_frames_per_s")
        cores = statistics.median(cores_used(r) for r in runs)
        per_frame = statistics.median(cpu_ms_per_frame(r) for r in runs)
        lines.append(f"| {name} | {runs[0]['workers']} | {fps:.2f} | {fps / one:.2f}x | "
                     f"{cores:.2f} | {per_frame:.0f} | {median(runs, 'wall_s'):.1f} | "
                     f"{', '.join(str(r['loadavg_before']) for r in runs)} |")
    cluster = results.get(CLUSTER)
    if cluster:
        lines += ["", "Which node ran which bag (cluster runs):", ""]
        for i, run in enumerate(cluster):
            placed = ", ".join(f"{bag}: {node}" for bag, node in run["node_of_bag"].items())
            lines.append(f"- run {i + 1}: {placed}")
    lines += ["", "## Reading it", "", reading(results), ""]
    if args.note:
        lines += [args.note, ""]
    return "\n".join(lines) + "\n"


def reading(results: dict[str, list[dict]]) -> str:
    """The scaling projection, from the measured numbers."""
    ones, twos = results["1 worker"], results["2 workers"]
    per_frame = statistics.median(cpu_ms_per_frame(r) for r in ones)
    ratio = median(twos, "processing_frames_per_s") / median(ones, "processing_frames_per_s")
    cores1 = statistics.median(cores_used(r) for r in ones)
    cores2 = statistics.median(cores_used(r) for r in twos)
    fixed = statistics.median(r["wall_s"] - r["processing_s"] for r in ones + twos)
    rss = max(w.get("max_rss_mb", 0) for r in ones + twos for b in r["bags"]
              for w in b["workers"] if w)
    loads = [r["loadavg_before"] for r in ones + twos]
    pairs = [b["processing_frames_per_s"] / a["processing_frames_per_s"]
             for a, b in zip(ones, twos)]
    text = (
        f"Each frame costs about {per_frame:.0f} ms of CPU in a worker (one torch thread), so a "
        f"worker with a core to itself runs at about {1e3 / per_frame:.2f} frames/s. Bags are "
        "independent and each worker reads and writes its own bags: the driver only hands out "
        "tasks (and, for chunked bags, writes the stitched output), so N workers on N free "
        f"cores should approach N x {1e3 / per_frame:.2f} frames/s, plus a fixed start-up of "
        f"about {fixed:.0f} s here (Ray start, one model load per worker in parallel, and "
        "Ray's shutdown). "
        f"Measured: 2 workers ran at {ratio:.2f}x the frames/s of 1 worker (interleaved runs "
        f"side by side: {min(pairs):.2f}x-{max(pairs):.2f}x), using {cores2:.2f} cores against "
        f"{cores1:.2f}. End to end, with the fixed start-up and Ray's shutdown, 2 workers "
        f"finished the whole command {median(ones, 'wall_s') / median(twos, 'wall_s'):.2f}x "
        "faster: the fixed costs weigh less the longer the bags. ")
    if ratio < 1.7:
        text += "That is short of the goal of 1.7x for 2 workers. "
    if cores2 < 1.7:
        text += (
            f"The two workers together got {cores2:.2f} of this machine's "
            f"{os.cpu_count()} cores: the driver, Ray's own processes and anything else "
            f"running took the rest (load average {min(loads):.1f}-{max(loads):.1f} before "
            "the runs, where 2 means both cores busy), so the ratio is bounded by the CPU left "
            "to the workers, not by the runner. ")
    per_frame2 = statistics.median(cpu_ms_per_frame(r) for r in twos)
    text += (f"CPU per frame: {per_frame:.0f} ms with 1 worker, {per_frame2:.0f} ms with 2 "
             f"({per_frame2 / per_frame:.2f}x): ")
    if per_frame2 <= 1.15 * per_frame:
        text += ("the work per frame does not grow with workers, which is what scaling "
                 "needs: with a free core per worker (an idle machine, or a cluster) expect "
                 "close to 2x for 2 workers and N x for N.")
    else:
        text += ("a frame costs more CPU with 2 workers (contention for caches and memory "
                 "bandwidth on a busy machine), which caps the speed-up below 2x even with "
                 "free cores.")
    text += (
        f" On a cluster, the limits are the shared storage (every frame is read once and its "
        "matches written once: at 320x240 RGB about 0.23 MB read per frame), one model per "
        f"worker in memory (here at most {rss} MB per worker process at its peak; several "
        "workers can share a GPU with --gpus-per-worker 0.5), and bags shorter than a "
        "worker's share of the work: with fewer bags than workers, chunks (--chunk-frames) "
        "keep every worker busy.")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bags", type=int, default=4)
    parser.add_argument("--frames", type=int, default=15)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-keypoints", type=int, default=512)
    parser.add_argument("--no-cluster", action="store_true")
    parser.add_argument("--note", default="", help="text for the 'Reading it' section")
    parser.add_argument("--output", default="bench/results")
    parser.add_argument("--from-json", help="only write batch.md again from this batch.json")
    args = parser.parse_args()
    if args.from_json:
        text = write(json.loads(Path(args.from_json).read_text(encoding="utf-8")), args)
        (Path(args.output) / "batch.md").write_text(text, encoding="utf-8")
        print(text)
        return
    params = {"device": "cpu", "max_keypoints": args.max_keypoints, "allow_download": False}
    root = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    results: dict[str, list[dict]] = {"1 worker": [], "2 workers": []}
    try:
        inputs = make_bags(root / "in", args.bags, args.frames, make_bag.parse_size(args.size))
        if not args.no_cluster:
            results[CLUSTER] = []
        for r in range(args.repeats):  # interleaved: a busy machine slows all alike
            for workers in (1, 2):
                run = one_run(inputs, root / "out", params, workers)
                results[f"{workers} worker{'s' if workers > 1 else ''}"].append(run)
                print(f"[bench] run {r + 1}: {workers} worker(s) "
                      f"{run['processing_frames_per_s']:.2f} frames/s", file=sys.stderr)
            if not args.no_cluster:
                run = cluster_run(inputs, root / "out", params)
                results[CLUSTER].append(run)
                print(f"[bench] cluster run {r + 1}: {run['processing_frames_per_s']:.2f} "
                      f"frames/s, nodes {run['node_of_bag']}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    text = write(results, args)
    (out / "batch.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
