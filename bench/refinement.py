"""Sub-pixel refinement methods side by side, on the evaluation's homography pairs.

    python -m bench.refinement [--extractors aliked-n16,disk,xfeat] [--output bench/results]

Each pair is matched once per extractor (refinement off); then each method refines the same
matches, so the rows differ only by the refinement. Writes refinement.md: homography AUC at
1/3/5 px, precision (< 3 px), correct matches, share refined and median refinement ms.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.evaluate import auc, corner_error, pairs
from match_node import Pipeline
from match_node.engine.refine import REFINE_METHODS, refine_matches, to_gray
from match_node.groundtruth.planar import reprojection_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extractors", default="aliked-n16,disk,xfeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    data = pairs()
    lines = ["Sub-pixel refinement on the evaluation pairs (4 photographs x 2 homographies at "
             "640x480; low texture = blur, low contrast, fog, blank wall), the same matches "
             f"refined by each method; CPU, {args.threads} threads.", "",
             "| extractor | set | refine | AUC@1px | AUC@3px | AUC@5px | precision | correct "
             "| refined | median ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for extractor in args.extractors.split(","):
        pipeline = Pipeline(device="cpu", extractor=extractor, refine="none", matcher="lightglue",
                            allow_download=False)
        matched = [(p, pipeline.match(p["image0"], p["image1"]), to_gray(p["image0"]),
                    to_gray(p["image1"])) for p in data]
        for group in ("original", "low texture"):
            subset = [m for m in matched if (m[0]["kind"] == "original") == (group == "original")]
            for method in REFINE_METHODS:
                errors, correct, total, refined, ms = [], 0, 0, [], []
                for pair, result, gray0, gray1 in subset:
                    k0, k1 = result.keypoints0, result.keypoints1
                    if method != "none" and len(k0):
                        start = time.perf_counter()
                        k1, flags, _ = refine_matches(method, gray0, gray1, k0, k1)
                        ms.append((time.perf_counter() - start) * 1e3)
                        refined.append(flags.mean())
                    e = reprojection_errors(pair["homography"], k0, k1)
                    correct += int((e < 3).sum())
                    total += len(e)
                    errors.append(corner_error(pair["homography"], k0, k1))
                lines.append(
                    f"| {extractor} | {group} | {method} | {auc(errors, 1):.3f} | "
                    f"{auc(errors, 3):.3f} | {auc(errors, 5):.3f} | "
                    f"{correct / max(total, 1):.4f} | {correct} | "
                    f"{np.mean(refined) if refined else 0:.2f} | "
                    f"{np.median(ms) if ms else 0:.1f} |")
                print(lines[-1], flush=True)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "refinement.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
