"""Mining test-time training data from the index's intermediate nodes (HILL).

For each user: beam search down to ``depth``; a node kept there is an implicit label of the
user's interest when the user's interest rate in it (the share of the user's training items
whose path passes through the node) reaches ``threshold``.  Each kept (user, node) pair becomes a
training pair (user, the node's representative item).  The node-centred subset adds the
training interactions whose items are representative items of nodes at levels 1..depth.

Only the interactions passed in (the training split) are read: the validation and test splits
cannot leak into what is mined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hirex.data.interactions import Interactions
from hirex.index.hierarchy import HierarchicalIndex
from hirex.index.search import descend, parse_beam
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.user_batch import UserBatch


@dataclass(frozen=True)
class Mined:
    users: np.ndarray
    """(M,) users of the kept (user, node) pairs."""
    nodes: np.ndarray
    """(M,) node indices at level ``depth`` (into ``index.levels[depth - 1]``)."""
    rates: np.ndarray
    """(M,) each pair's interest rate."""
    items: np.ndarray
    """(M,) the nodes' representative items: the training targets."""
    node_centred: Interactions
    """Training interactions with representative items of nodes at levels 1..depth."""
    depth: int
    users_covered: float
    """Share of the users with training items that got at least one pair."""
    pairs_per_level: dict[int, int]
    """Pairs passing the threshold at each level 1..depth (the pairs used are at ``depth``)."""

    def pairs(self, n_users: int, n_items: int) -> Interactions:
        """The mined (user, representative item) pairs as interactions."""
        return Interactions.from_pairs(self.users, self.items, n_users, n_items)

    def summary(self) -> dict:
        return {
            "depth": self.depth,
            "pairs": int(len(self.users)),
            "pairs_per_level": {str(k): v for k, v in self.pairs_per_level.items()},
            "users_covered": round(self.users_covered, 4),
            "node_centred_interactions": int(self.node_centred.nnz),
            "mean_interest_rate": round(float(self.rates.mean()), 4) if len(self.rates) else 0.0,
        }


def interest_rates(
    index: HierarchicalIndex, train: Interactions, users: np.ndarray, nodes: np.ndarray, level: int
) -> np.ndarray:
    """Share of each user's training items under each node.

    users: (B,), nodes: (B, W) node indices at ``level`` (1-based), -1 for none -> (B, W)."""
    rows, items = train.gather(users)
    keys = index.levels[level - 1].keys
    item_node = np.searchsorted(keys, index.item_keys(level - 1, items))
    n_nodes = len(keys)
    have, counts = np.unique(rows * n_nodes + item_node, return_counts=True)
    query = np.arange(len(users))[:, None] * n_nodes + np.maximum(nodes, 0)
    pos = np.clip(np.searchsorted(have, query), 0, max(len(have) - 1, 0))
    found = (have[pos] == query) & (nodes >= 0) if len(have) else np.zeros(nodes.shape, bool)
    hits = np.where(found, counts[pos] if len(have) else 0, 0)
    sizes = np.maximum(train.lengths()[users], 1)[:, None]
    return hits / sizes


@torch.no_grad()
def mine(
    model: RetrievalModel,
    index: HierarchicalIndex,
    train: Interactions,
    depth: int,
    threshold: float,
    beam: int | str | tuple[int, ...] = 8,
    *,
    user_batch: int = 512,
) -> Mined:
    """(user, node) pairs on each user's beam-search paths whose interest rate passes
    ``threshold``, with users encoded from (and rates counted over) ``train`` only."""
    levels = len(index.sizes)
    if not 1 <= depth <= levels:
        raise ValueError(f"ttt depth {depth}: the index has levels 1..{levels}")
    widths = parse_beam(beam, levels)
    model.eval()
    index.to(model.device)
    users_all = train.active_users()
    max_len = model.cfg.max_history if model.sequential else None
    out_users, out_nodes, out_rates = [], [], []
    per_level = {level: 0 for level in range(1, depth + 1)}
    for start in range(0, len(users_all), user_batch):
        users = users_all[start : start + user_batch]
        batch = UserBatch.from_interactions(train, users, max_len=max_len)
        u = model.encode_users(batch.to(model.device))
        for level in range(1, depth + 1):
            kept, _, _ = descend(model, index, u, widths, level)
            nodes = kept.cpu().numpy()
            rates = interest_rates(index, train, users, nodes, level)
            ok = (nodes >= 0) & (rates >= threshold)
            per_level[level] += int(ok.sum())
            if level == depth:
                r, c = np.nonzero(ok)
                out_users.append(users[r])
                out_nodes.append(nodes[r, c])
                out_rates.append(rates[r, c])
    m_users = np.concatenate(out_users) if out_users else np.zeros(0, np.int64)
    m_nodes = np.concatenate(out_nodes) if out_nodes else np.zeros(0, np.int64)
    m_rates = np.concatenate(out_rates) if out_rates else np.zeros(0)
    reps = index.levels[depth - 1].representative[m_nodes]
    keep = reps >= 0
    rep_items = np.unique(np.concatenate([lv.representative for lv in index.levels[:depth]]))
    rep_items = rep_items[rep_items >= 0]
    t_users = train.users()
    centred = np.isin(train.items, rep_items)
    node_centred = Interactions.from_pairs(
        t_users[centred], train.items[centred], train.n_users, train.n_items
    )
    covered = len(np.unique(m_users[keep])) / max(len(users_all), 1)
    return Mined(
        m_users[keep],
        m_nodes[keep],
        m_rates[keep],
        reps[keep],
        node_centred,
        depth,
        covered,
        per_level,
    )
