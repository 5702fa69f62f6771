"""How each registered matcher is built, configured and run: the entry classes of the
registry in families.py (which holds the entries themselves and decides which combinations
work). No torch import here either: models and torch are imported when first used.

Every keypoint matcher runs through one signature, `entry.run(model, features0, features1,
hook, min_exit_matches) -> MatchOutput`, so the pipeline needs no branch per model.
Run-time parameters reach a model through `entry.parameters` (parameter -> conf key); a
parameter set to its `ParamSpec.model_default` takes the model's own setting for the
configuration built (`own_or_given`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .. import params as P

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..models.lightglue import LayerHook, MatchOutput
    from .families import ExtractorFamily, MatcherMode
    from .results import Features


def model_attr(module: str, name: str) -> Any:
    """`name` ("Class" or "Class.attribute") of match_node/models/<module>.py, imported now."""
    value: Any = importlib.import_module(f"match_node.models.{module}")
    for part in name.split("."):
        value = getattr(value, part)
    return value


def update_known(conf: dict[str, Any], **values: Any) -> None:
    """Set the options a model has (not every extractor has an NMS radius or threshold)."""
    conf.update({k: v for k, v in values.items() if k in conf})


def own_or_given(name: str, value: Any, own: Any) -> Any:
    """Parameter `name`'s `value`, or the model's own setting `own` when the value is the
    parameter's model_default spelling (see params.ParamSpec)."""
    default = P.SPECS[name].model_default
    return own if default is not None and value == default else value


def load_weights(model: nn.Module, key: str, explicit: str, params: Mapping[str, Any],
                 rename: Callable[[dict], dict] | None) -> Path:
    """Load checkpoint `key` into `model` from the `explicit` path, else the official file
    (see weights.py); the file loaded."""
    from . import weights  # torch: only when a model is built
    return weights.load_checkpoint(model, weights.CHECKPOINTS[key], explicit,
                                   params["allow_download"], rename=rename)


@dataclass(frozen=True, kw_only=True)
class KeypointMatcher:
    """A matcher of two frames' Features: its model, weights, run-time parameters, and one
    call signature for all (`run`)."""
    name: str                      # what results and messages report
    module: str                    # file under match_node/models
    class_name: str
    parameters: Mapping[str, str]  # run-time parameter -> the model's conf key it sets
    rename: str = ""               # "module:attribute" under models/ mapping official keys
    licence: str = ""
    budget_cuts: bool = False      # the latency budget can stop it between layers (LayerHook)
    exit_guard: bool = False       # it exits early by confidence, which exit_guard can refuse
    # It matches each keypoint by its descriptor alone, without the other keypoints: the
    # periods of a repetitive surface look alike to it (Pipeline.ambiguous).
    descriptor_only: bool = False

    def model_class(self) -> type[nn.Module]:
        return model_attr(self.module, self.class_name)

    def build(self, family: ExtractorFamily, params: Mapping[str, Any]) -> nn.Module:
        """The model without weights, with the run-time parameters set."""
        return self.model_class()(**self.options(family, params))

    def checkpoint(self, family: ExtractorFamily, params: Mapping[str, Any]) -> str | None:
        """Key of its weights in weights.CHECKPOINTS; None: it has none."""
        return None

    def load(self, family: ExtractorFamily,
             params: Mapping[str, Any]) -> tuple[nn.Module, Path | None]:
        """The model with its weights (`matcher_weights`, else the official file)."""
        model = self.build(family, params)
        key = self.checkpoint(family, params)
        if key is None:
            return model, None
        rename = model_attr(*self.rename.split(":")) if self.rename else None
        return model, load_weights(model, key, params["matcher_weights"], params, rename)

    def own_conf(self, family: ExtractorFamily) -> Mapping[str, Any]:
        """The model's own defaults for this family."""
        return self.model_class().default_conf

    def options(self, family: ExtractorFamily, params: Mapping[str, Any]) -> dict[str, Any]:
        """Model options from the run-time parameters (model defaults resolved)."""
        own = self.own_conf(family)
        return {key: own_or_given(name, params[name], own[key])
                for name, key in self.parameters.items()}

    def apply(self, model: nn.Module, family: ExtractorFamily,
              params: Mapping[str, Any]) -> None:
        """Set the run-time parameters on the built model."""
        model.conf.update(self.options(family, params))

    def num_layers(self, model: nn.Module) -> int:
        return 0

    def refusal(self, family: ExtractorFamily, mode: MatcherMode) -> str | None:
        """Why it cannot match `family`'s descriptors (the rule, no advice), or None."""
        return None

    def run(self, model: nn.Module, features0: Features, features1: Features,
            hook: LayerHook | None, min_exit_matches: int) -> MatchOutput:
        """Match one pair. `min_exit_matches` reaches the matchers with exit_guard. `hook`
        sees the layers of matchers with budget_cuts; the others report their whole match to
        it as the step after the last layer (before_assignment), which the budget then times."""
        raise NotImplementedError

    def layer_probe(self, model: nn.Module, points: int, generator: torch.Generator,
                    device: torch.device) -> Callable[[], Any]:
        """One layer on `points` random points per image, inputs prepared: what the latency
        budget times to seed its layer costs (matchers with budget_cuts only)."""
        raise NotImplementedError(f"{self.name} has no layers the budget can cut")


