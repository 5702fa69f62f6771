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
with the ratio test, any extractor), 'loftr' (detector-free) and 'auto' (LightGlue; while the
scene is textureless, LoFTR when its file is available, else SIFT on contrast-normalised images
with nearest neighbours).

Which combinations work is decided here, once (`combination_problem`), from the descriptor
size each extractor gives and the one each matcher's official weights take: aliked-t16 gives
64-d descriptors and no LightGlue was trained on them, so it runs with 'nn' only.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..models.lightglue import FEATURES


@dataclass(frozen=True)
class ExtractorFamily:
    name: str                     # the `extractor` parameter value
    module: str                   # file under match_node/models
    class_name: str
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # key in weights.CHECKPOINTS; None: no weights (SIFT)
    lightglue: str = "aliked"     # configuration key in lightglue.FEATURES
    licence: str = ""             # a restriction users must know about, if any
    # Length of the descriptors the official weights produce (test_families checks it by
    # running each extractor with its official file): what a matcher's weights must take.
    descriptor_dim: int = 0

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
    # ALIKED's descriptor size is its last feature width: 128 (desc_head.sf_conv 128x128 in
    # aliked-n16, -n16rot and -n32.pth), 64 for the tiny model (64x64 in aliked-t16.pth).
    **{name: ExtractorFamily(name, "aliked", "ALIKED", {"model_name": name}, name, "aliked",
                             descriptor_dim=64 if name == "aliked-t16" else 128)
       for name in ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16")},
    "superpoint": ExtractorFamily("superpoint", "superpoint", "SuperPoint", {}, "superpoint",
                                  "superpoint", _NON_COMMERCIAL, descriptor_dim=256),
    "disk": ExtractorFamily("disk", "disk", "DISK", {}, "disk-depth", "disk", descriptor_dim=128),
    "sift": ExtractorFamily("sift", "sift", "SIFT", {}, None, "sift", descriptor_dim=128),
    "xfeat": ExtractorFamily("xfeat", "xfeat", "XFeat", {}, "xfeat", "xfeat", descriptor_dim=64),
}

DETECTOR_MATCHERS = ("lightglue", "superglue", "nn")
# SuperGlue's official weights (indoor and outdoor) take SuperPoint's 256-d descriptors.
SUPERGLUE_INPUT_DIM = 256


def lightglue_checkpoint(family: ExtractorFamily) -> str:
    return FEATURES[family.lightglue]["checkpoint"]


def lightglue_rename(family: ExtractorFamily) -> Callable[[dict], dict]:
    """Key renaming for the family's LightGlue file (XFeat's holds extractor and matcher)."""
    if family.lightglue == "xfeat":
        from ..models.xfeat import lighterglue_rename
        return lighterglue_rename
    from ..models.lightglue import LightGlue
    return LightGlue.rename_official_keys


def detector_matcher_name(family: ExtractorFamily, matcher: str) -> str:
    """The name a result reports for the keypoint matcher of this family and parameter."""
    if matcher in ("lightglue", "auto", "loftr"):
        return "lighterglue" if family.lightglue == "xfeat" else "lightglue"
    return matcher


def lightglue_input_dim(family: ExtractorFamily) -> int:
    """Descriptor size the family's official LightGlue file takes (its input projection)."""
    return int(FEATURES[family.lightglue]["input_dim"])


def _refusal(family: ExtractorFamily, matcher: str) -> str | None:
    """Why `matcher` cannot work with `family` (the rule, no advice), or None.

    'nn' compares descriptors of any size. 'lightglue' needs the family's LightGlue weights to
    take the extractor's descriptor size; 'auto' matches textured frames with that LightGlue
    and 'loftr' loads it too (the stereo node matches left-right pairs with it), so they
    need the same. 'superglue' exists for SuperPoint only.
    """
    if matcher == "superglue":
        if family.name == "superpoint" and family.descriptor_dim == SUPERGLUE_INPUT_DIM:
            return None
        return (f"matcher 'superglue' needs extractor 'superpoint' (SuperGlue was trained on "
                f"SuperPoint's 256-d descriptors; no official weights exist for {family.name})")
    if matcher in ("lightglue", "auto", "loftr"):
        wanted = lightglue_input_dim(family)
        if family.descriptor_dim == wanted:
            return None
        role = {"lightglue": "",
                "auto": ", which matcher 'auto' uses on textured frames",
                "loftr": ", which matcher 'loftr' loads too (the stereo node matches left-right "
                         "pairs with it)"}[matcher]
        file_name = _file_name(lightglue_checkpoint(family))
        return (f"extractor '{family.name}' gives {family.descriptor_dim}-d descriptors, but "
                f"its family's official LightGlue weights ({file_name}) take {wanted}-d "
                f"ones{role}; no LightGlue was trained for {family.name}")
    if matcher == "nn":
        return None
    return f"unknown matcher '{matcher}'"


def supported_matchers(extractor: str) -> tuple[str, ...]:
    """The `matcher` values that work with `extractor`, in params.MATCHERS order."""
    from ..params import MATCHERS
    return tuple(m for m in MATCHERS if _refusal(EXTRACTOR_FAMILIES[extractor], m) is None)


def combination_problem(extractor: str, matcher: str) -> str | None:
    """Why `extractor` cannot run with `matcher`, with what would work instead; None when it
    can. The one place that decides (Pipeline and params.validate both ask it)."""
    if extractor not in EXTRACTOR_FAMILIES:
        return f"unknown extractor '{extractor}'"
    reason = _refusal(EXTRACTOR_FAMILIES[extractor], matcher)
    if reason is None:
        return None
    advice = f"use matcher {_quoted(supported_matchers(extractor))} with {extractor}"
    # Prefer the same family (another ALIKED variant) over a different extractor.
    works = [name for name in EXTRACTOR_FAMILIES if matcher in supported_matchers(name)]
    module = EXTRACTOR_FAMILIES[extractor].module
    instead = [n for n in works if EXTRACTOR_FAMILIES[n].module == module] or works
    if instead:
        advice += f", or matcher '{matcher}' with extractor {_quoted(instead)}"
    return f"{reason}. {advice[0].upper()}{advice[1:]}"


def _file_name(checkpoint_key: str) -> str:
    from .weights import CHECKPOINTS
    return CHECKPOINTS[checkpoint_key].file_name


def _quoted(names: tuple[str, ...] | list[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return " or ".join(quoted) if len(quoted) <= 2 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def check_combination(extractor: str, matcher: str) -> None:
    """Refuse combinations that cannot work (see combination_problem), with the reason."""
    from ..params import ParameterError
    problem = combination_problem(extractor, matcher)
    if problem is not None:
        raise ParameterError(problem)
