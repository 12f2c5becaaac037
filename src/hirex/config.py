"""Run configuration: frozen dataclasses and a strict TOML/JSON loader.

A config file has the sections ``[data]``, ``[model]``, ``[train]`` and ``[eval]``; unknown
sections or keys are errors that list the valid ones, so a typo never silently falls back to a
default.  ``save_config`` writes the exact config of a run next to its results.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from hirex.atomic_files import atomic_write_text


@dataclass(frozen=True)
class DataConfig:
    """Which data to train on and how to carve the validation split."""

    name: str = "synthetic"
    """A dataset name (synthetic, gowalla, beauty, sports) or a path (LightGCN folder, CSV,
    Parquet)."""
    data_dir: str | None = None
    """Where named datasets live; default $HIREX_DATA, then ~/.cache/hirex/data."""
    valid_per_user: int = 1
    """Items per user held out of training for validation (set data)."""
    seed: int = 0
    synthetic_users: int = 5000
    synthetic_items: int = 2000
    synthetic_kind: Literal["set", "sequence"] = "set"
    cold_start_fraction: float = 0.0
    """Hold this share of items (seeded by ``seed``) out of training: their interactions leave
    the train and valid histories, their text stays; metrics then also report the test targets
    that are held-out items (``cold_start``).  0: no cold-start items."""
    # Interaction tables (CSV / TSV / Parquet) only:
    user_col: str = "user"
    item_col: str = "item"
    time_col: str | None = None
    """A timestamp column: each user's interactions are ordered by it (sequence data, split
    leave-one-out)."""
    weight_col: str | None = None
    test_path: str | None = None
    """A second table with the test split (the same columns); without it, test is carved out."""
    test_fraction: float = 0.2
    """Set data without ``test_path``: share of each user's items held out for test."""