def _sizes(features0: Features, features1: Features) -> tuple[torch.Tensor, torch.Tensor]:
    import torch
    device = features0.keypoints.device
    return (torch.tensor([features0.image_size], device=device),
            torch.tensor([features1.image_size], device=device))


@dataclass(frozen=True, kw_only=True)
class LightGlueMatcher(KeypointMatcher):
    """LightGlue with the configuration of the extractor's family (models.lightglue)."""
    checkpoints: Mapping[str, str]  # LightGlue configuration -> key in weights.CHECKPOINTS
    budget_cuts: bool = True
    exit_guard: bool = True

    def build(self, family: ExtractorFamily, params: Mapping[str, Any]) -> nn.Module:
        return self.model_class()(features=family.lightglue, **self.options(family, params))

    def checkpoint(self, family: ExtractorFamily, params: Mapping[str, Any]) -> str | None:
        return self.checkpoints[family.lightglue]

    def own_conf(self, family: ExtractorFamily) -> Mapping[str, Any]:
        return self.model_class().configuration(family.lightglue)

    def input_dim(self, family: ExtractorFamily) -> int:
        """Descriptor size the family's LightGlue takes (its official file's input
        projection; test_families checks it against the files)."""
        return int(model_attr("lightglue", "FEATURES")[family.lightglue]["input_dim"])

    def num_layers(self, model: nn.Module) -> int:
        return int(model.conf["n_layers"])

    def refusal(self, family: ExtractorFamily, mode: MatcherMode) -> str | None:
        wanted = self.input_dim(family)
        if family.descriptor_dim == wanted:
            return None
        file_name = _file_name(self.checkpoints[family.lightglue])
        return (f"extractor '{family.name}' gives {family.descriptor_dim}-d descriptors, but "
                f"its family's official LightGlue weights ({file_name}) take {wanted}-d "
                f"ones{mode.role}; no LightGlue was trained for {family.name}")

    def run(self, model: nn.Module, features0: Features, features1: Features,
            hook: LayerHook | None, min_exit_matches: int) -> MatchOutput:
        size0, size1 = _sizes(features0, features1)
        scale_ori0 = features0.scale_ori[None] if features0.scale_ori is not None else None
        scale_ori1 = features1.scale_ori[None] if features1.scale_ori is not None else None
        return model(features0.keypoints[None], features1.keypoints[None],
                     features0.descriptors[None], features1.descriptors[None], size0, size1,
                     hook=hook, scale_ori0=scale_ori0, scale_ori1=scale_ori1,
                     min_exit_matches=min_exit_matches)

    def layer_probe(self, model: nn.Module, points: int, generator: torch.Generator,
                    device: torch.device) -> Callable[[], Any]:
        import torch
        layer = model.transformers[0]
        desc = torch.randn(2, 1, points, model.conf["descriptor_dim"],
                           generator=generator).to(device)
        inputs = model.posenc.Wr.in_features  # 4 with SIFT's scale/orientation
        pos = torch.rand(1, points, inputs, generator=generator).to(device) * 2 - 1
        encoding = model.posenc(pos)
        return lambda: layer(desc[0], desc[1], encoding, encoding)


