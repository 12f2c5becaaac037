"""Item text in the ``itemASIN keyword text`` format (one item per line, text to the line end).

Policies: an item of the dataset without a line gets ""; lines for items the dataset does not
know are ignored; a second line for the same item is ignored (the first one wins).  Each case
is counted in a log message.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hirex.data.interactions import IdMap, read_data_text

log = logging.getLogger(__name__)

FORMAT = "one line per item: `itemID text ...`"


def load_item_text(path: str | os.PathLike, item_ids: IdMap) -> list[str]:
    """One string per dense item id (``len(item_ids)`` strings), "" for items without text."""
    path = Path(path)
    text = read_data_text(path, FORMAT)
    pairs = [line.strip().split(maxsplit=1) for line in text.split("\n")]
    pairs = [p for p in pairs if p]
    raw = [p[0] for p in pairs]
    texts = [p[1] if len(p) > 1 else "" for p in pairs]

    dense = item_ids.find(raw)
    known = np.flatnonzero(dense >= 0)
    # First line per item wins: np.unique returns the first index of each value.
    _, first = np.unique(dense[known], return_index=True)
    chosen = known[first]
    out = [""] * len(item_ids)
    for i in chosen.tolist():
        out[dense[i]] = texts[i]

    unknown = len(pairs) - len(known)
    if unknown:
        example = raw[int(np.flatnonzero(dense < 0)[0])]
        log.info(
            "%s: ignored %d lines for items not in the dataset (e.g. %r)", path, unknown, example
        )
    if len(known) > len(chosen):
        log.info(
            "%s: ignored %d repeated lines for the same item (first kept)",
            path,
            len(known) - len(chosen),
        )
    missing = sum(1 for t in out if not t)
    if missing:
        log.info("%s: %d of %d items have no text", path, missing, len(out))
    return out
