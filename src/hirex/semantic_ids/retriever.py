"""A trained generator with its IDs and trie: generative retrieval as a hirex ranker."""

from __future__ import annotations

import numpy as np
import torch

from hirex.data.interactions import Interactions
from hirex.index.topk import TopK
from hirex.semantic_ids.assign import assign_from_text
from hirex.semantic_ids.beam_search import NewItems, constrained_beam_search, history_codes
from hirex.semantic_ids.generator import SemanticIdGenerator
from hirex.semantic_ids.ids import SemanticIds
from hirex.semantic_ids.trie import PrefixTrie


class GenerativeRetriever:
    """Ranks items by generating their semantic IDs with constrained beam search.

    ``topk`` returns the same fixed-shape TopK as exhaustive scoring and beam search through
    the index; ``ranker`` plugs into ``evaluate_ranker``.  Items added after training
    (``add_items``) get an ID from their text and join the trie at once.
    """

    def __init__(
        self,
        model: SemanticIdGenerator,
        ids: SemanticIds,
        beam: int = 20,
        user_batch: int = 256,
        *,
        seen: np.ndarray | None = None,
        new_item_share: float = 0.0,
        new_item_prefix: int = 2,
    ) -> None:
        """seen: (N,) bool, the items the generator was trained to emit; the others (and items
        added later) are new items, which get ``new_item_share`` of the k results when their
        first ``new_item_prefix`` codes match a beam (TIGER's cold-start decoding; 0: off)."""
        if tuple(ids.sizes) != tuple(model.shape.sizes):
            raise ValueError("the generator was built for other ID vocabulary sizes")
        self.model, self.ids, self.beam, self.user_batch = model.eval(), ids, beam, user_batch
        self.device = next(model.parameters()).device
        self.trie = PrefixTrie(ids, self.device)
        self.seen = np.ones(ids.n_items, bool) if seen is None else np.asarray(seen, bool).copy()
        self.new_item_share, self.new_item_prefix = new_item_share, new_item_prefix
        self._new = self._new_items()

    def _new_items(self) -> NewItems | None:
        seen = np.zeros(self.ids.n_items, bool)
        seen[: len(self.seen)] = self.seen
        return NewItems.of(self.ids, ~seen, self.new_item_prefix, self.new_item_share)

    @property
    def n_items(self) -> int:
        return self.ids.n_items

    def topk(
        self,
        users: np.ndarray,
        history: Interactions,
        k: int,
        exclude: Interactions | None = None,
        beam: int | None = None,
    ) -> TopK:
        """users: (U,) rows of ``history`` -> TopK (U, k) of log-probabilities and item ids;
        the items of ``exclude`` (usually the history itself) are masked."""
        users = np.asarray(users, dtype=np.int64)
        self._check_items(history)
        scores, ids = [], []
        for start in range(0, len(users), self.user_batch):
            chunk = users[start : start + self.user_batch]
            hist = history_codes(self.ids, history, chunk, self.model.shape.max_history)
            excl = exclude.gather(chunk) if exclude is not None else None
            top = constrained_beam_search(
                self.model, self.trie, hist, k, beam or self.beam, excl, self.ids.n_items,
                self._new,
            )  # fmt: skip
            scores.append(top.scores)
            ids.append(top.ids)
        if not scores:
            return TopK(torch.zeros(0, k), torch.zeros(0, k, dtype=torch.int64))
        return TopK(torch.cat(scores), torch.cat(ids))

    def topk_for_histories(self, histories: list[list[int]], k: int, keep_seen: bool = False):  # noqa: ANN201
        """Ad-hoc users given as lists of dense item ids (oldest first)."""
        n = self.ids.n_items
        for h in histories:
            bad = [i for i in h if not 0 <= int(i) < n]
            if bad:
                raise ValueError(f"history holds unknown items {bad[:5]} (dense ids 0..{n - 1})")
        inter = Interactions.from_lists(histories, n)
        return self.topk(np.arange(len(histories)), inter, k, None if keep_seen else inter)

    def ranker(self):  # noqa: ANN201
        """(users, history, k) -> (U, k) ids with history masked, for ``evaluate_ranker``."""

        def rank(users: np.ndarray, history: Interactions, k: int) -> np.ndarray:
            return self.topk(users, history, k, exclude=history).ids.numpy()

        return rank

    def add_items(self, texts: list[str]) -> np.ndarray:
        """New items from their text alone; returns their dense ids (retrievable at once)."""
        new = assign_from_text(self.ids, texts)
        self.trie = PrefixTrie(self.ids, self.device)
        self._new = self._new_items()
        return new

    def remove_items(self, ids: np.ndarray) -> None:
        self.ids.remove(ids)
        self.trie = PrefixTrie(self.ids, self.device)
        self._new = self._new_items()

    def _check_items(self, history: Interactions) -> None:
        if history.n_items > self.ids.n_items:
            raise ValueError(
                f"the history knows {history.n_items} items, the semantic IDs only "
                f"{self.ids.n_items}; give new items IDs first (add_items)"
            )