@dataclass(frozen=True)
class ModelConfig:
    """The foundational retrieval model: user tower, item tower, scorer."""

    dim: int = 64
    user_encoder: Literal["pooling", "transformer", "none"] = "pooling"
    """History encoder: pooling for unordered sets, a causal transformer for sequences."""
    use_user_id: bool = True
    """Add a learned per-user id embedding (unseen users fall back to history only)."""
    pooling_exponent: float = 0.5
    """Pooled history = sum of history embeddings / |history| ** exponent."""
    max_history: int = 50
    """Most recent items fed to the transformer; pooling uses the whole history."""
    n_layers: int = 2
    n_heads: int = 1
    dropout: float = 0.2
    share_item_embedding: bool = False
    """Transformer only: its input item embeddings are the item tower's (SASRec weight tying)."""
    init_std: float = 0.0
    """Std of the normal init of embeddings (and transformer weights); 0: 1/sqrt(dim)."""
    scorer: Literal["dot", "mol"] = "dot"
    """dot: inner product; mol: mixture of logits over several embeddings per side, gated."""
    history_projection: bool = False
    """A linear layer (identity at init) on the pooled history before it joins the user id."""
    user_init_std: float = -1.0
    """Std of the user id embeddings' init; negative: the same as ``init_std``."""
    mol_user_embs: int = 2
    mol_item_embs: int = 2
    mol_gate_hidden: int = 64
    cosine: bool = True
    """L2-normalise embeddings and divide scores by ``temperature``."""
    temperature: float = 0.1
    item_text: bool = False
    """Add a hashed bag-of-words embedding of item text to the item tower."""
    text_buckets: int = 65536
    init: Literal["random", "spectral"] = "random"
    """spectral: start the pooled-history dot model from the top ``dim`` singular vectors of the
    normalised training matrix (the low-pass filter of GF-CF), then train from there."""
    spectral_alpha: float = 0.3
    """Spectral init: embedding gains sqrt(sigma^2 + alpha) over the singular values sigma."""
    spectral_scale: float = 10.0
    """Spectral init: embeddings scaled so that the mean best score of a user is this logit."""
    spectral_rank: int = 0
    """Rank of a fixed spectral branch added to a pooled-history model once it is trained:
    GF-CF's ideal low-pass filter r_u D_i^-1/2 V V^T D_i^1/2 over the top singular vectors V of
    the normalised training matrix, as extra embedding dimensions (a dot model's score is then
    learned + filter; a MoL model's is its mixture + filter).  0: no branch."""
    spectral_weight: float = 3.0
    """The branch's scale: a typical user's best branch score, in logits (the learned part's
    cosine scores reach 1 / temperature)."""
    spectral_linear_weight: float = 0.0
    """With a branch: also GF-CF's linear filter r_u R~^T R~ in the same top singular directions
    (r_u V diag(s^2) V^T), as ``spectral_rank`` more dimensions, scaled so that a typical user's
    best linear score is this many logits.  0: the ideal low-pass filter only."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, negatives, early stopping and checkpoints."""

    loss: Literal["softmax", "sampled_softmax", "ccl"] = "sampled_softmax"
    """softmax: over all items; sampled_softmax: in-batch + sampled negatives with log-Q
    correction; ccl: cosine contrastive loss (SimpleX) over the same negatives."""
    examples: Literal["pairs", "users"] = "pairs"
    """Set data: pairs: one (user, item) pair per row, the item left out of the user's history;
    users: one user per row, a random ``target_fraction`` of the user's items are targets and
    the rest the input history (a denoising objective: the logits of a user are computed once
    for all of its targets, far cheaper with the full softmax)."""
    target_fraction: float = 0.5
    bf16: bool = False
    """Autocast matrix products to bfloat16 in training (fast on GPUs and on CPUs with AMX or
    AVX512-BF16; on other CPUs torch emulates bfloat16, several times slower than float32, and
    training warns)."""
    num_negatives: int = 1024
    """Shared sampled negatives per batch (sampled_softmax, ccl)."""
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    in_batch_negatives: bool = True
    ccl_margin: float = 0.8
    ccl_negative_weight: float = 100.0
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_beta2: float = 0.999
    history_dropout: float = 0.0
    epochs: int = 20
    patience: int = 3
    """Stop after this many validations without improvement."""
    checkpoint_every: int = 200
    """Steps between mid-epoch checkpoints (0: only at epoch ends)."""
    refit: bool = False
    """After early stopping, retrain on train + valid for the best number of epochs."""
    init_from: str = ""
    """A trained model file (a run's model.safetensors) to start from instead of random
    weights; a dot model grows into a MoL model with the same towers (every component starts
    as the dot embeddings, see ``hirex.models.warm_start``).  Empty: random init."""
    seed: int = 0
    device: str = "auto"
    """auto (cuda when present), cpu, cuda, cuda:N."""
    num_threads: int = 0
    """Torch CPU threads; 0 keeps torch's default."""


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = ()
    """Cut-offs; empty: the protocol's (20 for set data, 5 and 10 for sequences)."""
    select_metric: str = ""
    """Validation metric for early stopping; empty: recall@20 (set data) or ndcg@10 (sequences)."""
    user_batch: int = 512
    item_chunk: int = 65536


