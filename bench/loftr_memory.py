"""LoFTR peak memory and time: ours and kornia's, at 640x480 and 1280x960.

    python -m bench.loftr_memory [--device cpu|cuda] [--sizes 640x480 1280x960] [--repeats 2]

Each (implementation, size) runs in a fresh subprocess, so one measurement's high-water mark
cannot leak into the next. In the child: the model with random weights in the official
layout (kornia's module tree with a fixed seed, batch-norm statistics randomised and the
coarse norm2 gains tripled so the dual-softmax is peaky and the fine stage has matches to
refine, as in test_loftr.py; match threshold 1e-5 for the same reason: at the official 0.2
random weights match nothing), a real image pair (a photograph and a homography-warped copy,
grayscale), one warm-up forward, then `repeats` timed forwards. Reported:
  * peak RSS increase: ru_maxrss at the end minus the resident size just before the first
    forward (includes the warm-up; the slack column is how far the high-water mark already
    exceeded the resident size before that, from building the model: a non-zero slack
    means the increase may be overstated by up to that much);
  * on CUDA, torch.cuda.max_memory_allocated over the forwards, minus what was allocated
    before them;
  * the median forward time.
Writes bench/results/loftr_memory_<device>.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _official_state():
    import torch
    from kornia.feature.loftr.loftr import LoFTR as KorniaLoFTR

    torch.manual_seed(0)
    state = KorniaLoFTR(pretrained=None).state_dict()
    generator = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = value + torch.rand(value.shape, generator=generator)
        elif key.endswith("running_mean"):
            state[key] = value + 0.1 * torch.randn(value.shape, generator=generator)
        elif key.startswith("loftr_coarse") and key.endswith("norm2.weight"):
            state[key] = value * 3
    return state


def _images(width: int, height: int):
    import cv2
    import numpy as np
    import torch
    from match_node.groundtruth.planar import load_photo

    homography = np.array([[0.96, 0.06, 12.0], [-0.05, 0.98, 6.0], [8e-5, -4e-5, 1.0]])
    photo = cv2.resize(load_photo("coffee"), (width, height), interpolation=cv2.INTER_AREA)
    warped = cv2.warpPerspective(photo, homography, (width, height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)
    return [torch.from_numpy(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY))[None, None].float() / 255
            for im in (photo, warped)]


def child(impl: str, size: str, device_name: str, repeats: int, threshold: float) -> dict:
    import torch

    device = torch.device(device_name)
    width, height = map(int, size.split("x"))
    state = _official_state()
    if impl == "ours":
        from match_node.engine import weights
        from match_node.models.loftr import LoFTR
        model = LoFTR(match_threshold=threshold)
        weights.load_into(model, {f"matcher.{k}": v for k, v in state.items()}, "random",
                          LoFTR.rename_official_keys)

        def forward(image0, image1):
            return model(image0, image1)
    else:
        from kornia.feature.loftr.loftr import LoFTR as KorniaLoFTR, default_cfg
        config = copy.deepcopy(default_cfg)
        config["match_coarse"]["thr"] = threshold
        model = KorniaLoFTR(pretrained=None, config=config)
        model.load_state_dict(state)

        def forward(image0, image1):
            return model({"image0": image0, "image1": image1})
    del state
    model = model.eval().to(device)
    image0, image1 = (im.to(device) for im in _images(width, height))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    import gc
    gc.collect()
    rss_before, hwm_before = _rss_mb(), _maxrss_mb()
    cuda_before = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device) / 2**20
    times = []
    with torch.no_grad():
        for run in range(repeats + 1):  # the first is a warm-up
            sync()
            start = time.perf_counter()
            out = forward(image0, image1)
            sync()
            if run > 0:
                times.append(time.perf_counter() - start)
            matches = len(out["keypoints0"])
            del out
    result = {
        "impl": impl, "size": size, "device": device_name, "matches": matches,
        "coarse_cells": ((width + 7) // 8) * ((height + 7) // 8),
        "time_ms": 1000 * statistics.median(times), "times_ms": [1000 * t for t in times],
        "rss_before_mb": rss_before, "peak_rss_increase_mb": _maxrss_mb() - rss_before,
        "slack_mb": max(hwm_before - rss_before, 0.0), "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 - cuda_before
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x960"])
    parser.add_argument("--impls", nargs="+", default=["ours", "kornia"])
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards after a warm-up")
    parser.add_argument("--threshold", type=float, default=1e-5,
                        help="match threshold (random weights match nothing at 0.2)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(*args.child, args.device, args.repeats, args.threshold)))
        return

    import torch

    rows = []
    for size in args.sizes:
        for impl in args.impls:
            # Run as a module from the repository root, as the user does, so bench is importable.
            command = [sys.executable, "-m", "bench.loftr_memory", "--child", impl, size,
                       "--device", args.device, "--repeats", str(args.repeats),
                       "--threshold", str(args.threshold)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                error = done.stderr.strip().splitlines()[-1]
                rows.append({"impl": impl, "size": size, "error": error})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)

    cuda = args.device.startswith("cuda")
    lines = [
        f"# LoFTR memory and time ({args.device})", "",
        f"`python -m bench.loftr_memory --device {args.device}` on {platform.node()}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if cuda and torch.cuda.is_available() else "")
        + f", {time.strftime('%Y-%m-%d %H:%M')}.", "",
        f"Random weights in the official layout (see the script), match threshold "
        f"{args.threshold:g}, one "
        "image pair (photograph + homography-warped copy), batch 1, fp32. Each row is a fresh "
        f"process; time is the median of {args.repeats} forwards after a warm-up.", "",
        "| implementation | size | coarse cells | matches | time (ms) | peak RSS increase (MB) "
        "| slack (MB) |" + (" CUDA peak (MB) |" if cuda else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if cuda else ""),
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['impl']} | {row['size']} | failed: {row['error']} |")
            continue
        line = (f"| {row['impl']} | {row['size']} | {row['coarse_cells']} | {row['matches']} | "
                f"{row['time_ms']:.0f} | {row['peak_rss_increase_mb']:.0f} | "
                f"{row['slack_mb']:.0f} |")
        if cuda:
            line += f" {row.get('cuda_peak_mb', float('nan')):.0f} |"
        lines.append(line)
    lines += ["", "The dual-softmax matrix is (coarse cells)^2 floats: 92 MB at 640x480, "
              "1.47 GB at 1280x960. kornia keeps two such matrices alive at its peak, ours one "
              "(models/loftr.py, dual_softmax); ours also runs the backbone one image at a time "
              "where kornia batches two same-size images."]
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"loftr_memory_{args.device.split(':')[0]}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
