"""Mutual nearest neighbour with the ratio test, against a brute-force reference."""
import numpy as np
import pytest
import torch

from match_node.messages import EXIT_NO_KEYPOINTS
from match_node.models.nearest import NearestNeighbor


def brute_force(desc0: np.ndarray, desc1: np.ndarray, ratio: float) -> set[tuple[int, int]]:
    distances = np.linalg.norm(desc0[:, None] - desc1[None], axis=-1)
    matches = set()
    for i in range(len(desc0)):
        order = np.argsort(distances[i])
        j = int(order[0])
        back = np.argsort(distances[:, j])
        if int(back[0]) != i:
            continue
        if distances[i, j] >= ratio * distances[i, order[1]]:
            continue
        if distances[i, j] >= ratio * distances[back[1], j]:
            continue
        matches.add((i, j))
    return matches


@pytest.mark.parametrize("ratio", [0.8, 0.95, 1.0])
def test_matches_brute_force(ratio):
    rng = np.random.default_rng(1)
    shared = rng.normal(size=(60, 32))
    desc0 = np.concatenate([shared + 0.3 * rng.normal(size=shared.shape), rng.normal(size=(40, 32))])
    desc1 = np.concatenate([rng.normal(size=(30, 32)), shared + 0.3 * rng.normal(size=shared.shape)])
    out = NearestNeighbor(ratio=ratio)(torch.from_numpy(desc0).float(),
                                       torch.from_numpy(desc1).float())
    got = {tuple(m) for m in out.matches.tolist()}
    expected = brute_force(desc0, desc1, ratio if ratio < 1 else np.inf)
    assert got == expected and len(got) >= 30
    assert torch.all((out.scores >= 0) & (out.scores <= 1))
    if ratio < 1:
        assert torch.all(out.scores > 1 - ratio - 1e-6)


def test_swapping_the_images_transposes_the_matches():
    rng = np.random.default_rng(2)
    desc0 = torch.from_numpy(rng.normal(size=(80, 16))).float()
    desc1 = torch.cat([desc0[:50] + 0.1 * torch.randn(50, 16), torch.randn(20, 16)])
    forward = NearestNeighbor()(desc0, desc1)
    backward = NearestNeighbor()(desc1, desc0)
    assert {tuple(m) for m in forward.matches.tolist()} == \
        {tuple(m[::-1]) for m in backward.matches.tolist()}


def test_empty_and_single():
    empty = NearestNeighbor()(torch.zeros(0, 8), torch.randn(5, 8))
    assert empty.exit_reason == EXIT_NO_KEYPOINTS and len(empty.matches) == 0
    one = NearestNeighbor()(torch.ones(1, 8), torch.ones(1, 8))
    assert one.matches.tolist() == [[0, 0]]