@dataclass(frozen=True)
class IndexConfig:
    """The hierarchical index over the item memory (HILL) and how it is learned."""

    method: Literal["none", "joint", "em", "posthoc"] = "none"
    """joint: learned with the model (HILL); em: k-means assignment alternating with training;
    posthoc: residual k-means on the trained item embeddings; none: no index."""
    levels: tuple[int, ...] = (64, 16)
    """Codewords per level (2 to 4 levels is typical); a node is a path prefix of codes."""
    start_epoch: int = 1
    """Joint / EM: epochs of plain training before the index losses start (codewords are then
    initialised by residual k-means on the item embeddings)."""
    warmup_steps: int = 500
    """Joint / EM: the index loss weight ramps linearly from 0 to 1 over these steps."""
    alpha_min: float = 1.0
    alpha_max: float = 500.0
    """Joint: attention sharpness over distances divided by their row mean, annealed
    alpha_min + (alpha_max - alpha_min) * (t / T) ** alpha_power from soft to hard."""
    alpha_power: float = 2.0
    level_weight: float = 1.0
    """Weight of the retrieval loss on (user, pseudo-item) pairs, averaged over levels."""
    recon_weight: float = 1.0
    """Weight of ||q_L - v||^2, the last level's reconstruction of the item embedding."""
    balance_weight: float = 0.1
    """Weight of the balance regulariser: K * sum_k (assignment mass of node k)^2 - 1, over an
    exponential average of recent batches (0 when nodes are used evenly)."""
    align_weight: float = 0.1
    """Weight of KL(item-level scores || level scores) over each batch's candidates."""
    kmeans_iters: int = 20
    kmeans: Literal["residual", "hierarchical"] = "residual"
    """posthoc: residual k-means (one codebook per level, shared by all parents) or hierarchical
    k-means (every node's items split by their own k-means; new items descend to the nearest
    child centroid).  joint and em learn residual codebooks; with a spectral branch they learn
    them on the learned dimensions (the branch is attached after training) and the index routes
    on those, as kmeans_on = "learned" does."""
    kmeans_on: Literal["all", "learned"] = "all"
    """posthoc: the dimensions k-means partitions the items on.  "learned" leaves out a spectral
    branch's dimensions (its item norms grow with the square root of the item's degree, which
    k-means over all dimensions turns into clusters that centroid scores route badly); nodes are
    still scored at the centroids of the full embeddings; items added later descend by the
    learned dimensions too (``HierarchicalIndex.assign_dims``).  The same as "all" for a model
    without a branch."""
    node_embedding: Literal["codewords", "centroids"] = "centroids"
    """The pseudo-item search scores for a node: the mean of its items (centroids) or the sum of
    its path's codewords (codewords, what the joint losses train the per-level scorers on)."""
    beam: tuple[int, ...] = (8,)
    """Default beam width per level for search (one value: every level)."""


@dataclass(frozen=True)
class TTTConfig:
    """Test-time training: fine-tune on data marked by the index's intermediate nodes."""

    depth: int = 1
    """Level (1-based) of the nodes mined from each user's beam-search paths."""
    threshold: float = 0.6
    """Interest rate a (user, node) pair needs: the share of the user's training items whose
    path passes through the node."""
    beam: tuple[int, ...] = (8,)
    """Beam widths of the search that finds each user's paths."""
    node_centred: bool = True
    """Also train on the interactions whose items are representative items of nodes at levels
    1..depth (the node-centred subset)."""
    replay: float = 1.0
    """Ordinary training pairs replayed per mined pair (0: mined data only)."""
    params: Literal["all", "user"] = "all"
    """What fine-tuning changes: every parameter, or the user side only (the item tower and
    the scorer stay, so every item keeps its embedding and its path in the index)."""
    data: Literal["mined", "replay"] = "mined"
    """mined: the mined pairs (and node-centred subset, and replay); replay: a control that
    fine-tunes on ordinary training pairs only, as many as ``mined`` would give, to tell the
    effect of the mined data from that of the fine-tuning procedure."""
    target: Literal["item", "node"] = "item"
    """What a mined (user, node) pair trains the user to score high: the node's representative
    item (a sampled softmax over items), or the node's pseudo-item, the embedding the index
    scores (a softmax over all the nodes of level ``depth``; HILL's node-level objective)."""
    weight: Literal["none", "rate"] = "none"
    """Weigh each mined pair the same, or by its interest rate (normalised to mean 1)."""
    select: Literal["exhaustive", "index"] = "exhaustive"
    """What validation metric keeps the best fine-tuning epoch (or the start model): exhaustive
    scoring, or beam search through the refreshed index at ``index.beam``."""
    select_users: int = 0
    """With select = "index": validate on this many evenly spaced users (0: all)."""
    epochs: int = 2
    lr: float = 0.0005
    seed: int = 0


