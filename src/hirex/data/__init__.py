"""Datasets and formats, splits and synthetic data.

Everything loads into a ``Dataset`` (train / valid / test ``Interactions`` in dense ids, with
``IdMap``s back to the original ids where the source has its own ids).  Importing this
package reads no files and changes no global state.
"""

from hirex.data.interactions import DataError, Dataset, IdMap, Interactions, Kind
from hirex.data.item_text import load_item_text
from hirex.data.lightgcn import load_lightgcn
from hirex.data.registry import DATASET_NAMES, load_dataset
from hirex.data.sequences import load_sequences
from hirex.data.splits import carve_validation, holdout_split, leave_one_out
from hirex.data.synthetic import SyntheticConfig, SyntheticTruth, make_synthetic
from hirex.data.tables import load_table

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "Dataset",
    "IdMap",
    "Interactions",
    "Kind",
    "SyntheticConfig",
    "SyntheticTruth",
    "carve_validation",
    "holdout_split",
    "leave_one_out",
    "load_dataset",
    "load_item_text",
    "load_lightgcn",
    "load_sequences",
    "load_table",
    "make_synthetic",
]