@dataclass(frozen=True, kw_only=True)
class SuperGlueMatcher(KeypointMatcher):
    """SuperGlue: the official weights exist for SuperPoint's 256-d descriptors only."""
    extractor: str = "superpoint"
    input_dim: int = 256

    def build(self, family: ExtractorFamily, params: Mapping[str, Any]) -> nn.Module:
        return self.model_class()(weights=params["superglue_model"],
                                  **self.options(family, params))

    def checkpoint(self, family: ExtractorFamily, params: Mapping[str, Any]) -> str | None:
        return f"superglue-{params['superglue_model']}"

    def num_layers(self, model: nn.Module) -> int:
        return int(model.num_layers)

    def refusal(self, family: ExtractorFamily, mode: MatcherMode) -> str | None:
        if family.name == self.extractor and family.descriptor_dim == self.input_dim:
            return None
        return (f"matcher '{mode.name}' needs extractor '{self.extractor}' (SuperGlue was "
                f"trained on SuperPoint's {self.input_dim}-d descriptors; no official weights "
                f"exist for {family.name})")

    def run(self, model: nn.Module, features0: Features, features1: Features,
            hook: LayerHook | None, min_exit_matches: int) -> MatchOutput:
        # The hook is not passed down: SuperGlue cannot stop between layers. As for nearest
        # neighbours, its whole match is the budget's step after the last layer (~ n0 * n1,
        # as its attention is), from which the budget sizes the keypoint cap.
        if hook is not None:
            hook.before_assignment(0, len(features0), len(features1))
        size0, size1 = _sizes(features0, features1)
        return model(features0.keypoints[None], features1.keypoints[None],
                     features0.descriptors[None], features1.descriptors[None], size0, size1,
                     features0.scores[None], features1.scores[None])


@dataclass(frozen=True, kw_only=True)
class NearestMatcher(KeypointMatcher):
    """Mutual nearest neighbours with the ratio test: descriptors of any size."""
    descriptor_only: bool = True

    def run(self, model: nn.Module, features0: Features, features1: Features,
            hook: LayerHook | None, min_exit_matches: int) -> MatchOutput:
        if hook is not None:
            # No layers to cut: the whole match (and the epipolar filter after it) is what
            # the budget models as the step after the last layer, ~ n0 * n1. From that and
            # the extraction model it sizes the keypoint cap and the resolution.
            hook.before_assignment(0, len(features0), len(features1))
        return model(features0.descriptors, features1.descriptors)


@dataclass(frozen=True, kw_only=True)
class DetectorFreeMatcher:
    """LoFTR: matches whole images; its checkpoint is the `loftr_model` parameter's."""
    name: str
    module: str
    class_name: str
    parameters: Mapping[str, str]  # run-time parameter -> the model's conf key it sets
    rename: str = ""               # "module:attribute" under models/ mapping official keys

    def model_class(self) -> type[nn.Module]:
        return model_attr(self.module, self.class_name)

    def load(self, params: Mapping[str, Any]) -> tuple[nn.Module, Path]:
        """The model with its weights (`loftr_weights`, else the official file)."""
        model = self.model_class()(model_name=params["loftr_model"])
        return model, load_weights(model, params["loftr_model"], params["loftr_weights"],
                                   params, model_attr(*self.rename.split(":")))

    def file_available(self, params: Mapping[str, Any]) -> bool:
        """Whether a weights file is given or found (a given file that is missing or wrong
        stops the pipeline when loaded, as for any weights). Never downloads."""
        if params["loftr_weights"]:
            return True
        from . import weights
        try:
            weights.resolve(weights.CHECKPOINTS[params["loftr_model"]], "",
                            allow_download=False)
        except weights.WeightsNotFoundError:
            return False
        return True

    def apply(self, model: nn.Module, params: Mapping[str, Any]) -> None:
        """Set the run-time parameters on the built model."""
        own = self.model_class().default_conf
        model.conf.update({key: own_or_given(name, params[name], own[key])
                           for name, key in self.parameters.items()})


def _file_name(checkpoint_key: str) -> str:
    from .weights import CHECKPOINTS
    return CHECKPOINTS[checkpoint_key].file_name
