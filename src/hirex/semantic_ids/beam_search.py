"""Batched beam search over the prefix trie: only valid IDs, exact log-probabilities.

For U users and beam width W, step t scores every (beam, code) pair at once: the model's
log-softmax over position t's codes is added to the beam's score, codes that lead out of the trie
are set to -inf, and the best W of the U x (W * sizes[t]) pairs continue.  At the last step an
item in ``exclude`` (the protocol's masked history) is set to -inf, which is the only masking;
the best k complete IDs map to their items.  The result is a fixed-shape ``TopK``: (U, k) log-
probabilities, best first, and dense item ids, -inf / -1 where fewer than k valid items exist.

With W at least the number of valid IDs the search keeps every prefix and equals
``exhaustive_generate``, which scores every item by teacher forcing (the reference, tested).
Optionally (``NewItems``, TIGER's cold-start decoding) a share of the k results goes to items the
generator never saw as a target whose prefix matches a beam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hirex.data.interactions import Interactions
from hirex.index.topk import TopK
from hirex.semantic_ids.generator import SemanticIdGenerator
from hirex.semantic_ids.ids import SemanticIds, prefix_keys
from hirex.semantic_ids.trie import PrefixTrie

NEG = float("-inf")


def history_codes(
    ids: SemanticIds, history: Interactions, users: np.ndarray, max_history: int
) -> torch.Tensor:
    """(U, H, P) codes of each user's last ``max_history`` items (oldest first, newest last),
    left-padded with -1 rows; H is the longest history in the batch (at least 1)."""
    users = np.asarray(users, dtype=np.int64)
    rows, items = history.gather(users)
    lengths = np.bincount(rows, minlength=len(users))
    take = np.minimum(lengths, max_history)
    h = max(int(take.max()) if len(take) else 0, 1)
    out = np.full((len(users), h, ids.length), -1, np.int64)
    ends = np.cumsum(lengths)
    for_row = np.repeat(np.arange(len(users)), take)
    # position of each kept item inside its row's window, newest at the right
    within = np.arange(len(for_row)) - np.repeat(np.cumsum(take) - take, take)
    src = np.repeat(ends - take, take) + within
    slot = h - np.repeat(take, take) + within
    out[for_row, slot] = ids.codes[items[src]]
    return torch.from_numpy(out)


def _excluded(
    items: torch.Tensor, exclude: tuple[np.ndarray, np.ndarray] | None, n_items: int
) -> torch.Tensor:
    """items: (U, ...) candidate ids -> bool mask of the (row, item) pairs in exclude."""
    if exclude is None or len(exclude[0]) == 0:
        return torch.zeros_like(items, dtype=torch.bool)
    rows, excl = exclude
    keys = torch.from_numpy(np.unique(rows * np.int64(n_items) + excl)).to(items.device)
    shape = items.shape
    row_ids = torch.arange(shape[0], device=items.device).view(-1, *([1] * (len(shape) - 1)))
    cand = (row_ids * n_items + items.clamp(min=0)).reshape(-1)
    pos = torch.searchsorted(keys, cand).clamp(max=len(keys) - 1)
    return ((keys[pos] == cand) & (items.reshape(-1) >= 0)).reshape(shape)


@dataclass(frozen=True)
class NewItems:
    """Items the generator never saw as a target (cold-start or added after training), for
    TIGER's cold-start decoding: a share of the k slots goes to such items whose first ``depth``
    codes match a beam, scored by that beam's log-probability spread evenly over the new items
    under the prefix.  Without it a generator ranks unseen IDs (almost) never, since their last
    codes were never a training target.

    keys: (M,) sorted depth-``depth`` prefix keys; items: (M,) their dense item ids.
    """

    keys: torch.Tensor
    items: torch.Tensor
    depth: int
    share: float

    @classmethod
    def of(cls, ids: SemanticIds, new: np.ndarray, depth: int, share: float) -> NewItems | None:
        """new: (N,) bool over items; None when there is nothing to do."""
        rows = np.flatnonzero(new & ids.active)
        if share <= 0 or len(rows) == 0:
            return None
        depth = max(1, min(depth, ids.length - 1))
        keys = prefix_keys(ids.codes[rows], ids.sizes, depth)
        order = np.argsort(keys, kind="stable")
        return cls(torch.from_numpy(keys[order]), torch.from_numpy(rows[order]), depth, share)

    def slots(self, k: int) -> int:
        return max(1, int(round(self.share * k)))

    def candidates(
        self, beam_keys: torch.Tensor, beam_scores: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Beams at ``depth`` (U, W) -> the best n new items per user: (scores, ids) (U, n)."""
        keys, items = self.keys.to(beam_keys.device), self.items.to(beam_keys.device)
        _, counts = torch.unique_consecutive(keys, return_counts=True)
        per_item = torch.repeat_interleave(counts, counts).float().log()
        u, m = beam_keys.shape[0], len(keys)
        order = torch.argsort(beam_keys, dim=1)
        sk = torch.gather(beam_keys, 1, order)
        ss = torch.gather(beam_scores, 1, order)
        pos = torch.searchsorted(sk, keys.expand(u, m).contiguous()).clamp(max=sk.shape[1] - 1)
        hit = torch.gather(sk, 1, pos) == keys
        score = torch.where(
            hit, torch.gather(ss, 1, pos) - per_item, torch.full_like(per_item, NEG)
        )
        top, idx = torch.topk(score, min(n, m), dim=1)
        return top, torch.where(torch.isfinite(top), items[idx], torch.full_like(idx, -1))


