"""Pairs from a recommender: the items a model retrieves for users, judged with the user's
recent history as the query (``hirex label --run`` retrieves with ``runs.run_topk``)."""

from __future__ import annotations

import numpy as np

from hirex.data.interactions import Dataset
from hirex.index.topk import TopK
from hirex.label.prompts import Pair

__all__ = ["recommendation_pairs"]


def recommendation_pairs(
    ds: Dataset,
    users: np.ndarray,
    top: TopK,
    history: int = 5,
    split: str = "test",
    max_chars: int = 300,
) -> list[Pair]:
    """One Pair per (user, retrieved item): ``users`` (U,) dense ids, ``top`` their (U, K)
    results. qid is the user's raw id, docid the item's; the query lists the texts of the
    user's last ``history`` items of the ``split`` history (most recent first, each cut to
    ``max_chars``), the document is the item's text. Items without text are left out (an
    empty document cannot be judged), and so are users without any history text."""
    if ds.item_text is None:
        raise ValueError(
            f"{ds.name} has no item text; LLM labels of recommendations need an item text file "
            "(`itemID text` per line, item_text.txt beside the data)"
        )
    if history < 1:
        raise ValueError(f"history ({history}) must be >= 1")
    seen = ds.history(split)
    user_raw = ds.user_ids.to_raw(users) if ds.user_ids is not None else users.tolist()
    pairs = []
    for row, (u, raw_u) in enumerate(zip(users.tolist(), user_raw, strict=True)):
        recent = [i for i in seen.user_items(u)[::-1] if ds.item_text[i].strip()][:history]
        if not recent:
            continue
        query = "\n".join(f"{n}. {ds.item_text[i][:max_chars]}" for n, i in enumerate(recent, 1))
        ids = top.ids[row].numpy()
        ids = ids[ids >= 0]
        raw_items = ds.item_ids.to_raw(ids) if ds.item_ids is not None else ids.tolist()
        for i, raw_i in zip(ids.tolist(), raw_items, strict=True):
            text = ds.item_text[i]
            if text.strip():
                pairs.append(Pair(str(raw_u), str(raw_i), query, text[:max_chars]))
    return pairs
