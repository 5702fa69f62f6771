"""Benchmarks of match_node, run as modules from the repository root (`python -m bench.<name>`,
each with `--help`); every script writes its tables into --output (default bench/results):

    budget        latency budget: percentiles, budget misses, correct matches kept
                  -> budget_<device>.md, .json, .png (`make bench`)
    evaluate      matching accuracy on real photographs under known homographies, plain and
                  low-texture, and the stereo epipolar filter -> evaluation.md, .json
    loftr_memory  LoFTR peak memory and time, ours against kornia, one process per row
                  -> loftr_memory_<device>.md
    lowtexture    low-texture pairs and streams, every method side by side
                  -> lowtexture.md, .json (names set by --name)
    pose          relative-pose accuracy on a rendered 3D sequence with known poses
                  -> pose.md, .json
    refinement    sub-pixel refinement methods on the same matches -> refinement.md

evaluate also holds the pairs, matchers and metrics that lowtexture, pose and refinement share.
"""
