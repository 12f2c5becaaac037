"""A tiny catalogue with known clusters: item text and user sequences that stay in a cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

N_CLUSTERS, PER_CLUSTER = 6, 30
CLUSTER_WORDS = [
    ["lipstick", "matte", "red", "lip"],
    ["shampoo", "hair", "argan", "scalp"],
    ["tennis", "racket", "grip", "string"],
    ["yoga", "mat", "cork", "stretch"],
    ["knife", "steel", "blade", "chef"],
    ["tent", "camping", "pole", "rain"],
]
NOISE = ["pack", "new", "set", "large", "small", "blue", "black", "travel", "pro", "deluxe"]


def cluster_of(item: int) -> int:
    return item // PER_CLUSTER


def write_catalogue(folder: Path, n_users: int = 240, seed: int = 0) -> Path:
    """sequences.txt + item_text.txt in ``folder``; item i is ``item{i}``, cluster i // 30."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(N_CLUSTERS * PER_CLUSTER):
        words = list(rng.choice(CLUSTER_WORDS[cluster_of(i)], 3, replace=False))
        words += list(rng.choice(NOISE, 2, replace=False)) + [f"model{i}"]
        lines.append(f"item{i} {' '.join(words)}")
    (folder / "item_text.txt").write_text("\n".join(lines) + "\n")
    seqs = []
    for u in range(n_users):
        c = u % N_CLUSTERS
        # users walk through their cluster in order: the next item is predictable
        start = int(rng.integers(0, PER_CLUSTER - 8))
        items = [c * PER_CLUSTER + start + j for j in range(int(rng.integers(5, 8)))]
        seqs.append(f"user{u} " + " ".join(f"item{i}" for i in items))
    (folder / "sequences.txt").write_text("\n".join(seqs) + "\n")
    return folder


@pytest.fixture(scope="session")
def catalogue_dir(tmp_path_factory) -> Path:
    return write_catalogue(tmp_path_factory.mktemp("catalogue") / "shop")


@pytest.fixture(scope="session")
def catalogue(catalogue_dir):
    from hirex.data.sequences import load_sequences

    return load_sequences(
        catalogue_dir / "sequences.txt", item_text_path=catalogue_dir / "item_text.txt"
    )
