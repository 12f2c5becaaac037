import numpy as np
import pytest
import torch

from hirex.config import ModelConfig
from hirex.data.interactions import Interactions
from hirex.index.exhaustive import exhaustive_topk
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.user_batch import UserBatch


def _reference(model, history, users, k, exclude):
    """Full score matrix, mask, sort: the obviously correct answer."""
    with torch.no_grad():
        batch = UserBatch.from_interactions(history, users)
        s = model.score(model.encode_users(batch), model.encode_items()).numpy()
    for r, u in enumerate(users):
        if exclude is not None:
            s[r, exclude.user_items(u)] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(s, order, 1)
    order[np.isinf(top)] = -1
    return top, order


@pytest.mark.parametrize("scorer", ["dot", "mol"])
@pytest.mark.parametrize("user_batch, item_chunk", [(512, 65536), (3, 7), (1, 50)])
def test_exhaustive_matches_full_sort(scorer, user_batch, item_chunk):
    rng = np.random.default_rng(0)
    n_users, n_items = 23, 50
    history = Interactions.from_lists(
        [rng.choice(n_items, rng.integers(0, 9), replace=False) for _ in range(n_users)], n_items
    )
    torch.manual_seed(0)
    model = RetrievalModel(ModelConfig(dim=8, scorer=scorer), n_users, n_items).eval()
    users = rng.permutation(n_users)[:17]
    top = exhaustive_topk(
        model, users, history, 10, exclude=history, user_batch=user_batch, item_chunk=item_chunk
    )
    ref_scores, ref_ids = _reference(model, history, users, 10, history)
    assert top.ids.shape == (17, 10) and top.scores.shape == (17, 10)
    np.testing.assert_allclose(top.scores.numpy(), ref_scores, rtol=1e-5)
    np.testing.assert_array_equal(top.ids.numpy(), ref_ids)
    for r, u in enumerate(users):
        assert not set(top.ids[r].tolist()) & set(history.user_items(u).tolist())


def test_fewer_eligible_items_than_k_pads_with_minus_one():
    history = Interactions.from_lists([[0, 1, 2], []], 5)
    model = RetrievalModel(ModelConfig(dim=4), 2, 5).eval()
    top = exhaustive_topk(model, np.array([0, 1]), history, 4, exclude=history)
    assert sorted(top.ids[0, :2].tolist()) == [3, 4]
    assert top.ids[0, 2:].tolist() == [-1, -1] and torch.isinf(top.scores[0, 2:]).all()
    assert (top.ids[1] >= 0).all()


def test_adhoc_users_and_extra_exclusions():
    history = Interactions.from_lists([[0, 1]], 6)
    model = RetrievalModel(ModelConfig(dim=4, use_user_id=False), 1, 6).eval()
    adhoc = UserBatch.from_histories([[0, 1]])
    a = exhaustive_topk(model, adhoc, None, 6, exclude_ids=[np.array([0, 1, 5])])
    b = exhaustive_topk(model, np.array([0]), history, 6, exclude=history)
    assert set(a.ids[0].tolist()) == {2, 3, 4, -1}
    assert a.ids[0, :3].tolist() == [i for i in b.ids[0].tolist() if i != 5][:3]


def test_bad_arguments():
    history = Interactions.from_lists([[0]], 3)
    model = RetrievalModel(ModelConfig(dim=4), 1, 3)
    with pytest.raises(ValueError, match="k must be positive"):
        exhaustive_topk(model, np.array([0]), history, 0)
    with pytest.raises(ValueError, match="user ids must lie"):
        exhaustive_topk(model, np.array([5]), history, 1)
