"""Semantic IDs learned from item text (LMIndexer and baselines) and generative retrieval.

ids = fit_ids(dataset.item_text, catalogue_fingerprint(dataset.item_ids.raw), SidConfig())
save_ids("ids/beauty-lmindexer", ids)
retriever = GenerativeRetriever(generator, ids)      # a trained SemanticIdGenerator
top = retriever.topk(users, history, k=10, exclude=history)   # TopK (U, 10)
"""

from hirex.semantic_ids.assign import assign_from_text, fit_ids
from hirex.semantic_ids.beam_search import constrained_beam_search, exhaustive_generate
from hirex.semantic_ids.files import load_generator, load_ids, save_generator, save_ids
from hirex.semantic_ids.generator import GeneratorShape, SemanticIdGenerator
from hirex.semantic_ids.ids import METHODS, SemanticIds, catalogue_fingerprint
from hirex.semantic_ids.retriever import GenerativeRetriever
from hirex.semantic_ids.trie import PrefixTrie

__all__ = [
    "METHODS",
    "GenerativeRetriever",
    "GeneratorShape",
    "PrefixTrie",
    "SemanticIdGenerator",
    "SemanticIds",
    "assign_from_text",
    "catalogue_fingerprint",
    "constrained_beam_search",
    "exhaustive_generate",
    "fit_ids",
    "load_generator",
    "load_ids",
    "save_generator",
    "save_ids",
]