@dataclass(frozen=True)
class SidConfig:
    """Semantic IDs learned from item text (``hirex sid fit``), LMIndexer and the baselines."""

    method: Literal[
        "lmindexer", "rqvae", "rq_kmeans", "hierarchical_kmeans", "random", "hill_paths"
    ] = "lmindexer"
    encoder: Literal["minilm", "tfidf"] = "minilm"
    """Text encoder: minilm (pretrained all-MiniLM-L6-v2 shipped in a package) or tfidf (TF-IDF
    + SVD fitted on the catalogue, no pretraining)."""
    levels: tuple[int, ...] = (256, 256, 256)
    """Codes per position; a disambiguation position is added after them."""
    missing_text: Literal["error", "placeholder"] = "error"
    """Items without text: an error naming them, or the text "[no text]" (they then share codes
    and differ only in their disambiguation code)."""
    max_tokens: int = 32
    """Tokens of each item's text kept (encoder input and LMIndexer's reconstruction target)."""
    epochs: int = 15
    """LMIndexer: epochs per position; RQ-VAE: ten times this many epochs."""
    dim: int = 128
    """LMIndexer's hidden width."""
    lr: float = 0.002
    seed: int = 0
    run: str = ""
    """hill_paths: the run folder whose hierarchical index (<run>/index) gives the paths."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Generative retrieval over semantic IDs; ``hirex train`` trains it when ``ids`` is set.
    Optimisation uses [train] (lr, batch_size, epochs, patience, seed, device, num_threads)."""

    ids: str = ""
    """A semantic-ID folder from ``hirex sid fit``; empty: train a scoring model instead."""
    dim: int = 64
    layers: int = 2
    """Encoder and decoder layers each."""
    heads: int = 4
    ff: int = 256
    dropout: float = 0.1
    max_history: int = 20
    """Most recent history items the encoder reads."""
    beam: int = 20
    """Beam width of the constrained search (at least k is used)."""
    valid_users: int = 0
    """Validate each epoch on this many evenly spaced users (0: all), for a cheaper epoch."""
    new_item_share: float = 0.1
    """Share of the k results kept for items never seen in training (cold-start or added
    later) whose first ``new_item_prefix`` codes match a beam (TIGER's cold-start decoding);
    0: rank them like any other ID, which in practice never ranks them."""
    new_item_prefix: int = 2


@dataclass(frozen=True)
class LabelConfig:
    """LLM relevance labelling (``hirex label``). The endpoint comes from here, else from the
    environment (``HIREX_LABEL_BASE_URL`` or ``OPENAI_BASE_URL``, ``HIREX_LABEL_MODEL``); the
    API key only from the environment variable named by ``api_key_env``."""

    backend: Literal["local", "openai"] = "local"
    """local: hirex starts a llama.cpp server on 127.0.0.1; openai: any OpenAI-compatible
    endpoint at ``base_url``."""
    model: str = ""
    """local: smollm2-135m (default), gemma3-270m or a .gguf path; openai: the model name."""
    base_url: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    template: str = "umbrela"
    """A built-in template (umbrela: 0-3, thomas: 0-2) or a template file."""
    variant: str = ""
    """Parts switched on, letters of RDNAM (R role, D description, N narrative, A aspects,
    M multiple judges), '-' for none; empty: the template's default."""
    judges: int = 5
    """Simulated judges averaged by variant M."""
    concurrency: int = 1
    """Requests in flight (the local server gets as many slots)."""
    threads: int = 1
    """local: CPU threads (on 2 cores one thread is much faster than two for the 135M model)."""
    ctx: int = 2048
    timeout: float = 60.0
    max_retries: int = 4
    max_tokens: int = 64
    price_prompt: float = 0.0
    """Cost per million prompt tokens, recorded with each label (0 for a local model)."""
    price_completion: float = 0.0
    cache: str = ""
    """The SQLite label cache; empty: ``~/.cache/hirex/labels.sqlite``."""


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    sid: SidConfig = field(default_factory=SidConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    label: LabelConfig = field(default_factory=LabelConfig)


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


def _check_value(section: str, f: dataclasses.Field, value: Any) -> Any:
    name = f"{section}.{f.name}"
    hint = typing.get_type_hints(_SECTIONS[section])[f.name]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} = {value!r}; choose one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{name} must be a list of integers, got {value!r}")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}")
    return value


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "index": IndexConfig,
    "ttt": TTTConfig,
    "sid": SidConfig,
    "generator": GeneratorConfig,
    "label": LabelConfig,
}


def same_training(a: RunConfig, b: RunConfig) -> bool:
    """Whether two configs train the same model: equal in every field but
    ``model.spectral_weight``, which only scales the spectral branch fitted after training.  A
    finished run resumed at another weight re-attaches the branch at that weight and is
    evaluated again, without training anew."""
    model = dataclasses.replace(a.model, spectral_weight=b.model.spectral_weight)
    return dataclasses.replace(a, model=model) == b


