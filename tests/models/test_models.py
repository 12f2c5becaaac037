import numpy as np
import pytest
import torch

from hirex.config import ModelConfig
from hirex.data.interactions import Interactions
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.scorers import MixtureOfLogits
from hirex.models.user_batch import UserBatch, pad_right_aligned

HISTORY = Interactions.from_lists([[1, 2, 3], [4], [], [5, 6, 7, 8, 9, 0]], 10)

CONFIGS = {
    "pooling-dot": ModelConfig(dim=16),
    "pooling-mol": ModelConfig(dim=16, scorer="mol", mol_user_embs=2, mol_item_embs=3),
    "transformer-dot": ModelConfig(dim=16, user_encoder="transformer", use_user_id=False),
    "transformer-mol-text": ModelConfig(
        dim=16, user_encoder="transformer", scorer="mol", item_text=True, max_history=4
    ),
    "id-only": ModelConfig(dim=16, user_encoder="none", cosine=False),
}
TEXT = [f"word{i % 3} shared" for i in range(10)]


def _model(cfg: ModelConfig) -> RetrievalModel:
    torch.manual_seed(0)
    return RetrievalModel(cfg, 4, 10, TEXT).eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes_and_finite_scores(name):
    cfg = CONFIGS[name]
    m = _model(cfg)
    batch = UserBatch.from_interactions(HISTORY, np.arange(4))
    u, v = m.encode_users(batch), m.encode_items()
    p, q = (cfg.mol_user_embs, cfg.mol_item_embs) if cfg.scorer == "mol" else (1, 1)
    assert u.shape == (4, p, 16) and v.shape == (10, q, 16)
    s = m.score(u, v)
    assert s.shape == (4, 10) and torch.isfinite(s).all()  # user 2 has an empty history


@pytest.mark.parametrize("name", CONFIGS)
def test_save_load_round_trip(name, tmp_path):
    m = _model(CONFIGS[name])
    m.save(tmp_path / "m.safetensors")
    m2 = RetrievalModel.load(tmp_path / "m.safetensors")
    batch = UserBatch.from_interactions(HISTORY, np.arange(4))
    with torch.no_grad():
        a = m.score(m.encode_users(batch), m.encode_items())
        b = m2.score(m2.encode_users(batch), m2.encode_items())
    assert torch.equal(a, b)


def test_bad_model_files(tmp_path):
    m = _model(CONFIGS["pooling-dot"])
    path = tmp_path / "m.safetensors"
    m.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        RetrievalModel.load(tmp_path / "trunc")
    (tmp_path / "garbage").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        RetrievalModel.load(tmp_path / "garbage")
    m.save(tmp_path / "v9", extra={"version": "9"})
    with pytest.raises(ValueError, match="format version '9'"):
        RetrievalModel.load(tmp_path / "v9")
    m.save(tmp_path / "other", extra={"format": "something-else"})
    with pytest.raises(ValueError, match="expected a hirex-model file"):
        RetrievalModel.load(tmp_path / "other")
    with pytest.raises(FileNotFoundError):
        RetrievalModel.load(tmp_path / "missing")


def test_mixture_of_logits_matches_a_per_pair_loop():
    torch.manual_seed(1)
    mol = MixtureOfLogits(2, 3, 8, 16)
    u, v = torch.randn(5, 2, 8), torch.randn(7, 3, 8)
    fast = mol(u, v)
    for b in range(5):
        for n in range(7):
            logits = torch.stack([u[b, p] @ v[n, q] for p in range(2) for q in range(3)])
            gate = (
                mol.user_gate(u[b].reshape(-1))
                + mol.item_gate(v[n].reshape(-1))
                + mol.logit_gate(logits)
            )
            ref = (torch.softmax(gate, -1) * logits).sum()
            assert torch.allclose(fast[b, n], ref, atol=1e-5)


