"""Agreement between LLM labels and human (gold) labels, and between the system rankings
they produce, with bootstrap confidence intervals.

Label agreement (over pairs): Cohen's kappa graded and binarised (relevant at grade >=
``binary_at``, 2 by default, as in TREC DL), linearly and quadratically weighted kappa
(scikit-learn's ``cohen_kappa_score``), Krippendorff's alpha at the ordinal level (the
``krippendorff`` package) and the confusion matrix (rows gold, columns LLM).

Ranking agreement (over systems): Kendall's tau-b (``scipy.stats.kendalltau``) and rank-biased
overlap (RBO, Webber, Moffat and Zobel 2010, extrapolated form, persistence ``p``) between the
orders of systems by their mean per-query score under gold and under LLM labels.

Confidence intervals are percentile bootstraps over *queries* (pairs of one query are not
independent): each replicate draws queries with replacement and recomputes the statistic.
A statistic that is undefined (e.g. kappa when both raters give one grade only) is None, and
the share of replicates where it was undefined is reported rather than hidden.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["label_agreement", "ranking_agreement", "rbo"]


def _kappa(gold: np.ndarray, pred: np.ndarray, weights: str | None = None) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an undefined kappa is reported as None instead
        k = cohen_kappa_score(gold, pred, weights=weights)
    return None if not np.isfinite(k) else float(k)


def _alpha(gold: np.ndarray, pred: np.ndarray) -> float | None:
    import krippendorff

    data = np.vstack([gold, pred]).astype(float)
    if len(np.unique(data)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
    return None if not np.isfinite(a) else float(a)


def label_agreement(
    gold: Sequence[int],
    pred: Sequence[int],
    groups: Sequence[str],
    scale: int,
    binary_at: int = 2,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """gold, pred: (N,) integer grades in 0..scale; groups: (N,) query ids (the bootstrap
    unit). Returns each statistic with a ``<name>_ci`` [low, high] 95% interval."""
    gold_a, pred_a = np.asarray(gold, dtype=int), np.asarray(pred, dtype=int)
    groups_a = np.asarray(groups)
    if not (len(gold_a) == len(pred_a) == len(groups_a)) or len(gold_a) == 0:
        raise ValueError(
            f"gold ({len(gold_a)}), pred ({len(pred_a)}) and groups ({len(groups_a)}) must be "
            "non-empty and of one length"
        )
    for name, a in (("gold", gold_a), ("pred", pred_a)):
        if a.min() < 0 or a.max() > scale:
            raise ValueError(f"{name} grades must be in 0..{scale}; found {a.min()}..{a.max()}")
    stats: dict[str, Callable[[np.ndarray, np.ndarray], float | None]] = {
        "kappa": lambda g, p: _kappa(g, p),
        "kappa_binary": lambda g, p: _kappa(g >= binary_at, p >= binary_at),
        "kappa_linear": lambda g, p: _kappa(g, p, "linear"),
        "kappa_quadratic": lambda g, p: _kappa(g, p, "quadratic"),
        "alpha": _alpha,
    }
    out: dict = {"pairs": int(len(gold_a)), "queries": int(len(np.unique(groups_a)))}
    for name, fn in stats.items():
        out[name] = fn(gold_a, pred_a)
    reps = _bootstrap(groups_a, n_boot, seed)
    for name, fn in stats.items():
        values = [fn(gold_a[idx], pred_a[idx]) for idx in reps]
        out[f"{name}_ci"], out[f"{name}_undefined_share"] = _interval(values)
    from sklearn.metrics import confusion_matrix

    out["confusion"] = confusion_matrix(gold_a, pred_a, labels=list(range(scale + 1))).tolist()
    out["pred_distribution"] = np.bincount(pred_a, minlength=scale + 1).tolist()
    out["gold_distribution"] = np.bincount(gold_a, minlength=scale + 1).tolist()
    return out


def rbo(a: Sequence, b: Sequence, p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap of two rankings of distinct items (Webber et al. 2010,
    eq. 32, for lists of equal length): 1 for identical rankings, 0 for disjoint ones."""
    if len(a) != len(b):
        raise ValueError("rbo here takes two rankings of the same length")
    if not 0 < p < 1:
        raise ValueError(f"p = {p}; must be in (0, 1)")
    if not a:
        raise ValueError("rbo of empty rankings is undefined")
    seen_a, seen_b, overlap, total = set(), set(), 0, 0.0
    for d, (x, y) in enumerate(zip(a, b, strict=True), 1):
        if x == y:
            overlap += 1
        else:
            overlap += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += overlap / d * p**d
    k = len(a)
    return float(overlap / k * p**k + (1 - p) / p * total)


