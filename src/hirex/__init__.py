"""hirex: large-scale retrieval for recommendation with big models, served exactly.

The public API, in the order of a typical session::

    ds = hirex.load_dataset("gowalla", data_dir="../shared/data")
    cfg = hirex.load_config("configs/gowalla.toml")
    result = hirex.train_model(cfg, ds, "runs/gowalla")
    print(hirex.evaluate(result.model, ds, "test").metrics)
    top = hirex.exhaustive_topk(result.model, users, ds.history("test"), k=20,
                                exclude=ds.history("test"))
    index = hirex.build_index(result.model, cfg.index, result.codebooks)
    found = hirex.beam_search(result.model, index, users, ds.history("test"), k=20, beam=16,
                              exclude=ds.history("test"))

Importing hirex reads no files and changes no global state.
"""

from hirex.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    GeneratorConfig,
    IndexConfig,
    LabelConfig,
    ModelConfig,
    RunConfig,
    SidConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    save_config,
)
from hirex.data import (
    DataError,
    Dataset,
    IdMap,
    Interactions,
    SyntheticConfig,
    load_dataset,
    make_synthetic,
)
from hirex.eval.metrics import MetricAccumulator, ranking_metrics
from hirex.eval.protocols import Evaluation, evaluate, evaluate_index, evaluate_ranker
from hirex.index.build import build_index
from hirex.index.codebooks import ResidualCodebooks
from hirex.index.exhaustive import exhaustive_topk, item_embeddings
from hirex.index.files import load_index, save_index
from hirex.index.hierarchy import HierarchicalIndex
from hirex.index.search import SearchResult, beam_search
from hirex.index.topk import TopK
from hirex.models.baselines import GFCF, Popularity
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.user_batch import UserBatch
from hirex.runs import Run, dataset_from_config, load_run
from hirex.train.trainer import TrainResult, train_model

__version__ = "0.1.0"

__all__ = [
    "GFCF",
    "ConfigError",
    "DataConfig",
    "DataError",
    "Dataset",
    "EvalConfig",
    "Evaluation",
    "GeneratorConfig",
    "LabelConfig",
    "HierarchicalIndex",
    "IdMap",
    "IndexConfig",
    "Interactions",
    "MetricAccumulator",
    "ModelConfig",
    "Popularity",
    "ResidualCodebooks",
    "RetrievalModel",
    "Run",
    "RunConfig",
    "SearchResult",
    "SidConfig",
    "SyntheticConfig",
    "TopK",
    "TrainConfig",
    "TrainResult",
    "UserBatch",
    "__version__",
    "apply_overrides",
    "beam_search",
    "build_index",
    "dataset_from_config",
    "evaluate",
    "evaluate_index",
    "evaluate_ranker",
    "exhaustive_topk",
    "item_embeddings",
    "load_config",
    "load_dataset",
    "load_index",
    "load_run",
    "make_synthetic",
    "ranking_metrics",
    "save_config",
    "save_index",
    "train_model",
]