@pytest.mark.parametrize(
    ("dtype", "shape", "tol"),
    [(torch.float64, (5, 7), 1e-12), (torch.float32, (33, 1), 1e-5), (torch.float32, (1, 9), 1e-5)],
)
def test_fused_mixture_matches_autograd_reference(dtype, shape, tol):
    """The hand-written backward against autograd through mixture_reference: the output and
    the gradients of the users, the items and every gate parameter."""
    torch.manual_seed(3)
    mol = MixtureOfLogits(2, 3, 8, 16).to(dtype)
    u = torch.randn(shape[0], 2, 8, dtype=dtype, requires_grad=True)
    v = torch.randn(shape[1], 3, 8, dtype=dtype, requires_grad=True)
    weight = torch.randn(shape, dtype=dtype)
    got = {}
    for fused in (True, False):
        mol.fused = fused
        mol.zero_grad()
        u.grad = v.grad = None
        y = mol(u, v)
        (y * weight).sum().backward()
        grads = [u.grad.clone(), v.grad.clone()] + [p.grad.clone() for p in mol.parameters()]
        got[fused] = (y.detach(), grads)
    torch.testing.assert_close(got[True][0], got[False][0], atol=tol, rtol=tol)
    for a, b in zip(got[True][1], got[False][1], strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_fused_mixture_under_bf16_autocast_is_close_to_float32():
    torch.manual_seed(4)
    mol = MixtureOfLogits(2, 2, 16, 16)
    u, v = torch.randn(64, 2, 16), torch.randn(300, 2, 16)
    exact = mol(u, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = mol(u, v).float()
    assert (low - exact).abs().max() < 0.05 * exact.abs().max()


def test_mixture_of_logits_is_not_a_dot_product():
    # A dot-product score matrix over D-dim embeddings has rank <= D; MoL's need not.
    torch.manual_seed(2)
    mol = MixtureOfLogits(2, 2, 2, 8)
    s = mol(torch.randn(20, 2, 2), torch.randn(20, 2, 2))
    assert torch.linalg.matrix_rank(s) > 2


def test_pad_right_aligned_matches_loop():
    batch = UserBatch.from_interactions(HISTORY, np.array([3, 0, 2, 1]))
    padded = pad_right_aligned(batch, max_len=4, pad=-7)
    for row, user in enumerate([3, 0, 2, 1]):
        items = HISTORY.user_items(user)[-4:].tolist()
        assert padded[row].tolist() == [-7] * (4 - len(items)) + items


def test_unseen_user_is_encoded_from_history():
    m = _model(CONFIGS["pooling-dot"])
    known = UserBatch.from_interactions(HISTORY, np.array([0]))
    adhoc = UserBatch.from_histories([[1, 2, 3]])
    with torch.no_grad():
        a, b = m.encode_users(known), m.encode_users(adhoc)
    # The ad-hoc user has no id embedding: same history, different (id-free) embedding.
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    m_hist_only = _model(ModelConfig(dim=16, use_user_id=False))
    with torch.no_grad():
        assert torch.allclose(m_hist_only.encode_users(known), m_hist_only.encode_users(adhoc))


def test_item_text_requires_text():
    with pytest.raises(ValueError, match="no item text"):
        RetrievalModel(ModelConfig(item_text=True), 2, 10, None)


def test_transformer_output_does_not_depend_on_batch_padding():
    # The newest item must get the same position whatever the longest history in the batch.
    m = _model(ModelConfig(dim=16, user_encoder="transformer", use_user_id=False, max_history=8))
    alone = UserBatch.from_interactions(HISTORY, np.array([0]))
    mixed = UserBatch.from_interactions(HISTORY, np.array([3, 0]))
    with torch.no_grad():
        assert torch.allclose(m.encode_users(alone)[0], m.encode_users(mixed)[1], atol=1e-5)


def test_shared_item_embedding_round_trip(tmp_path):
    cfg = ModelConfig(
        dim=16,
        user_encoder="transformer",
        use_user_id=False,
        share_item_embedding=True,
        init_std=0.02,
    )
    m = _model(cfg)
    assert m.user_tower.history._item_weight() is m.item_tower.id_emb.weight
    m.save(tmp_path / "m.safetensors")
    m2 = RetrievalModel.load(tmp_path / "m.safetensors")
    assert m2.user_tower.history._item_weight() is m2.item_tower.id_emb.weight
    batch = UserBatch.from_interactions(HISTORY, np.arange(4))
    with torch.no_grad():
        assert torch.equal(
            m.score(m.encode_users(batch), m.encode_items()),
            m2.score(m2.encode_users(batch), m2.encode_items()),
        )
    with pytest.raises(ValueError, match="share_item_embedding"):
        RetrievalModel(ModelConfig(dim=16, share_item_embedding=True), 4, 10)


def test_item_text_alone_encodes_a_new_item_like_the_tower_without_its_id():
    cfg = ModelConfig(dim=16, scorer="mol", mol_user_embs=2, mol_item_embs=3, item_text=True)
    m = _model(cfg)
    with torch.no_grad():
        got = m.encode_item_text([TEXT[4], "WORD1  shared"])
        tower = m.item_tower(torch.tensor([4]))
        want = torch.nn.functional.normalize(
            tower - m.item_tower.id_emb(torch.tensor([4])).view(1, 3, 16), dim=-1
        )
    assert got.shape == (2, 3, 16)
    assert torch.allclose(got[0], want[0], atol=1e-6)
    assert torch.allclose(got[1], got[0], atol=1e-6)  # same words, other case and spacing
    with pytest.raises(ValueError, match="no words"):
        m.encode_item_text(["   "])
    with pytest.raises(ValueError, match="no text features"):
        _model(ModelConfig(dim=16)).encode_item_text(["a"])