def ranking_agreement(
    gold_scores: np.ndarray,
    llm_scores: np.ndarray,
    systems: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    p: float = 0.9,
) -> dict:
    """gold_scores, llm_scores: (S, Q) per-system, per-query metric values (e.g. nDCG@10)
    under the two label sets, the same queries in the same order. Returns tau (Kendall tau-b
    of the systems' mean scores), RBO, both orders, and bootstrap CIs over queries."""
    from scipy.stats import kendalltau

    g, m = np.asarray(gold_scores, float), np.asarray(llm_scores, float)
    if g.shape != m.shape or g.ndim != 2 or g.shape[0] < 2 or g.shape[1] < 1:
        raise ValueError(f"need two (S>=2, Q>=1) arrays of one shape; got {g.shape}, {m.shape}")
    names = list(systems)

    def stats(cols: np.ndarray) -> tuple[float | None, float | None]:
        gm, mm = g[:, cols].mean(axis=1), m[:, cols].mean(axis=1)
        if np.ptp(gm) == 0 or np.ptp(mm) == 0:
            return None, None  # every system tied under one label set: no order to compare
        tau = kendalltau(gm, mm).statistic
        order_g = [names[i] for i in np.argsort(-gm, kind="stable")]
        order_m = [names[i] for i in np.argsort(-mm, kind="stable")]
        return (None if not np.isfinite(tau) else float(tau)), rbo(order_g, order_m, p)

    all_cols = np.arange(g.shape[1])
    tau, r = stats(all_cols)
    rng = np.random.default_rng(seed)
    taus, rbos = [], []
    for _ in range(n_boot):
        t, rr = stats(rng.integers(0, g.shape[1], size=g.shape[1]))
        taus.append(t)
        rbos.append(rr)
    tau_ci, tau_undef = _interval(taus)
    rbo_ci, _ = _interval(rbos)
    return {
        "systems": len(names),
        "kendall_tau": tau,
        "kendall_tau_ci": tau_ci,
        "kendall_tau_undefined_share": tau_undef,
        "rbo": r,
        "rbo_ci": rbo_ci,
        "rbo_p": p,
        "gold_order": [names[i] for i in np.argsort(-g.mean(axis=1), kind="stable")],
        "llm_order": [names[i] for i in np.argsort(-m.mean(axis=1), kind="stable")],
        "gold_means": dict(zip(names, np.round(g.mean(axis=1), 4).tolist(), strict=True)),
        "llm_means": dict(zip(names, np.round(m.mean(axis=1), 4).tolist(), strict=True)),
    }


def _bootstrap(groups: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Index arrays of ``n_boot`` replicates, each drawing the groups with replacement."""
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(uniq))]
    reps = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), size=len(uniq))
        reps.append(np.concatenate([members[i] for i in pick]))
    return reps


def _interval(values: list[float | None]) -> tuple[list[float] | None, float]:
    finite = np.array([v for v in values if v is not None], dtype=float)
    undefined = 1.0 - len(finite) / len(values) if values else 1.0
    if len(finite) == 0:
        return None, undefined
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)], round(undefined, 4)
