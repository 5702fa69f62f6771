"""The latency budget on matcher 'auto''s textureless path: frame times, budget misses and
matches of streams that go textured -> low texture -> textured, without a budget and with one,
with the textureless path's extraction sized to the frame's remaining time (LatencyBudget.
path_side) and without that sizing (the path at max_image_side, as before it).

    python -m bench.textureless_budget [--photos chelsea,...] [--kinds blur_low_contrast,dark]
                                       [--fractions 0.75,0.5] [--threads 1]
                                       [--output bench/results]

Streams: real-image camera paths (match_node.groundtruth.planar.make_sequence, 640x480, exact
homographies) on held-out photographs, 4 textured frames, 8 frames of one low-texture kind,
4 textured frames, through config/match_node.yaml's pipeline (SequentialMatcher, as the node
runs it). Budgets are fractions of the unbudgeted run's median textured frame. Every run
starts with a textured warm-up stream (not counted) so that the budget controller has settled.
Per run and pair group (textured, transition = a pair that straddles a change of kind,
textureless): frame time p50 / p95 / max, budget misses, matches, precision (< 3 px), the
median error of the correct matches, the textureless path's extraction scale and the share
of its pairs that were refined. Writes textureless_budget.md / .json.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from bench.lowtexture import CONFIG
from match_node import Pipeline, SequentialMatcher
from match_node.groundtruth.lowtexture import degrade_frames
from match_node.groundtruth.planar import make_sequence, replay

CORRECT_PX = 3.0
GROUPS = ("textured", "transition", "textureless")


def run(pipeline: Pipeline, photos: list[str], kinds: list[str]) -> list[dict]:
    """Every stream through `pipeline`, after a warm-up stream; one row per published frame."""
    warmup = make_sequence("coffee", num_frames=8, size=(640, 480), step=6, seed=2)
    replay(SequentialMatcher(pipeline), warmup.frames, warmup)
    served_by_lightglue = f"{pipeline.params['extractor']}+lightglue"
    frames = []
    for photo in photos:
        for kind in kinds:
            sequence = make_sequence(photo, num_frames=16, size=(640, 480), step=6, seed=1)
            labels = [None] * 4 + [kind] * 8 + [None] * 4
            for p in replay(SequentialMatcher(pipeline), degrade_frames(sequence.frames, labels),
                            sequence):
                t, result = p.frame, p.result
                pair = ("textured" if labels[t] is None and labels[t - 1] is None else
                        "textureless" if labels[t] is not None and labels[t - 1] is not None
                        else "transition")
                correct = p.errors[p.errors < CORRECT_PX]
                frames.append({
                    "photo": photo, "kind": kind, "frame": t, "pair": pair, "path": p.path,
                    "textureless_path": p.path != served_by_lightglue,
                    "total_ms": float(result.timings["total_ms"]),
                    "refined": bool(result.timings["refine_ms"] > 0),
                    "scale": float(result.extraction_scale), "matches": len(p.errors),
                    "correct": p.correct,
                    "median_error_px": float(np.median(correct)) if len(correct) else None})
    return frames


def summarise(name: str, budget: float, frames: list[dict]) -> list[dict]:
    rows = []
    for group in GROUPS:
        chosen = [f for f in frames if f["pair"] == group]
        totals = np.array([f["total_ms"] for f in chosen])
        on_path = [f for f in chosen if f["textureless_path"]]
        errors = [f["median_error_px"] for f in chosen if f["median_error_px"] is not None]
        rows.append({
            "run": name, "budget_ms": budget, "group": group, "frames": len(chosen),
            "p50_ms": float(np.percentile(totals, 50)), "p95_ms": float(np.percentile(totals, 95)),
            "max_ms": float(totals.max()),
            "misses": int((totals > budget).sum()) if budget > 0 else None,
            "matches": float(np.mean([f["matches"] for f in chosen])),
            "precision": sum(f["correct"] for f in chosen) / max(1, sum(f["matches"] for f in chosen)),
            "median_error_px": float(np.median(errors)) if errors else float("nan"),
            "path_frames": len(on_path),
            "path_scale": float(np.median([f["scale"] for f in on_path])) if on_path else None,
            "path_refined": (sum(f["refined"] for f in on_path) / len(on_path)) if on_path else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default="chelsea,motorcycle,gravel,coins")
    parser.add_argument("--kinds", default="blur_low_contrast,dark,fog")
    parser.add_argument("--fractions", default="0.75,0.5",
                        help="budgets as fractions of the unbudgeted median textured frame")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photos, kinds = args.photos.split(","), args.kinds.split(",")
    pipeline = Pipeline.from_yaml(CONFIG, device=args.device, allow_download=False)

    frames = {"no budget": run(pipeline, photos, kinds)}
    rows = summarise("no budget", 0.0, frames["no budget"])
    median = rows[0]["p50_ms"]
    print(f"[textureless_budget] no budget: textured median {median:.0f} ms", flush=True)
    for fraction in (float(f) for f in args.fractions.split(",")):
        budget = round(fraction * median)
        pipeline.update(latency_budget_ms=float(budget))
        for sized in (False, True):
            name = (f"budget {fraction:g} x median, textureless path "
                    f"{'sized to the time left' if sized else 'at max_image_side'}")
            pipeline.budget.size_textureless_paths = sized
            frames[name] = run(pipeline, photos, kinds)
            rows += summarise(name, budget, frames[name])
            print(f"[textureless_budget] {name}: {rows[-3:]}", flush=True)

    device = (torch.cuda.get_device_name(pipeline.device) if pipeline.device.type == "cuda"
              else f"CPU ({platform.processor() or platform.machine()}, {args.threads} thread(s))")
    lines = [f"Device: {device}; torch {torch.__version__}. Streams: {len(photos)} held-out "
             f"photographs ({', '.join(photos)}) x {len(kinds)} kinds ({', '.join(kinds)}), "
             "4 textured + 8 low-texture + 4 textured frames of 640x480 each (a camera path, "
             "exact homographies), through config/match_node.yaml's pipeline, one run after "
             "another in one process (each after a textured warm-up stream). Transition: a "
             "pair that straddles a change of kind. Precision: error < 3 px; median error: of "
             "the correct matches; path scale / refined: the textureless path's frames' "
             "extraction scale (median) and share refined.", "",
             "| run | budget ms | pairs | frames | p50 ms | p95 ms | max ms | misses | "
             "matches | precision | median error px | path frames | path scale | refined |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = f"{r['budget_ms']:.0f}" if r["budget_ms"] else "-"
        misses = "-" if r["misses"] is None else f"{r['misses']} of {r['frames']}"
        scale = "-" if r["path_scale"] is None else f"{r['path_scale']:.2f}"
        refined = "-" if r["path_refined"] is None else f"{r['path_refined']:.0%}"
        lines.append(f"| {r['run']} | {budget} | {r['group']} | {r['frames']} | "
                     f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['max_ms']:.0f} | {misses} | "
                     f"{r['matches']:.0f} | {r['precision']:.3f} | {r['median_error_px']:.2f} | "
                     f"{r['path_frames']} | {scale} | {refined} |")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "textureless_budget.md").write_text("\n".join(lines) + "\n")
    (output / "textureless_budget.json").write_text(json.dumps(
        {"device": device, "rows": rows, "frames": frames}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
