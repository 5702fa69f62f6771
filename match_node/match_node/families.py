"""Which model classes, checkpoints and LightGlue configuration each `extractor` / `matcher`
parameter value selects. No ROS imports; models are imported when first built, so choosing
one family never loads the code of the others.

    extractor            weights (official file)            LightGlue weights
    aliked-n16/...       aliked-n16.pth ...                 aliked_lightglue.pth
    superpoint           superpoint_v1.pth (user's file)    superpoint_lightglue.pth
    disk                 disk-depth-save.pth                disk_lightglue.pth
    sift                 (OpenCV, no weights)               sift_lightglue.pth
    xfeat                xfeat.pt                           xfeat-lighterglue.pt (LighterGlue)

Matchers: 'lightglue' (the extractor's LightGlue, LighterGlue for XFeat), 'superglue'
(SuperPoint only: it was trained on SuperPoint descriptors), 'nn' (mutual nearest neighbour
with the ratio test, any extractor), 'loftr' (detector-free) and 'auto' (LightGlue, LoFTR while
the scene is textureless).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .models.lightglue import FEATURES


@dataclass(frozen=True)
class ExtractorFamily:
    name: str                     # the `extractor` parameter value
    module: str                   # file under match_node/models
    class_name: str
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # key in weights.CHECKPOINTS; None: no weights (SIFT)
    lightglue: str = "aliked"     # configuration key in lightglue.FEATURES
    licence: str = ""             # a restriction users must know about, if any

    def model_class(self) -> type[nn.Module]:
        return getattr(importlib.import_module(f"match_node.models.{self.module}"),
                       self.class_name)

    def build(self) -> nn.Module:
        return self.model_class()(**self.options)

    def rename(self) -> Callable[[dict], dict] | None:
        return getattr(self.model_class(), "rename_official_keys", None)

    @property
    def own_threshold(self) -> float:
        """The extractor's own default detection threshold (the meaning differs by family)."""
        return float(self.model_class().default_conf.get("detection_threshold", 0.0))

    @property
    def own_nms_radius(self) -> int:
        conf = self.model_class().default_conf
        radius = conf.get("nms_radius")
        if radius is None and "nms_window_size" in conf:  # DISK states a window side
            radius = (conf["nms_window_size"] - 1) // 2
        return int(radius or 0)


_NON_COMMERCIAL = ("Magic Leap's SuperPoint/SuperGlue weights are licensed for "
                   "non-commercial research use only")

EXTRACTOR_FAMILIES: dict[str, ExtractorFamily] = {
    **{name: ExtractorFamily(name, "aliked", "ALIKED", {"model_name": name}, name, "aliked")
       for name in ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16")},
    "superpoint": ExtractorFamily("superpoint", "superpoint", "SuperPoint", {}, "superpoint",
                                  "superpoint", _NON_COMMERCIAL),
    "disk": ExtractorFamily("disk", "disk", "DISK", {}, "disk-depth", "disk"),
    "sift": ExtractorFamily("sift", "sift", "SIFT", {}, None, "sift"),
    "xfeat": ExtractorFamily("xfeat", "xfeat", "XFeat", {}, "xfeat", "xfeat"),
}

DETECTOR_MATCHERS = ("lightglue", "superglue", "nn")


def lightglue_checkpoint(family: ExtractorFamily) -> str:
    return FEATURES[family.lightglue]["checkpoint"]


def lightglue_rename(family: ExtractorFamily) -> Callable[[dict], dict]:
    """Key renaming for the family's LightGlue file (XFeat's holds extractor and matcher)."""
    if family.lightglue == "xfeat":
        from .models.xfeat import lighterglue_rename
        return lighterglue_rename
    from .models.lightglue import LightGlue
    return LightGlue.rename_official_keys


def detector_matcher_name(family: ExtractorFamily, matcher: str) -> str:
    """The name a result reports for the keypoint matcher of this family and parameter."""
    if matcher in ("lightglue", "auto", "loftr"):
        return "lighterglue" if family.lightglue == "xfeat" else "lightglue"
    return matcher


def check_combination(extractor: str, matcher: str) -> None:
    """Refuse combinations no official weights exist for, with the reason."""
    from .params import ParameterError
    if matcher == "superglue" and extractor != "superpoint":
        raise ParameterError(
            f"matcher 'superglue' needs extractor 'superpoint' (SuperGlue was trained on "
            f"SuperPoint's 256-d descriptors; no official weights exist for {extractor}); "
            "use matcher 'lightglue' or 'nn' with it")
