"""Tower modules: local interaction plus compression, and the top model over their outputs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchrec")

from hirex.distributed.sptt import TowerDLRM  # noqa: E402
from hirex.distributed.towers import TowerInteraction, keyed_values, pairwise_dots  # noqa: E402


def test_pairwise_dots_against_a_loop():
    v = torch.randn(3, 4, 5)
    ref = torch.stack(
        [(v[:, i] * v[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4)], dim=1
    )
    torch.testing.assert_close(pairwise_dots(v), ref)


def test_tower_interaction_compresses_and_sees_the_dots():
    m = TowerInteraction(n_features=4, dim=8, width=16)
    x = torch.randn(5, 32)
    assert m(x).shape == (5, 16)  # 32 values in, 16 out: 2x compression
    # the projection reads the pairwise dots: with zero weights on the raw embeddings the
    # output still changes when only the dot of features 0 and 1 changes
    with torch.no_grad():
        m.proj.weight[:, :32] = 0
    y = x.clone()
    y[:, :8] *= 2  # scales every dot with feature 0
    assert not torch.allclose(m(x), m(y))
    with pytest.raises(ValueError, match="multiple of dim"):
        TowerInteraction(4, 8, 12)


def test_keyed_values_reorders_by_key():
    from torchrec import KeyedTensor

    a, b = torch.ones(2, 3), 2 * torch.ones(2, 3)
    kt = KeyedTensor(keys=["f1", "f0"], length_per_key=[3, 3], values=torch.cat([b, a], 1))
    torch.testing.assert_close(keyed_values(kt, ["f0", "f1"], 3), torch.cat([a, b], 1))


def test_dlrm_with_tower_modules_trains_and_shapes_follow_the_width():
    torch.manual_seed(0)
    m = TowerDLRM((30,) * 6, 2, dim=4, towers=[[0, 1, 2], [3, 4, 5]], tower_width=8)
    dense, sparse = torch.randn(64, 2), torch.randint(0, 30, (64, 6))
    y = (sparse[:, 0] % 2 == sparse[:, 1] % 2).float()
    assert m(dense, sparse).shape == (64,)
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(dense, sparse), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="tower_width needs towers"):
        TowerDLRM((30,) * 6, 2, dim=4, tower_width=8)