def config_from_dict(raw: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Build a RunConfig from nested dicts, strictly: unknown sections/keys raise ConfigError."""
    base = base or RunConfig()
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}; valid: {sorted(_SECTIONS)}")
    parts = {}
    for section, cls in _SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of key = value")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        bad = set(values) - set(fields)
        if bad:
            raise ConfigError(
                f"unknown keys {sorted(bad)} in [{section}]; valid keys: {sorted(fields)}"
            )
        checked = {k: _check_value(section, fields[k], v) for k, v in values.items()}
        parts[section] = dataclasses.replace(getattr(base, section), **checked)
    cfg = RunConfig(**parts)
    validate_config(cfg)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    """Range checks that a type check cannot express."""
    positive = {
        "model.dim": cfg.model.dim,
        "model.max_history": cfg.model.max_history,
        "model.n_heads": cfg.model.n_heads,
        "model.mol_user_embs": cfg.model.mol_user_embs,
        "model.mol_item_embs": cfg.model.mol_item_embs,
        "train.batch_size": cfg.train.batch_size,
        "train.epochs": cfg.train.epochs,
        "train.patience": cfg.train.patience,
        "eval.user_batch": cfg.eval.user_batch,
        "eval.item_chunk": cfg.eval.item_chunk,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if cfg.model.dim % cfg.model.n_heads:
        raise ConfigError(f"model.dim ({cfg.model.dim}) must divide by model.n_heads")
    if cfg.model.temperature <= 0:
        raise ConfigError("model.temperature must be positive")
    if not 0 <= cfg.model.dropout < 1 or not 0 <= cfg.train.history_dropout < 1:
        raise ConfigError("dropout rates must lie in [0, 1)")
    if cfg.model.spectral_rank < 0 or cfg.model.spectral_weight <= 0:
        raise ConfigError("model.spectral_rank must be >= 0 and model.spectral_weight positive")
    if cfg.model.spectral_linear_weight < 0 or (
        cfg.model.spectral_linear_weight and not cfg.model.spectral_rank
    ):
        raise ConfigError(
            "model.spectral_linear_weight must be >= 0, and > 0 only with a spectral branch "
            "(model.spectral_rank > 0)"
        )
    if (
        cfg.model.spectral_rank
        and cfg.index.method in ("joint", "em")
        and cfg.index.node_embedding != "centroids"
    ):
        raise ConfigError(
            f"index.method = {cfg.index.method!r} learns its codebooks on the learned dimensions, "
            "before the spectral branch (model.spectral_rank) is attached, so its codewords lack "
            "the branch: set index.node_embedding = 'centroids' (nodes scored at their items' "
            "full-width mean)"
        )
    if cfg.train.init_from and cfg.model.init != "random":
        raise ConfigError(
            "train.init_from and model.init = 'spectral' both set the starting weights: choose one"
        )
    if cfg.model.init_std < 0:
        raise ConfigError("model.init_std must be >= 0 (0 picks 1/sqrt(dim))")
    if not 0 < cfg.train.target_fraction < 1:
        raise ConfigError("train.target_fraction must lie in (0, 1)")
    if not 0 < cfg.train.adam_beta2 < 1:
        raise ConfigError("train.adam_beta2 must lie in (0, 1)")
    if cfg.train.lr <= 0:
        raise ConfigError("train.lr must be positive")
    if cfg.train.num_negatives < 0:
        raise ConfigError("train.num_negatives must be >= 0")
    if cfg.eval.ks and min(cfg.eval.ks) <= 0:
        raise ConfigError("eval.ks must be a list of positive cut-offs")
    ic = cfg.index
    if not 1 <= len(ic.levels) <= 8 or min(ic.levels) < 2:
        raise ConfigError(f"index.levels must be 1 to 8 codebook sizes >= 2, got {list(ic.levels)}")
    if not ic.beam or min(ic.beam) < 1 or len(ic.beam) not in (1, len(ic.levels)):
        raise ConfigError("index.beam must be one width, or one per level, each >= 1")
    if ic.start_epoch < 0 or ic.warmup_steps < 0 or ic.kmeans_iters < 1:
        raise ConfigError("index.start_epoch, index.warmup_steps must be >= 0, kmeans_iters >= 1")
    if ic.kmeans_on == "learned" and (ic.method != "posthoc" or ic.kmeans != "hierarchical"):
        raise ConfigError(
            "index.kmeans_on = 'learned' is for index.method = 'posthoc' with "
            "index.kmeans = 'hierarchical'"
        )
    if not 0 < ic.alpha_min <= ic.alpha_max or ic.alpha_power <= 0:
        raise ConfigError("index: need 0 < alpha_min <= alpha_max and alpha_power > 0")
    if min(ic.level_weight, ic.recon_weight, ic.balance_weight, ic.align_weight) < 0:
        raise ConfigError("index loss weights must be >= 0")
    tc = cfg.ttt
    if tc.depth < 1 or not 0 <= tc.threshold <= 1 or tc.replay < 0 or tc.epochs < 1 or tc.lr <= 0:
        raise ConfigError(
            "ttt: need depth >= 1, 0 <= threshold <= 1, replay >= 0, epochs >= 1 and lr > 0"
        )
    if not tc.beam or min(tc.beam) < 1:
        raise ConfigError("ttt.beam must be one width, or one per level, each >= 1")
    if tc.select_users < 0:
        raise ConfigError(f"ttt.select_users must be >= 0 (0: all users), got {tc.select_users}")
    sc, gc = cfg.sid, cfg.generator
    if not 1 <= len(sc.levels) <= 6 or min(sc.levels) < 2:
        raise ConfigError(f"sid.levels must be 1 to 6 codebook sizes >= 2, got {list(sc.levels)}")
    if min(sc.max_tokens, sc.epochs, sc.dim) < 1 or sc.lr <= 0:
        raise ConfigError("sid.max_tokens, sid.epochs and sid.dim must be >= 1, sid.lr > 0")
    if min(gc.dim, gc.layers, gc.heads, gc.ff, gc.max_history, gc.beam) < 1 or gc.valid_users < 0:
        raise ConfigError("generator: dim, layers, heads, ff, max_history and beam must be >= 1")
    if gc.dim % gc.heads:
        raise ConfigError(f"generator.dim ({gc.dim}) must divide by generator.heads")
    if not 0 <= gc.dropout < 1:
        raise ConfigError("generator.dropout must lie in [0, 1)")
    if not 0 <= gc.new_item_share <= 1 or gc.new_item_prefix < 1:
        raise ConfigError("generator.new_item_share must lie in [0, 1], new_item_prefix >= 1")
    lc = cfg.label
    if min(lc.judges, lc.concurrency, lc.threads, lc.ctx, lc.max_tokens) < 1 or lc.max_retries < 0:
        raise ConfigError(
            "label: judges, concurrency, threads, ctx and max_tokens must be >= 1, max_retries >= 0"
        )
    if lc.timeout <= 0 or min(lc.price_prompt, lc.price_completion) < 0:
        raise ConfigError("label.timeout must be positive and prices >= 0")
    if cfg.data.cold_start_fraction and not 0 < cfg.data.cold_start_fraction < 1:
        raise ConfigError("data.cold_start_fraction must lie in [0, 1)")
    if cfg.model.user_encoder == "none" and not cfg.model.use_user_id:
        raise ConfigError(
            "model.user_encoder = 'none' needs model.use_user_id = true: the user tower "
            "would have no input"
        )


def load_config(path: str | os.PathLike, base: RunConfig | None = None) -> RunConfig:
    """Read a .toml or .json config file strictly."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is a directory; give the .toml or .json file in it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8"
        ) from err
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot parse: {err}") from err
    try:
        return config_from_dict(raw, base)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` (value parsed as TOML, else as a string) for command-line overrides."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.lr=0.01")
    key, value = text.split("=", 1)
    section, name = key.strip().split(".", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return section, name, parsed


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    raw: dict[str, dict[str, Any]] = {}
    for text in overrides:
        section, name, value = parse_override(text)
        raw.setdefault(section, {})[name] = value
    return config_from_dict(raw, cfg)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {
        s: {k: list(v) if isinstance(v, tuple) else v for k, v in sec.items() if v is not None}
        for s, sec in d.items()
    }


def config_to_toml(cfg: RunConfig) -> str:
    lines = []
    for section, values in config_to_dict(cfg).items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    return "\n".join(lines)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    atomic_write_text(path, config_to_toml(cfg))
