"""The matching engine: from a numpy frame to matches, with no ROS and no file formats.

    families, matchers   what each `extractor` / `matcher` value means: build, weights,
                         parameters, partners, one call signature (the registry)
    weights, backends    official checkpoints; where a network runs (torch, OpenVINO)
    image                decoding guards and preparation of frames
    pipeline, results    extractor + matcher + refinement on a pair; Features, MatchResult
    stream, stereo       a camera's stream (reference frame, texture switch, tracks); stereo
    runner, framelog     the frame loop every front end shares; one record per frame
    budget, costmodel    the latency budget and its online cost models
    texture, refine,     the texture measure and textureless helpers; sub-pixel refinement;
    tracker              persistent track ids

It may import `match_node.models`, `match_node.params` and `match_node.messages`; never
`bags`, `groundtruth` or `ros` (test_core_no_ros.py checks the direction of every import).
"""
