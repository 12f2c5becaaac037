"""What ``hirex train --distributed`` trains, checked before any process starts (this module
does not import TorchRec, so the check is instant)."""

from __future__ import annotations

from hirex.config import ConfigError, RunConfig

__all__ = ["check_distributed_config"]


def check_distributed_config(cfg: RunConfig) -> None:
    """Refuse, before anything starts, what distributed training does not support."""
    problems = []
    if cfg.generator.ids:
        problems.append("generative retrieval (generator.ids)")
    if cfg.index.method in ("joint", "em"):
        problems.append(f"an index learned with the model (index.method = {cfg.index.method!r})")
    if cfg.model.user_encoder == "transformer":
        problems.append("the transformer user encoder (model.user_encoder = 'transformer')")
    if cfg.model.item_text:
        problems.append("item text features (model.item_text = true)")
    if cfg.train.examples != "pairs":
        problems.append(f"train.examples = {cfg.train.examples!r}")
    if problems:
        raise ConfigError(
            "hirex train --distributed trains the pooled-history or id-only user tower with "
            "the dot or MoL scorer on pair examples; this config asks for "
            + ", ".join(problems)
            + ". Train it in one process (without --distributed), or change those settings "
            "(index.method = 'posthoc' builds the index after training)."
        )
