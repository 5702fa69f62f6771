"""The direct path (match_node/engine/direct.py, `textureless_direct`): what it costs a frame,
how precisely it matches smooth close-up streams beside the paths before it, and what it does
on blank walls, where it must not publish the alignment of noise.

    python -m bench.direct [--photos cell,moon,...] [--frames 8] [--sides 0,480,320]
                           [--threads 1] [--output bench/results]

Streams: camera paths (match_node.groundtruth.planar.make_sequence, 640x480, exact
homographies) over 10x close-ups of real photographs, blurred (sigma 6 px of the close-up):
shading and soft edges only. Each goes through config/match_node.yaml's pipeline
(SequentialMatcher, as the node runs it) three ways: as shipped (the XFeat fallback serves
what SIFT leaves thin), with `textureless_fallback: none` (the direct path serves what SIFT
leaves thin) at each working side of `--sides` (0: the frame's own; the sizes a latency
budget picks, Pipeline.path_side), and the direct path's per-frame cost (its extraction of
the frame and its match). Per run: the paths that served, messages, matches, precision
(< 3 px), median error, track ids continued from the previous message, ms.

Pairs: the direct path alone on every pair of bench/lowtexture.py's sets (`--pair-sets`,
seed 0; the smooth set seeds 0 and 1): matches, precision, failures (no homography, or a mean
corner error over 10 px) and why it refused the pairs it refused, per kind: where its basin
and its refusals leave it, which is why it is the last resort.

Blank walls: vignetting fixed to the camera, a lighting gradient or a lamp's spot moving with
the wall (0 or 25 px), sensor noise of 0.5-4 grey levels, 2 frames each: the direct path's
matches (refused, or how many and how far from the wall's true motion).
Writes direct.md and direct.json.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.lowtexture import CONFIG
from match_node import Pipeline, SequentialMatcher
from match_node.engine import direct
from match_node.engine.refine import to_gray
from match_node.engine.texture import TEXTURELESS_DIRECT
from bench.evaluate import corner_error
from match_node.groundtruth.lowtexture import (HELD_OUT_PHOTOS, KINDS, SMOOTH_PHOTOS,
                                               WALL_LIGHTS, _as_rgb, blank_wall, make_pairs)
from match_node.groundtruth.planar import load_photo, make_sequence, replay, reprojection_errors

CORRECT_PX = 3.0
FAILURE_PX = 10.0
PAIR_SETS = {"held-out": (HELD_OUT_PHOTOS, (0,)), "smooth": (SMOOTH_PHOTOS, (0, 1))}


def closeup_sequence(photo: str, frames: int, seed: int = 0):
    """A camera path over a blurred 10x close-up of `photo` (its centre-left quarter)."""
    image = _as_rgb(load_photo(photo))
    h, w = image.shape[:2]
    crop = image[h // 4:h // 4 + 70, w // 4:w // 4 + 90]
    closeup = cv2.GaussianBlur(cv2.resize(crop, None, fx=10, fy=10,
                                          interpolation=cv2.INTER_CUBIC), (0, 0), 6)
    return make_sequence(closeup, num_frames=frames, size=(640, 480), step=6, seed=seed)


def stream_row(pipeline: Pipeline, photo: str, frames: int) -> dict:
    sequence = closeup_sequence(photo, frames)
    published = replay(SequentialMatcher(pipeline), sequence.frames, sequence)
    paths: dict[str, int] = {}
    continued, errors, ms, matches = [], [], [], []
    previous = None
    for message in published:
        paths[message.path] = paths.get(message.path, 0) + 1
        result = message.result
        errors.append(message.errors)
        ms.append(result.timings["total_ms"])
        matches.append(len(result))
        if previous is not None and len(result):
            continued.append(float(np.isin(result.track_ids, previous.track_ids).mean()))
        previous = result
    every = np.concatenate(errors) if errors else np.zeros(0)
    correct = every[every < CORRECT_PX]
    return {"photo": photo, "messages": len(published), "paths": paths,
            "empty": int(sum(m == 0 for m in matches)),
            "matches": float(np.mean(matches)) if matches else 0.0,
            "precision": float(len(correct) / max(len(every), 1)),
            "median_error_px": float(np.median(correct)) if len(correct) else None,
            "tracks_continued": float(np.mean(continued)) if continued else None,
            "median_ms": float(np.median(ms)) if ms else None}


def direct_cost(pipeline: Pipeline, photo: str, frames: int, side: int) -> dict:
    """The direct path alone on consecutive frames of the stream: per frame its extraction
    (one frame: the other is cached in a stream) and its match."""
    sequence = closeup_sequence(photo, frames)
    extract, match = [], []
    previous = pipeline.extract_on(TEXTURELESS_DIRECT, sequence.frames[0], side)
    for frame in sequence.frames[1:]:
        current = pipeline.extract_on(TEXTURELESS_DIRECT, frame, side)
        result = pipeline.match_on(TEXTURELESS_DIRECT, previous, current)
        extract.append(current.extract_ms)
        match.append(result.timings["match_ms"])
        previous = current
    return {"photo": photo, "side": side, "working_size": list(previous.working_size),
            "extract_ms": float(np.median(extract)), "match_ms": float(np.median(match))}


def pair_rows(pipeline: Pipeline, sets: list[str]) -> list[dict]:
    """The direct path alone on every pair of `sets` (PAIR_SETS)."""
    rows = []
    aligner = pipeline.keypoint_paths[TEXTURELESS_DIRECT]
    for name in sets:
        photos, seeds = PAIR_SETS[name]
        for pair in make_pairs(photos, KINDS, seeds):
            features0 = pipeline.extract_on(TEXTURELESS_DIRECT, pair.image0)
            features1 = pipeline.extract_on(TEXTURELESS_DIRECT, pair.image1)
            found = direct.match(features0.direct, features1.direct)
            # The result of that same alignment (aligning again through match_on would double
            # the run); its timings are not measured here.
            result = aligner.result(found, features0, features1, 0.0, lambda: 0.0, 0.0)
            errors = reprojection_errors(pair.homography, result.keypoints0.astype(float),
                                         result.keypoints1.astype(float))
            rows.append({"set": name, "pair": pair.id, "kind": pair.kind,
                         "matches": len(result), "correct": int(np.sum(errors < CORRECT_PX)),
                         "corner_error_px": corner_error(pair.homography, result.keypoints0,
                                                         result.keypoints1, (640, 480)),
                         "refused": found.refused})
    return rows


def wall_rows() -> list[dict]:
    rows = []
    for kind in WALL_LIGHTS:
        for shift in (0.0, 25.0):
            for noise in (0.5, 1.0, 2.0, 4.0):
                # One channel: a wall's are equal.
                frames = [direct.prepare(to_gray(blank_wall(seed, kind, s, noise)[..., 0]), 4.0,
                                         direct.MAX_CORNERS) for seed, s in ((1, 0.0), (2, shift))]
                found = direct.match(*frames)
                motion = found.keypoints1 - frames[0].corners[found.indices0]
                # The wall's true motion: `shift` px along x (vignetting does not move).
                off = np.linalg.norm(motion - [shift, 0.0], axis=1) if len(motion) else []
                rows.append({"wall": kind, "shift": shift, "noise": noise,
                             "matches": int(len(found.indices0)), "refused": found.refused,
                             "correlation": found.correlation,
                             "within_3px": int(np.sum(np.asarray(off) < 3))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default="cell,moon,retina,clock,coins")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--sides", default="0,480,320")
    parser.add_argument("--pair-sets", default="held-out,smooth",
                        help=f"sets of bench/lowtexture.py's pairs ({', '.join(PAIR_SETS)}); "
                             "'none' skips them")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    photos = args.photos.split(",")
    sides = [int(s) for s in args.sides.split(",")]
    base = {"device": "cpu", "allow_download": False}
    shipped = Pipeline.from_yaml(CONFIG, **base)
    no_fallback = Pipeline.from_yaml(CONFIG, **base, textureless_fallback="none")
    streams = []
    for photo in photos:
        streams.append({"run": "shipped", **stream_row(shipped, photo, args.frames)})
        for side in sides:
            no_fallback.update(max_image_side=side)
            streams.append({"run": f"textureless_fallback none, max_image_side {side}",
                            **stream_row(no_fallback, photo, args.frames)})
            print(f"[direct] {photo}: {streams[-1]}", flush=True)
    no_fallback.update(max_image_side=1024)
    costs = [direct_cost(no_fallback, photo, args.frames, side)
             for photo in photos for side in sides]
    walls = wall_rows()
    pair_sets = [] if args.pair_sets == "none" else args.pair_sets.split(",")
    pairs = pair_rows(no_fallback, pair_sets)

    lines = ["# The direct path: smooth close-up streams, cost, blank walls", "",
             f"Streams: {args.frames} frames over blurred 10x close-ups of {', '.join(photos)} "
             "(640x480, exact homographies) through config/match_node.yaml's pipeline. "
             f"Precision: error < {CORRECT_PX:g} px; median error of the correct matches; "
             "tracks continued: share of a message's track ids that the previous message "
             f"had. {args.threads} CPU thread(s), {platform.processor() or platform.machine()}.",
             "", "| photo | run | served | messages (empty) | matches | precision | "
             "median error px | tracks continued | median ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in streams:
        served = ", ".join(f"{k} {v}" for k, v in s["paths"].items())
        err = "-" if s["median_error_px"] is None else f"{s['median_error_px']:.2f}"
        cont = "-" if s["tracks_continued"] is None else f"{s['tracks_continued']:.2f}"
        lines.append(f"| {s['photo']} | {s['run']} | {served} | {s['messages']} ({s['empty']}) "
                     f"| {s['matches']:.0f} | {s['precision']:.3f} | {err} | {cont} | "
                     f"{s['median_ms']:.0f} |")
    lines += ["", "Cost of the direct path per frame (median over the stream's pairs): its "
              "extraction of the new frame (denoise, high-pass, corners) and its match (ECC, "
              "each corner's coarse-to-fine alignment, epipolar check).", "",
              "| photo | side | working size | extract ms | match ms |", "|---|---|---|---|---|"]
    for c in costs:
        lines.append(f"| {c['photo']} | {c['side']} | {c['working_size'][0]}x"
                     f"{c['working_size'][1]} | {c['extract_ms']:.0f} | {c['match_ms']:.0f} |")
    if pairs:
        lines += ["", f"The direct path alone on every pair of {', '.join(pair_sets)} "
                  f"(bench/lowtexture.py's pairs, 640x480): failures = no homography or a mean "
                  f"corner error over {FAILURE_PX:g} px; refused = pairs it gave no match, "
                  "by reason.", "",
                  "| kind | pairs | matches/pair | precision | failures | refused |",
                  "|---|---|---|---|---|---|"]
        for kind in (None,) + KINDS:
            rows = [r for r in pairs if kind is None or r["kind"] == kind]
            reasons: dict[str, int] = {}
            for r in rows:
                if r["refused"]:
                    reasons[r["refused"]] = reasons.get(r["refused"], 0) + 1
            matches = sum(r["matches"] for r in rows)
            precision = sum(r["correct"] for r in rows) / max(matches, 1)
            failures = sum(not r["corner_error_px"] <= FAILURE_PX for r in rows)
            refused = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "-"
            lines.append(f"| {kind or 'all'} | {len(rows)} | {matches / max(len(rows), 1):.0f} "
                         f"| {precision:.3f} | {failures} | {refused} |")
    lines += ["", "Blank walls (640x480; vignetting fixed to the camera; the wall, its gradient "
              "or its lamp's spot, moves by `shift` px): the direct path alone.", "",
              "| wall | shift px | noise | matches | within 3 px of the wall's motion | "
              "correlation | refused |", "|---|---|---|---|---|---|---|"]
    for w in walls:
        lines.append(f"| {w['wall']} | {w['shift']:g} | {w['noise']:g} | {w['matches']} | "
                     f"{w['within_3px']} | {w['correlation']:.2f} | {w['refused'] or '-'} |")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "direct.md").write_text("\n".join(lines) + "\n")
    (out / "direct.json").write_text(json.dumps(
        {"settings": vars(args), "torch": torch.__version__, "opencv": cv2.__version__,
         "streams": streams, "costs": costs, "walls": walls, "pairs": pairs}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