@torch.no_grad()
def constrained_beam_search(
    model: SemanticIdGenerator,
    trie: PrefixTrie,
    history: torch.Tensor,
    k: int,
    beam: int,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    n_items: int | None = None,
    new_items: NewItems | None = None,
) -> TopK:
    """history: (U, H, P) codes (see ``history_codes``); exclude: (rows, items) pairs masked
    for each row.  Returns TopK (U, k): sequence log-probabilities and dense item ids.

    new_items: reserve ``new_items.slots(k)`` of the k results for items the generator never
    saw as a target (see ``NewItems``); they join the ranking by their score."""
    device = next(model.parameters()).device
    history = history.to(device)
    u = history.shape[0]
    width = max(beam, k)
    n_items = n_items if n_items is not None else int(trie.full_items.max()) + 1
    memory = model.encode(history)
    sizes = model.shape.sizes
    # beams: (U, W) scores, (U, W, t) codes, (U, W) prefix keys
    scores = torch.zeros(u, 1, device=device)
    codes = torch.zeros(u, 1, 0, dtype=torch.int64, device=device)
    keys = torch.zeros(u, 1, dtype=torch.int64, device=device)
    at_depth = None
    for t, size in enumerate(sizes):
        w = scores.shape[1]
        logp = torch.log_softmax(model.step_logits(memory, codes).float(), -1)
        total = scores[..., None] + logp
        total = total.masked_fill(~trie.allowed(keys, t), NEG)
        new_keys = keys[..., None] * size + torch.arange(size, device=device)
        last = t == len(sizes) - 1
        if last and exclude is not None:
            total = total.masked_fill(_excluded(trie.items_of(new_keys), exclude, n_items), NEG)
        keep = min(k if last else width, w * size)
        top, idx = torch.topk(total.view(u, w * size), keep, dim=1)
        parent, code = idx // size, idx % size
        codes = torch.cat(
            [torch.gather(codes, 1, parent[..., None].expand(-1, -1, t)), code[..., None]], 2
        )
        keys = torch.gather(new_keys.view(u, w * size), 1, idx)
        scores = top
        if new_items is not None and t + 1 == new_items.depth:
            at_depth = (keys, scores)
    items = trie.items_of(keys)
    items = torch.where(torch.isfinite(scores), items, torch.full_like(items, -1))
    scores = torch.where(items >= 0, scores, torch.full_like(scores, NEG))
    if at_depth is not None:
        scores, items = _with_new_items(scores, items, at_depth, new_items, k, exclude, n_items)
    if scores.shape[1] < k:  # fewer (beam, code) pairs than k: pad to the fixed shape
        fill = k - scores.shape[1]
        scores = torch.cat([scores, torch.full((u, fill), NEG, device=device)], 1)
        items = torch.cat([items, torch.full((u, fill), -1, dtype=torch.int64, device=device)], 1)
    return TopK(scores.cpu(), items.cpu())


def _with_new_items(scores, items, at_depth, new_items: NewItems, k, exclude, n_items):  # noqa: ANN001, ANN202
    """The beam's best k - n results plus the best n new items (n = ``slots(k)``; where fewer
    new items match, the beam's next results fill in), ordered by score."""
    n = min(new_items.slots(k), scores.shape[1])
    cand_s, cand_i = new_items.candidates(at_depth[0], at_depth[1], n + k)
    masked = _excluded(cand_i, exclude, n_items) | (cand_i[:, :, None] == items[:, None, :]).any(2)
    cand_s = cand_s.masked_fill(masked | (cand_i < 0), NEG)
    cand_s, pos = torch.topk(cand_s, min(n, cand_s.shape[1]), dim=1)
    cand_i = torch.gather(cand_i, 1, pos)
    n = cand_s.shape[1]
    head = scores.shape[1] - n
    valid = torch.isfinite(cand_s)
    fill = (torch.arange(n, device=scores.device) - valid.sum(1, keepdim=True)).clamp(min=0)
    slot_s = torch.where(valid, cand_s, torch.gather(scores[:, head:], 1, fill))
    slot_i = torch.where(valid, cand_i, torch.gather(items[:, head:], 1, fill))
    merged_s = torch.cat([scores[:, :head], slot_s], 1)
    merged_i = torch.cat([items[:, :head], slot_i], 1)
    top, pos = torch.sort(merged_s, dim=1, descending=True)
    out_i = torch.gather(merged_i, 1, pos)
    return top, torch.where(torch.isfinite(top), out_i, torch.full_like(out_i, -1))


@torch.no_grad()
def exhaustive_generate(
    model: SemanticIdGenerator,
    ids: SemanticIds,
    history: torch.Tensor,
    k: int,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> TopK:
    """Reference: score every active item's ID by teacher forcing and take the top k."""
    device = next(model.parameters()).device
    active = np.flatnonzero(ids.active)
    codes = torch.from_numpy(ids.codes[active]).to(device)
    logp = model.item_log_probs(history.to(device), codes).cpu()
    cand = torch.from_numpy(active).expand(len(history), -1)
    logp = logp.masked_fill(_excluded(cand, exclude, ids.n_items), NEG)
    top, pos = torch.topk(logp, min(k, logp.shape[1]), dim=1)
    items = torch.gather(cand, 1, pos)
    items = torch.where(torch.isfinite(top), items, torch.full_like(items, -1))
    if top.shape[1] < k:
        fill = k - top.shape[1]
        top = torch.cat([top, torch.full((len(top), fill), NEG)], 1)
        items = torch.cat([items, torch.full((len(items), fill), -1, dtype=torch.int64)], 1)
    return TopK(top, items)
