"""The user side of a retrieval request: user ids plus their item histories as CSR tensors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from hirex.data.interactions import Interactions


@dataclass(frozen=True)
class UserBatch:
    """B users with their histories.

    users: (B,) int64 dense user ids (-1 for a user the model has never seen).
    hist_indptr: (B + 1,) int64; user b's history is ``hist_items[hist_indptr[b]:hist_indptr[b+1]]``
    in the user's order (chronological for sequences).
    hist_items: (nnz,) int64 dense item ids.
    """

    users: torch.Tensor
    hist_indptr: torch.Tensor
    hist_items: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) int64 history lengths."""
        return self.hist_indptr[1:] - self.hist_indptr[:-1]

    def slice(self, start: int, stop: int) -> UserBatch:
        """Rows start..stop-1 as a batch of their own."""
        lo, hi = int(self.hist_indptr[start]), int(self.hist_indptr[stop])
        return UserBatch(
            self.users[start:stop], self.hist_indptr[start : stop + 1] - lo, self.hist_items[lo:hi]
        )

    def to(self, device: torch.device | str) -> UserBatch:
        return UserBatch(
            self.users.to(device), self.hist_indptr.to(device), self.hist_items.to(device)
        )

    @classmethod
    def from_interactions(
        cls,
        history: Interactions,
        users: np.ndarray,
        *,
        max_len: int | None = None,
    ) -> UserBatch:
        """Gather the histories of ``users``; ``max_len`` keeps each user's most recent items."""
        users = np.asarray(users, dtype=np.int64)
        starts = history.indptr[users]
        ends = history.indptr[users + 1]
        if max_len is not None:
            starts = np.maximum(starts, ends - max_len)
        return cls.from_ranges(history.items, users, starts, ends)

    @classmethod
    def from_ranges(
        cls,
        items: np.ndarray,
        users: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
    ) -> UserBatch:
        lengths = ends - starts
        indptr = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # Vectorised gather of the ranges [starts[b], ends[b]).
        offsets = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], lengths)
        flat = items[np.repeat(starts, lengths) + offsets]
        return cls(torch.from_numpy(users), torch.from_numpy(indptr), torch.from_numpy(flat))

    @classmethod
    def from_histories(cls, histories: list[list[int]]) -> UserBatch:
        """Ad-hoc users the model has not seen, known only by their item histories."""
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        indptr = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        flat = np.array([i for h in histories for i in h], dtype=np.int64)
        return cls(
            torch.full((len(histories),), -1, dtype=torch.int64),
            torch.from_numpy(indptr),
            torch.from_numpy(flat),
        )


def user_blocks(
    users: np.ndarray | UserBatch,
    history: Interactions | None,
    block: int,
    max_len: int | None = None,
) -> Iterator[tuple[UserBatch, np.ndarray | None]]:
    """Blocks of at most ``block`` users, as (batch, dense user ids or None).

    users: (U,) dense user ids whose histories come from ``history``, or a ready ``UserBatch``
    (then the ids are None: ad-hoc users have no stored history to exclude)."""
    if isinstance(users, UserBatch):
        for start in range(0, len(users), block):
            yield users.slice(start, min(start + block, len(users))), None
        return
    users = np.asarray(users, dtype=np.int64)
    if history is None:
        raise ValueError("history is needed to encode users given by id")
    if len(users) and (users.min() < 0 or users.max() >= history.n_users):
        raise ValueError(f"user ids must lie in [0, {history.n_users})")
    for start in range(0, len(users), block):
        ids = users[start : start + block]
        yield UserBatch.from_interactions(history, ids, max_len=max_len), ids


def pad_right_aligned(batch: UserBatch, max_len: int, pad: int) -> torch.Tensor:
    """(B, T) int64 histories, most recent item last, left-padded with ``pad``; T <= max_len."""
    lengths = batch.lengths.clamp(max=max_len)
    t = max(int(lengths.max()) if len(batch) else 1, 1)
    out = torch.full((len(batch), t), pad, dtype=torch.int64, device=batch.hist_items.device)
    if batch.hist_items.numel() == 0:
        return out
    ends = batch.hist_indptr[1:]
    rows = torch.repeat_interleave(torch.arange(len(batch), device=out.device), lengths)
    # position j of row b (0-based from the right) takes item ends[b] - 1 - j
    within = torch.arange(int(lengths.sum()), device=out.device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    src = torch.repeat_interleave(ends, lengths) - 1 - within
    out[rows, t - 1 - within] = batch.hist_items[src]
    return out
