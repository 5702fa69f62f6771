"""The matching engine: from a numpy frame to matches, with no ROS and no file formats.

What lives here: model families and their weights (`families`, `weights`), image preparation
and input guards (`image`), the pipeline that composes extractor, matcher and refinement
(`pipeline`), the per-stream state (`stream`: reference frame, texture switch, tracks), the
result types (`results`), the latency budget (`budget`), the texture measure and the
textureless path's helpers (`texture`), sub-pixel refinement (`refine`), track ids
(`tracker`), stereo pairing (`stereo`) and the frame runner that every front end shares
(`runner`).

It may import `match_node.models`, `match_node.params` and `match_node.messages` (constants
only); never `bags`, `groundtruth` or `ros`.
"""
