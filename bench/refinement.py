"""Sub-pixel refinement methods side by side, on the evaluation's homography pairs and on
motion-blurred low-texture pairs.

    python -m bench.refinement [--extractors aliked-n16,disk,xfeat] [--seeds 0,1]
                               [--severities 1,1.5] [--output bench/results]

Each pair is matched once per extractor (refinement off); then each method refines the same
matches with the pipeline's own refinement step (Pipeline.refine_result, `refine_outliers:
drop` as shipped: the matches a method finds off are removed), so the rows differ only by
the refinement. Methods: none, lk, patch at full resolution (`refine_coarse_levels: 0`), and
patch as shipped (`refine_coarse_levels: 2`: coarse to fine on a frame where full resolution
finds many matches off, refine.refine_keypoint_matches). Sets: the evaluation's textured
("original") and low-texture pairs (bench/evaluate.py) and the held-out photographs' motion
blur pairs (groundtruth/lowtexture.py, at each severity). Writes refinement.md: homography
AUC at 1/3/5 px, precision (< 3 px) and correct matches among the kept ones, the share of
matches kept and of those refined, median refinement ms.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.evaluate import auc, corner_error, pairs
from match_node import Pipeline
from match_node.engine.refine import to_gray
from match_node.groundtruth.lowtexture import HELD_OUT_PHOTOS, make_pairs
from match_node.groundtruth.planar import reprojection_errors

# (row name, refine, refine_coarse_levels)
METHODS = (("none", "none", 0), ("lk", "lk", 0), ("patch, full resolution", "patch", 0),
           ("patch, coarse to fine where blurred (shipped)", "patch", 2))


def motion_blur_pairs(seeds: tuple[int, ...], severities: tuple[float, ...]) -> list[dict]:
    return [{"kind": f"motion blur x{severity:g}", "homography": p.homography,
             "image0": p.image0, "image1": p.image1}
            for severity in severities
            for p in make_pairs(HELD_OUT_PHOTOS, ("motion_blur",), seeds, severity=severity)]


def group_of(pair: dict) -> str:
    kind = pair["kind"]
    return kind if kind == "original" or kind.startswith("motion blur") else "low texture"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extractors", default="aliked-n16,disk,xfeat")
    parser.add_argument("--seeds", default="0,1", help="motion-blur pairs' seeds")
    parser.add_argument("--severities", default="1,1.5", help="motion-blur pairs' severities")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    severities = tuple(float(s) for s in args.severities.split(","))
    data = pairs() + motion_blur_pairs(seeds, severities)
    groups = list(dict.fromkeys(group_of(p) for p in data))
    lines = ["Sub-pixel refinement, the same matches refined by each method through the "
             "pipeline's refinement step (refine_outliers: drop). Evaluation pairs: 4 "
             "photographs x 2 homographies at 640x480, original and low texture (blur, low "
             "contrast, fog, blank wall); motion blur: the 8 held-out photographs of "
             f"groundtruth/lowtexture.py x seeds {list(seeds)} at each severity. CPU, "
             f"{args.threads} threads.", "",
             "| extractor | set | refine | AUC@1px | AUC@3px | AUC@5px | precision | correct "
             "| kept | refined | median ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for extractor in args.extractors.split(","):
        pipeline = Pipeline(device="cpu", extractor=extractor, refine="none", matcher="lightglue",
                            allow_download=False)
        matched = [(p, pipeline.match(p["image0"], p["image1"]), to_gray(p["image0"]),
                    to_gray(p["image1"])) for p in data]
        for group in groups:
            subset = [m for m in matched if group_of(m[0]) == group]
            for name, method, levels in METHODS:
                pipeline.update(refine=method, refine_coarse_levels=levels)
                errors, correct, total, found, refined, ms = [], 0, 0, 0, [], []
                for pair, matches, gray0, gray1 in subset:
                    result = copy.deepcopy(matches)
                    found += len(result)
                    if method != "none" and len(result):
                        start = time.perf_counter()
                        pipeline.refine_result(result, gray0, gray1)
                        ms.append((time.perf_counter() - start) * 1e3)
                        refined.append(result.refined.mean() if len(result) else 0.0)
                    k0, k1 = result.keypoints0, result.keypoints1
                    e = reprojection_errors(pair["homography"], k0, k1)
                    correct += int((e < 3).sum())
                    total += len(e)
                    errors.append(corner_error(pair["homography"], k0, k1))
                lines.append(
                    f"| {extractor} | {group} | {name} | {auc(errors, 1):.3f} | "
                    f"{auc(errors, 3):.3f} | {auc(errors, 5):.3f} | "
                    f"{correct / max(total, 1):.4f} | {correct} | {total / max(found, 1):.2f} | "
                    f"{np.mean(refined) if refined else 0:.2f} | "
                    f"{np.median(ms) if ms else 0:.1f} |")
                print(lines[-1], flush=True)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "refinement.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
