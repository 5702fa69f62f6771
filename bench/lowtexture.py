"""Low-texture matching: every method side by side on generated pairs with exact homographies,
and on the textured evaluation pairs (bench/evaluate.py's photographs) to show nothing is lost.

    python -m bench.lowtexture [--methods SUBSTRINGS] [--photos held-out|tuning|smooth|a,b,...]
                               [--keep-others lowtexture.json]
                               [--kinds blur,fog,...] [--seeds 0] [--size 640x480]
                               [--severity 1.0]
                               [--textured-photos coffee,...|none] [--loftr-weights PATH]
                               [--threads 1] [--output bench/results]

Low-texture pairs come from match_node.groundtruth.lowtexture (real skimage photographs; blur, low
contrast, blur at low contrast, fog, darkness with shot and read noise, motion blur, a blank
wall with one textured patch, a repetitive surface and a close-up of a smooth surface), by
default on the held-out photographs, which played no part in choosing the mechanism or its
thresholds. Per method and set: matches per pair, pairs without a match, precision (reprojection
error < 3 px), homography AUC at 1/3/5 px (mean corner error of the MAGSAC++ estimate, as in
bench/evaluate.py, whose metric functions are used), homography failures (no estimate, or a
mean corner error above FAILURE_PX) and the median ms of one pair (both images extracted, then
matched).

Then streams through match_node.yaml's pipeline (SequentialMatcher, as the node runs it):
real-image camera paths (sequence.py) on held-out photographs, four textured frames, four
frames of one low-texture kind, four textured frames; per stream the switches, the paths
that served the frames, messages without matches, and precision; and the per-frame time of
each path, which is what the textureless path costs the latency budget. Writes lowtexture.md
and lowtexture.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from bench.evaluate import (MatchFn, auc, corner_error, official_matcher, opencv_matcher,
                            ours)
from bench.evaluate import pairs as textured_pairs
from match_node import Pipeline, SequentialMatcher
from match_node import params as P
from match_node.groundtruth.lowtexture import (HELD_OUT_PHOTOS, KINDS, SMOOTH_PHOTOS,
                                               TUNING_PHOTOS, degrade_frames, make_pairs)
from match_node.groundtruth.planar import make_sequence, replay, reprojection_errors

CONFIG = Path(__file__).resolve().parents[1] / "match_node" / "config" / "match_node.yaml"
FAILURE_PX = 10.0  # a homography whose mean corner error exceeds this is unusable


def configured(overrides: dict[str, Any], served: Counter) -> MatchFn:
    """The pipeline exactly as config/match_node.yaml builds it (plus `overrides`); counts
    which extractor/matcher served each pair in `served`."""
    pipeline = Pipeline.from_yaml(CONFIG, **overrides)

    def match(image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = pipeline.match(image0, image1)
        served[f"{result.extractor}+{result.matcher}"] += 1
        return result.keypoints0, result.keypoints1

    return match


def clahe(run: MatchFn, clip: float = 3.0, tiles: int = 8) -> MatchFn:
    """`run` on contrast-normalised images: CLAHE on the lightness channel."""
    operator = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles))

    def normalise(image: np.ndarray) -> np.ndarray:
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
        lab[..., 0] = operator.apply(lab[..., 0])
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)

    return lambda image0, image1: run(normalise(image0), normalise(image1))


Table = list[tuple[str, Callable[[], MatchFn]]]
SHIPPED = "match_node.yaml (ours)"
PATH_ONLY = "SIFT-CLAHE+NN+epipolar (ours: auto's textureless path on every pair)"
NO_FALLBACK = "match_node.yaml, textureless_fallback none (ours)"
KEEP_OFF = "match_node.yaml, refine_outliers keep (ours)"
VERIFY_OFF = "match_node.yaml, textureless_verify off (ours)"
BLUR_OFF = "match_node.yaml, texture_blur_mismatch 0 (ours)"
COARSE_OFF = "match_node.yaml, refine_coarse_levels 0 (ours)"
DENOISE_OFF = "match_node.yaml, texture_denoise off (ours)"
RICHER_OFF = "match_node.yaml, textureless_richer 0 (ours)"
DIRECT_OFF = "match_node.yaml, textureless_direct off (ours)"


def method_table(args: argparse.Namespace, served: dict[str, Counter]) -> Table:
    base = {"device": args.device, "allow_download": False}
    shipped_before = {**base, "matcher": "lightglue"}  # the default before 'auto'; LightGlue rows
    sift_nn = {**base, "extractor": "sift", "matcher": "nn"}
    loftr_file = {"loftr_weights": args.loftr_weights} if args.loftr_weights else {}
    # Thresholds no frame meets: every pair is 'textureless' (the served counts check it).
    always = {"texture_low_keypoints": 100000, "texture_high_keypoints": 100000,
              "texture_low_coverage": 1.0, "texture_high_coverage": 1.0}
    table = [
        (SHIPPED, lambda: configured({**base, **loftr_file},
                                     served.setdefault(SHIPPED, Counter()))),
        (PATH_ONLY, lambda: configured({**base, **always},
                                       served.setdefault(PATH_ONLY, Counter()))),
        (NO_FALLBACK, lambda: configured({**base, **loftr_file, "textureless_fallback": "none"},
                                         served.setdefault(NO_FALLBACK, Counter()))),
        (KEEP_OFF, lambda: configured({**base, **loftr_file, "refine_outliers": "keep"},
                                      served.setdefault(KEEP_OFF, Counter()))),
        (VERIFY_OFF, lambda: configured({**base, **loftr_file, "textureless_verify": False},
                                        served.setdefault(VERIFY_OFF, Counter()))),
        (BLUR_OFF, lambda: configured({**base, **loftr_file, "texture_blur_mismatch": 0.0},
                                      served.setdefault(BLUR_OFF, Counter()))),
        (COARSE_OFF, lambda: configured({**base, **loftr_file, "refine_coarse_levels": 0},
                                        served.setdefault(COARSE_OFF, Counter()))),
        (DENOISE_OFF, lambda: configured({**base, **loftr_file, "texture_denoise": False},
                                         served.setdefault(DENOISE_OFF, Counter()))),
        (RICHER_OFF, lambda: configured({**base, **loftr_file, "textureless_richer": 0.0},
                                        served.setdefault(RICHER_OFF, Counter()))),
        (DIRECT_OFF, lambda: configured({**base, **loftr_file, "textureless_direct": False},
                                        served.setdefault(DIRECT_OFF, Counter()))),
        ("ALIKED+LightGlue, previous default (ours)", lambda: ours(shipped_before)),
        ("ALIKED+LightGlue (official)", lambda: official_matcher("aliked", args.device)),
        ("ALIKED top-k+LightGlue (ours)", lambda: ours(shipped_before, detection_threshold=0.0)),
        ("CLAHE+ALIKED+LightGlue (ours)", lambda: clahe(ours(shipped_before))),
        ("CLAHE+ALIKED top-k+LightGlue (ours)",
         lambda: clahe(ours(shipped_before, detection_threshold=0.0))),
        ("SIFT+NN, refine patch (ours)", lambda: ours(sift_nn)),
        ("SIFT+NN, refine none (ours)", lambda: ours(sift_nn, refine="none")),
        ("CLAHE+SIFT+NN, refine patch (ours)", lambda: clahe(ours(sift_nn))),
        ("DISK+LightGlue (ours)", lambda: ours(shipped_before, extractor="disk")),
        ("DISK+NN, refine patch (ours)", lambda: ours(base, extractor="disk", matcher="nn")),
        ("XFeat+LighterGlue (ours)", lambda: ours(shipped_before, extractor="xfeat")),
        ("XFeat top-k+LighterGlue (ours)",
         lambda: ours(shipped_before, extractor="xfeat", detection_threshold=0.0)),
        ("SIFT+NN (OpenCV)", lambda: opencv_matcher("sift")),
    ]
    if args.loftr_weights:
        loftr = {"loftr_weights": args.loftr_weights, "loftr_model": args.loftr_model}
        table.append(("LoFTR (ours)", lambda: ours(base, matcher="loftr", **loftr)))
    return table


def evaluate(run: MatchFn, data: list[dict], size: tuple[int, int]) -> tuple[dict, list[dict]]:
    """`run` on every pair of `data`, timed, then `score`d."""
    matches, times = [], []
    for pair in data:
        start = time.perf_counter()
        matches.append(run(pair["image0"], pair["image1"]))
        times.append((time.perf_counter() - start) * 1e3)
    return score(data, matches, times, size)


def score(data: list[dict], matches: list[tuple[np.ndarray, np.ndarray]], times: list[float],
          size: tuple[int, int]) -> tuple[dict, list[dict]]:
    """The row (matches per pair, pairs without match, precision, homography AUC at 1/3/5 px,
    failures, median ms) and the per-pair results of matches (k0, k1) of `data`'s pairs
    (dicts with homography, id and kind), found in `times` ms."""
    errors, counts, correct, per_pair = [], [], [], []
    for pair, (k0, k1), ms in zip(data, matches, times):
        k0, k1 = (np.asarray(k, np.float64).reshape(-1, 2) for k in (k0, k1))
        reprojection = reprojection_errors(pair["homography"], k0, k1)
        errors.append(corner_error(pair["homography"], k0, k1, size))
        counts.append(len(k0))
        correct.append(int((reprojection < 3).sum()))
        per_pair.append({"pair": pair["id"], "kind": pair["kind"], "matches": len(k0),
                         "correct": correct[-1], "corner_error_px": errors[-1], "ms": ms})
    row = {"pairs": len(data), "matches": float(np.mean(counts)),
           "no_match": int(sum(m == 0 for m in counts)),
           "precision": float(np.sum(correct) / max(np.sum(counts), 1)),
           **{f"auc@{t}px": auc(errors, t) for t in (1, 3, 5)},
           "failures": int(sum(not e <= FAILURE_PX for e in errors)),
           "median_ms": float(np.median(times))}
    return row, per_pair


def kind_lines(per_pair: list[dict], methods: tuple[str, ...] = (
        "ALIKED+LightGlue, previous default (ours)", NO_FALLBACK, KEEP_OFF, VERIFY_OFF, BLUR_OFF,
        COARSE_OFF, DENOISE_OFF, RICHER_OFF, SHIPPED)
               ) -> list[str]:
    """Per low-texture kind: pairs without match, failures, precision and AUC@3px of
    `methods`, and the pairs the shipped configuration fails on, with how many methods of the
    table solve each."""
    low = [p for p in per_pair if p["set"] == "low texture"]
    present = [m for m in methods if any(p["method"] == m for p in low)]
    if not present:
        return []
    lines = ["", "Per kind (low-texture set): pairs without match / failures / precision / "
             "AUC@3px.", "", "| kind | " + " | ".join(present) + " |",
             "|---|" + "---|" * len(present)]
    for kind in dict.fromkeys(p["kind"] for p in low):
        cells = []
        for m in present:
            group = [p for p in low if p["method"] == m and p["kind"] == kind]
            errors = [p["corner_error_px"] for p in group]
            matches = sum(p["matches"] for p in group)
            cells.append(f"{sum(p['matches'] == 0 for p in group)} / "
                         f"{sum(not e <= FAILURE_PX for e in errors)} / "
                         f"{sum(p['correct'] for p in group) / max(matches, 1):.3f} / "
                         f"{auc(errors, 3):.3f}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    failed = [p["pair"] for p in low
              if p["method"] == SHIPPED and not p["corner_error_px"] <= FAILURE_PX]
    if failed:
        methods_run = {p["method"] for p in low}
        solved = {pair: sum(1 for p in low if p["pair"] == pair
                            and p["corner_error_px"] <= FAILURE_PX) for pair in failed}
        lines += ["", f"{SHIPPED} fails on: " + ", ".join(
            f"{pair} (solved by {solved[pair]} of {len(methods_run)} methods)" for pair in failed)
            + "."]
    return lines


def stream_runs(overrides: dict[str, Any], photos: tuple[str, ...], kinds: tuple[str, ...],
                size: tuple[int, int], frames_per_part: int = 4) -> tuple[list[dict], list[dict]]:
    """Textured -> `kind` -> textured streams through match_node.yaml's pipeline; returns one
    row per stream and one per published frame (path, matches, precision, timings)."""
    pipeline = Pipeline.from_yaml(CONFIG, **overrides)
    streams, frames = [], []
    for photo in photos:
        for kind in kinds:
            n = 3 * frames_per_part
            sequence = make_sequence(photo, num_frames=n, size=size, step=6, seed=1)
            labels = [None] * frames_per_part + [kind] * frames_per_part + [None] * frames_per_part
            stream = SequentialMatcher(pipeline)
            published = []
            for p in replay(stream, degrade_frames(sequence.frames, labels), sequence):
                t = p.frame
                pair = ("textured" if labels[t] is None and labels[t - 1] is None else
                        "textureless" if labels[t] is not None and labels[t - 1] is not None
                        else "transition")
                published.append({"photo": photo, "kind": kind, "frame": t, "pair": pair,
                                  "path": p.path, "matches": len(p.errors),
                                  "correct": p.correct, "tracks_reset": p.tracks_reset,
                                  **{k: float(v) for k, v in p.result.timings.items()}})
            paths = [f["path"] for f in published]
            changes = sum(a != b for a, b in zip(paths, paths[1:]))
            streams.append({
                "photo": photo, "kind": kind, "switches": stream.switch.switches,
                "path_changes": changes, "paths": paths,
                "resets": [f["frame"] for f in published if f["tracks_reset"]],
                "empty": sum(f["matches"] == 0 for f in published),
                "min_matches": min(f["matches"] for f in published),
                "precision": {group: float(sum(f["correct"] for f in published
                                               if f["pair"] == group)
                                           / max(1, sum(f["matches"] for f in published
                                                        if f["pair"] == group)))
                              for group in ("textured", "transition", "textureless")}})
            frames += published
            print(f"[lowtexture] stream {photo}/{kind}: {streams[-1]}", flush=True)
    return streams, frames


def stream_lines(streams: list[dict], frames: list[dict]) -> list[str]:
    lines = ["", "Streams through match_node.yaml's pipeline (SequentialMatcher, as the node runs "
             "it): 4 textured frames, 4 frames of the kind, 4 textured frames of a real-image "
             "camera path (sequence.py, seed 1); 11 messages each. Transitions are the pairs "
             "that straddle a change of kind.", "",
             "| photo | kind | switches | path changes | tracks reset at frames | messages "
             "without matches | fewest matches | precision textured / transition / "
             "textureless |", "|---|---|---|---|---|---|---|---|"]
    for s in streams:
        p = s["precision"]
        lines.append(f"| {s['photo']} | {s['kind']} | {s['switches']} | {s['path_changes']} | "
                     f"{', '.join(map(str, s['resets']))} | {s['empty']} | {s['min_matches']} | "
                     f"{p['textured']:.3f} / {p['transition']:.3f} / {p['textureless']:.3f} |")
    lines += ["", "Time per published frame by the path that served it (median ms over the "
              "streams above; total = the frame as the latency budget counts it, including the "
              "ALIKED extraction every frame gets for the texture measure):", "",
              "| path | pairs | frames | matches/frame | its extraction ms | match ms | refine ms "
              "| total ms |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for f in frames:
        groups.setdefault((f["path"], f["pair"]), []).append(f)
    for (path, pair), group in sorted(groups.items()):
        med = {k: float(np.median([f[k] for f in group]))
               for k in ("matches", "extract_ms", "match_ms", "refine_ms", "total_ms")}
        lines.append(f"| {path} | {pair} | {len(group)} | {med['matches']:.0f} | "
                     f"{med['extract_ms']:.0f} | {med['match_ms']:.0f} | {med['refine_ms']:.0f} "
                     f"| {med['total_ms']:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="",
                        help="comma-separated substrings of method names (case-insensitive)")
    parser.add_argument("--photos", default="held-out",
                        help="'held-out', 'tuning', 'smooth' or comma-separated skimage "
                             "photographs")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--severity", type=float, default=1.0,
                        help="scales the degradations (groundtruth.lowtexture.degrade): 2 "
                             "blurs twice as much and leaves half the contrast, light or "
                             "transmission; the views and draws stay the same")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--textured-photos", default="coffee,astronaut,chelsea,rocket",
                        help="bench/evaluate.py's photographs for the textured set; 'none' skips")
    parser.add_argument("--loftr-weights", default="", help="official LoFTR checkpoint (.ckpt)")
    parser.add_argument("--loftr-model", default="loftr-outdoor", choices=P.LOFTR_MODELS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="bench/results")
    parser.add_argument("--name", default="lowtexture", help="output file stem")
    parser.add_argument("--stream-photos", default="chelsea,motorcycle,gravel",
                        help="photographs of the stream runs; 'none' skips them")
    parser.add_argument("--stream-kinds", default="blur_low_contrast,fog,dark,motion_blur")
    parser.add_argument("--keep-others", default="",
                        help="a lowtexture.json whose rows and pairs of the methods not run now "
                             "are kept as they are (the methods run now replace theirs)")
    parser.add_argument("--reuse-pairs", default="",
                        help="a lowtexture.json whose pair results are taken as they are "
                             "(only the streams run again)")
    args = parser.parse_args()
    if not args.severity > 0:
        parser.error(f"--severity must be positive, got {args.severity}")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    photos = {"held-out": HELD_OUT_PHOTOS, "tuning": TUNING_PHOTOS,
              "smooth": SMOOTH_PHOTOS}.get(
        args.photos, tuple(args.photos.split(",")))
    kinds = tuple(args.kinds.split(","))
    seeds = tuple(int(s) for s in args.seeds.split(","))
    low = [{"image0": p.image0, "image1": p.image1, "homography": p.homography, "id": p.id,
            "kind": p.kind} for p in make_pairs(photos, kinds, seeds, size, args.severity)]
    sets = [("low texture", low, size)]
    if args.textured_photos != "none":
        textured = [p for p in textured_pairs(tuple(args.textured_photos.split(",")))
                    if p["kind"] == "original"]
        sets.append(("textured", textured, (640, 480)))

    served: dict[str, Counter] = {}
    wanted = [w.strip().lower() for w in args.methods.split(",") if w.strip()]
    table = [(name, build) for name, build in method_table(args, served)
             if not wanted or any(w in name.lower() for w in wanted)]
    rows, per_pair = [], []
    started = time.perf_counter()
    if args.reuse_pairs:
        reused = json.loads(Path(args.reuse_pairs).read_text())
        rows, per_pair, table = reused["rows"], reused["pairs"], []
    for name, build in table:
        run = build()
        run(low[0]["image0"], low[0]["image1"])  # warm-up (lazy initialisation), not timed
        for counter in served.values():
            counter.clear()
        for group, data, data_size in sets:
            row, pairs = evaluate(run, data, data_size)
            row = {"method": name, "set": group, **row}
            if name in served:
                row["served"] = dict(served[name])
                served[name].clear()
            rows.append(row)
            per_pair += [{"method": name, "set": group, **p} for p in pairs]
            print(f"[lowtexture] {name} / {group}: {row}", flush=True)

    if args.keep_others:
        kept = json.loads(Path(args.keep_others).read_text())
        # The methods run now, or whose pairs were reused (every one has rows): theirs
        # replace the kept ones.
        ran = {r["method"] for r in rows}
        fresh = {(r["method"], r["set"]): r for r in rows}
        rows = [fresh.pop((r["method"], r["set"]), r) for r in kept["rows"]
                if r["method"] not in ran or (r["method"], r["set"]) in fresh]
        rows += list(fresh.values())
        per_pair = [p for p in kept["pairs"] if p["method"] not in ran] + per_pair
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    where = (f"{os.cpu_count()}-core CPU shared with other jobs (ms are rough)"
             if args.device == "cpu" else args.device)
    lines = [f"Low-texture pairs: {len(photos)} photographs ({', '.join(photos)}) x "
             f"{len(kinds)} kinds ({', '.join(kinds)}) x seeds {list(seeds)} at "
             f"{size[0]}x{size[1]}"
             + (f", severity {args.severity:g} (degradations scaled: see "
                "groundtruth.lowtexture.degrade)" if args.severity != 1.0 else "")
             + ", generated by match_node/lowtexture.py with exact "
             "homographies. Textured: bench/evaluate.py's pairs "
             f"({args.textured_photos}, 2 homographies each, 640x480). Precision: reprojection "
             "error < 3 px; AUC: mean corner error of the MAGSAC++ homography; failures: no "
             f"homography or corner error > {FAILURE_PX:g} px. ms: median of one pair (both "
             f"images extracted, then matched), {args.threads} thread(s), {where}. "
             "'ours' runs refine patch and the exit guard (the defaults) unless the row says "
             "otherwise.", ""]
    if args.loftr_weights == "":
        lines += ["LoFTR rows skipped: no official LoFTR file given (--loftr-weights).", ""]
    lines += ["| method | set | pairs | matches/pair | pairs without match | precision | "
              "AUC@1px | AUC@3px | AUC@5px | failures | median ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['set']} | {r['pairs']} | {r['matches']:.0f} | "
                     f"{r['no_match']} | {r['precision']:.3f} | {r['auc@1px']:.3f} | "
                     f"{r['auc@3px']:.3f} | {r['auc@5px']:.3f} | {r['failures']} | "
                     f"{r['median_ms']:.0f} |")
    for r in rows:
        if "served" in r:
            lines.append(f"\n{r['method']}, {r['set']}: pairs served by "
                         + ", ".join(f"{k} {v}" for k, v in sorted(r["served"].items())) + ".")
    lines += kind_lines(per_pair)
    streams, stream_frames = [], []
    if args.stream_photos != "none":
        overrides = {"device": args.device, "allow_download": False,
                     **({"loftr_weights": args.loftr_weights} if args.loftr_weights else {})}
        stream_photos = tuple(args.stream_photos.split(","))
        stream_kinds = tuple(args.stream_kinds.split(","))
        streams, stream_frames = stream_runs(overrides, stream_photos, stream_kinds, size)
        if "motion_blur" in stream_kinds:  # the same streams with the blur check off, beside
            off_streams, _ = stream_runs({**overrides, "texture_blur_mismatch": 0.0},
                                                  stream_photos, ("motion_blur",), size)
            for row in off_streams:  # (the timing table stays the shipped streams')
                row["kind"] = "motion_blur, texture_blur_mismatch 0"
            streams += off_streams
        lines += stream_lines(streams, stream_frames)
    (output / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    settings = {"device": args.device, "threads": args.threads, "photos": list(photos),
                "kinds": list(kinds), "seeds": list(seeds), "size": list(size),
                "severity": args.severity,
                "textured_photos": args.textured_photos, "failure_px": FAILURE_PX,
                "loftr_weights": bool(args.loftr_weights), "torch": torch.__version__,
                "opencv": cv2.__version__, "seconds": time.perf_counter() - started}
    if args.reuse_pairs:  # the pairs' own run: its settings and time
        settings = {**reused["settings"], "streams_rerun_seconds": settings["seconds"],
                    "pairs_from": args.reuse_pairs}
    (output / f"{args.name}.json").write_text(json.dumps(
        {"settings": settings, "rows": rows, "pairs": per_pair, "streams": streams,
         "stream_frames": stream_frames}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
