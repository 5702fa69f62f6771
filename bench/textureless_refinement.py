"""The textureless paths' refinement rules side by side, on the same matches.

    python -m bench.textureless_refinement [--photos held-out,smooth] [--seeds 0,1]
                                           [--sharp-photos coffee,...] [--output bench/results]

Matcher 'auto''s textureless paths (SIFT on CLAHE images, then the XFeat + LighterGlue
fallback) serve blurred, dark and flat frames, where refine.py's 11x11 full-resolution
alignment mostly sees noise. Each pair is matched once through config/match_node.yaml with
refinement off (low-texture pairs of match_node.groundtruth.lowtexture; and sharp pairs, the
'original' kind, sent down the textureless path by thresholds no frame meets, since a stream
sends some sharp frames there too); then every rule refines the same matches:

  * none;
  * full resolution (refine_patch, what the textureless paths ran before refine_coarse_levels);
  * the coarse-to-fine chain alone (refine_multiscale(full_resolution=False));
  * refine_multiscale (the chain, and full resolution where its standard error is smaller:
    what `refine_coarse_levels: 2` runs);
  * the same, with the matches found off (standard error above MULTISCALE_OFF_STDERR_PX, or
    not moved) dropped while texture_min_matches remain (`refine_outliers: drop`, the default).

Per path and set: pairs, matches, precision (< 3 px), homography AUC at 1/3/5 px (MAGSAC++,
bench/evaluate.py's metric) and failures (no homography or a corner error over 10 px), and the
median ms of a pair's refinement. Writes textureless_refinement.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from bench.lowtexture import CONFIG, FAILURE_PX, score
from match_node import Pipeline
from match_node.engine.refine import (multiscale_verdict, refine_multiscale, refine_patch,
                                      to_gray)
from match_node.groundtruth.lowtexture import (HELD_OUT_PHOTOS, KINDS, SMOOTH_PHOTOS,
                                               TUNING_PHOTOS, make_pairs)

# A rule: (gray0, gray1, keypoints0, keypoints1) -> (keypoints1, mask of matches kept).
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
MIN_MATCHES = 20  # config/match_node.yaml's texture_min_matches


def _all(points: np.ndarray) -> np.ndarray:
    return np.ones(len(points), bool)


def _dropping_off(gray0, gray1, k0, k1):
    points, stderr = refine_multiscale(gray0, gray1, k0, k1)
    kept = ~multiscale_verdict(stderr)[1]
    return points, kept if kept.sum() >= MIN_MATCHES else _all(kept)


RULES: dict[str, Rule] = {
    "none": lambda g0, g1, k0, k1: (k1, _all(k1)),
    "full resolution": lambda g0, g1, k0, k1: (refine_patch(g0, g1, k0, k1)[0], _all(k1)),
    "coarse-to-fine chain": lambda g0, g1, k0, k1: (
        refine_multiscale(g0, g1, k0, k1, full_resolution=False)[0], _all(k1)),
    "multiscale": lambda g0, g1, k0, k1: (refine_multiscale(g0, g1, k0, k1)[0], _all(k1)),
    "**multiscale, off dropped** (shipped)": _dropping_off,
}
PHOTO_SETS = {"held-out": HELD_OUT_PHOTOS, "tuning": TUNING_PHOTOS, "smooth": SMOOTH_PHOTOS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default="held-out,smooth",
                        help="comma-separated sets (held-out, tuning, smooth) or photographs")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--sharp-photos", default="coffee,astronaut,rocket,chelsea,motorcycle,"
                        "gravel,coins,grass,moon,retina")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    photos = tuple(p for name in args.photos.split(",") for p in PHOTO_SETS.get(name, (name,)))
    seeds = tuple(int(s) for s in args.seeds.split(","))
    sharp_photos = tuple(args.sharp_photos.split(","))
    shipped = Pipeline.from_yaml(CONFIG, device="cpu", allow_download=False, refine="none")
    # Thresholds no frame meets: every sharp pair takes the textureless path.
    always = Pipeline.from_yaml(CONFIG, device="cpu", allow_download=False, refine="none",
                                texture_low_keypoints=100000, texture_high_keypoints=100000,
                                texture_low_coverage=1.0, texture_high_coverage=1.0)
    matched: dict[tuple[str, str], list] = {}
    for group, pipeline, pairs in (("low texture", shipped, make_pairs(photos, KINDS, seeds)),
                                   ("sharp", always,
                                    make_pairs(sharp_photos, ("original",), seeds))):
        for pair in pairs:
            result = pipeline.match(pair.image0, pair.image1)
            path = f"{result.extractor}+{result.matcher}"
            if result.extractor in ("sift-clahe", "xfeat"):  # a textureless path served it
                matched.setdefault((path, group), []).append(
                    (pair, result.keypoints0, result.keypoints1, to_gray(pair.image0),
                     to_gray(pair.image1)))
        print(f"[textureless_refinement] matched the {group} pairs", flush=True)
    lines = [f"The textureless paths' matches of config/match_node.yaml refined by each rule "
             f"(bench/textureless_refinement.py): low-texture pairs of {', '.join(photos)} "
             f"(all kinds) and sharp pairs of {', '.join(sharp_photos)} sent down the "
             f"textureless path, seeds {list(seeds)}, 640x480; CPU, {args.threads} thread(s), "
             "shared host (ms are rough). Failures: no homography or corner error over "
             f"{FAILURE_PX:g} px.", "",
             "| path | set | rule | pairs | matches | precision | AUC@1px | AUC@3px | AUC@5px "
             "| failures | median ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (path, group), items in sorted(matched.items()):
        data = [{"homography": pair.homography, "id": pair.id, "kind": pair.kind}
                for pair, *_ in items]
        for name, rule in RULES.items():
            matches, ms = [], []
            for pair, k0, k1, gray0, gray1 in items:
                start = time.perf_counter()
                points, kept = rule(gray0, gray1, k0, k1)
                ms.append((time.perf_counter() - start) * 1e3)
                matches.append((k0[kept], points[kept]))
            row, per_pair = score(data, matches, ms, (640, 480))
            lines.append(
                f"| {path} | {group} | {name} | {row['pairs']} | "
                f"{sum(p['matches'] for p in per_pair)} | {row['precision']:.3f} | "
                f"{row['auc@1px']:.3f} | {row['auc@3px']:.3f} | {row['auc@5px']:.3f} | "
                f"{row['failures']} | {row['median_ms']:.0f} |")
            print(lines[-1], flush=True)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "textureless_refinement.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
