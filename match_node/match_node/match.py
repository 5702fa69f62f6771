"""Match two images from the command line.

    python -m match_node.match IMAGE0 IMAGE1 [--config FILE.yaml] [--set name=value ...]
                               --output result.npz [--plot result.png]

Writes keypoints0 and keypoints1 (Kx2, original pixels, pixel centres at integers), scores,
indices0, indices1, exit_layer, timings (preprocess, extract, match, total in ms, named by
timing_names) to the .npz file, and optionally a side-by-side picture of the matches.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from . import params as P


def read_image(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"error: cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m match_node.match", description=__doc__.split("\n\n")[0],
        epilog="Parameters (--set): " + ", ".join(
            f"{s.name} (default {s.default!r})" for s in P.PIPELINE_PARAMETERS))
    parser.add_argument("image0", help="reference image")
    parser.add_argument("image1", help="current image")
    parser.add_argument("--config", help="parameter YAML (the node's config format)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one parameter; repeatable")
    parser.add_argument("--output", required=True, help="result .npz file")
    parser.add_argument("--plot", help="write a picture of the matches (PNG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .engine import families
    try:
        values = P.load_yaml(args.config) if args.config else {}
        families.validate(values)  # and whether extractor and matcher fit
        values = {k: v for k, v in values.items() if P.SPECS[k].scope == "pipeline"}
        values.update(P.parse_assignments(args.set))
    except (P.ParameterError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from .engine.pipeline import Pipeline  # torch import after argument errors are reported
    from .engine.weights import WeightsError
    image0, image1 = read_image(args.image0), read_image(args.image1)
    try:
        pipeline = Pipeline(values)
        result = pipeline.match(image0, image1)
    except (P.ParameterError, WeightsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    names = ["preprocess_ms", "extract_ms", "match_ms", "total_ms"]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.output, keypoints0=result.keypoints0, keypoints1=result.keypoints1,
             scores=result.scores, indices0=result.indices0, indices1=result.indices1,
             exit_layer=np.int64(result.exit_layer),
             timings=np.array([result.timings[n] for n in names]),
             timing_names=np.array(names))
    print(f"{len(result)} matches ({result.num_keypoints0} / {result.num_keypoints1} keypoints), "
          f"exit at layer {result.exit_layer}/{result.num_layers}, "
          f"{result.timings['total_ms']:.0f} ms on {pipeline.device} -> {args.output}")
    if args.plot:
        from .viz import draw_matches
        title = f"{len(result)} matches, {pipeline.extractor_name} + {pipeline.matcher_name}"
        picture = draw_matches(image0, image1, result.keypoints0, result.keypoints1,
                               result.scores, title)
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(args.plot, picture)
    return 0


if __name__ == "__main__":
    sys.exit(main())
