"""The statistics of the radiogenomic analysis: Fisher's exact test, quartiles, Bonferroni, AUC.

Buda, Saha and Mazurowski (2019) split each shape feature into quartiles over the patients and test
the quartile x cluster contingency table with Fisher's exact test, one test per (feature, genomic
variable) pair. ``association_tests`` runs those tests and ``feature_aucs`` gives, per cluster k,
the area under the ROC curve of the feature for "cluster k against the rest".

Conventions:

- ``fisher_exact`` is R's ``fisher.test`` two-sided p-value for an r x c table: the total
  (multivariate hypergeometric, margins fixed) probability of every table with the observed margins
  whose probability is at most the observed table's times ``1 + 1e-7`` (R's ``relErr``, 2 x 2) or
  ``exp(3.45254e-7)`` (the ``tol`` of R's FEXACT, larger tables): the slack only decides ties that
  rounding has split. Rows and columns that sum to 0 are dropped first; a table left with one row
  or one column has p = 1.
  Cost: quartiles x 3 or 4 clusters with n ~ 110 take well under 2 s; a 4 x 5 table (the five
  methylation clusters) takes from 0.2 s to some 10 s of CPU, the most for a strong association.
- Quartiles follow ``pandas.qcut(values, 4, labels=False, duplicates="drop")``: edges at the sample
  quantiles 0, .25, .5, .75, 1 (linear interpolation), intervals closed on the right with the
  minimum included. Tied values always share a label; where ties make edges coincide the repeated
  edges are dropped, so fewer than 4 labels can come out, numbered by bin as qcut numbers them
  (values [1, 2] get 0 and 3).
- Bonferroni multiplies by the number of p-values that are not NaN (the tests actually run).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import gammaln
from scipy.stats import rankdata

from unet.errors import InputError
from unet.radiogenomics.clinical import CLUSTER_COLUMNS, PATIENT

__all__ = [
    "ALPHA",
    "FEATURES",
    "MAX_EDGES",
    "PAPER_THRESHOLD",
    "PREREGISTERED",
    "R_FEXACT_TOLERANCE",
    "R_RELATIVE_TOLERANCE",
    "association_tests",
    "auc",
    "bonferroni",
    "feature_aucs",
    "fisher_exact",
    "quartiles",
]

R_RELATIVE_TOLERANCE = 1e-7  # R's fisher.test, 2 x 2: relErr <- 1 + 10^(-7)
R_FEXACT_TOLERANCE = 3.45254e-7  # R's FEXACT (r x c): tol, added to the observed log-probability
MAX_EDGES = 20_000_000  # partial tables one stage of the network may hold (about 1 GB in all)
ALPHA = 0.05
FEATURES = ("bevr", "mf", "asd")

PREREGISTERED: tuple[tuple[str, str], ...] = (
    ("bevr", "RNASeqCluster"),
    ("bevr", "miRNACluster"),
    ("bevr", "CNCluster"),
    ("bevr", "COCCluster"),
    ("mf", "RNASeqCluster"),
    ("asd", "RNASeqCluster"),
    ("asd", "MethylationCluster"),
    ("asd", "CNCluster"),
    ("asd", "COCCluster"),
)
"""The paper's pre-registered (feature, variable) pairs that the Kaggle ``data.csv`` can test: 9 of 10.

Buda et al. (2019) name 10 pairs and test each at ``PAPER_THRESHOLD`` = 0.05 / 10 = 0.005. The tenth,
ASD with the IDH mutation / 1p/19q co-deletion subtype, is left out: ``data.csv`` has no such column.
"""

PAPER_THRESHOLD = ALPHA / 10  # the paper's Bonferroni threshold for its 10 pre-registered pairs


# ---------------------------------------------------------------- Fisher's exact test, r x c


def _count_table(table: Any) -> np.ndarray:
    """``table`` as a 2-D int64 array of counts; InputError when it is not one."""
    array = np.asarray(table)
    if array.ndim != 2 or array.size == 0:
        raise InputError(
            f"fisher_exact: expected a 2-D contingency table, got shape {array.shape}; "
            "pass rows x columns of counts (e.g. pandas.crosstab(...).to_numpy())."
        )
    if not np.issubdtype(array.dtype, np.number) or array.dtype == bool:
        raise InputError(f"fisher_exact: table holds {array.dtype} values; pass integer counts.")
    if not (np.isfinite(array).all() and (array >= 0).all() and (array == np.round(array)).all()):
        bad = array[~(np.isfinite(array) & (array >= 0) & (array == np.round(array)))][0]
        raise InputError(f"fisher_exact: counts must be non-negative integers, got {bad!r}; pass counts, not rates.")
    return array.astype(np.int64)


def _column_vectors(caps: np.ndarray, total: int) -> np.ndarray:
    """Every integer vector x (one row each) with 0 <= x[i] <= caps[i] and sum(x) = total."""
    room_after = np.concatenate([np.cumsum(caps[::-1])[::-1][1:], [0]])
    parts = np.zeros((1, 0), dtype=np.int64)
    used = np.zeros(1, dtype=np.int64)
    for i in range(len(caps) - 1):
        low = np.maximum(0, total - used - room_after[i])
        counts = np.maximum(np.minimum(caps[i], total - used) - low + 1, 0)
        parent = np.repeat(np.arange(len(used)), counts)
        step = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        value = low[parent] + step
        parts = np.column_stack([parts[parent], value])
        used = used[parent] + value
    return np.column_stack([parts, total - used])


@dataclass
class _Level:
    """The nodes of one stage of the network: the multisets of row sums still to fill, sorted."""

    states: np.ndarray  # (m, r) int64, each row sorted ascending
    keys: np.ndarray  # (m,) int64 mixed-radix code of each row, ascending
    log_total: np.ndarray  # (m,) log of the sum over completions of prod 1/x!
    high: np.ndarray | None = None  # (m,) the largest completion log-weight -sum(log x!)
    low: np.ndarray | None = None  # (m,) the smallest completion log-weight


@dataclass
class _Edges:
    """Stage k -> k+1 in CSR form: node i's edges are ``start[i]:start[i + 1]``, one per column vector."""

    start: np.ndarray  # (m + 1,) offsets into the arrays below
    child: np.ndarray  # index of the child node in stage k + 1
    weight: np.ndarray  # -sum(log x!) of the column vector x


def _encode(states: np.ndarray, radix: np.ndarray) -> np.ndarray:
    return states @ radix


def _expand(states: np.ndarray, column: int, lf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every way to fill one column from every state: (edge offsets per state, child states, weights)."""
    children, weights, size = [], [], 0
    for state in states:
        x = _column_vectors(state, column)
        children.append(np.sort(state - x, axis=1))
        weights.append(-lf[x].sum(axis=1))
        size += len(x)
        if size > MAX_EDGES:
            raise InputError(
                f"fisher_exact: the table's network passes {MAX_EDGES} partial tables, too many to walk exactly; "
                "merge sparse categories, or use a chi-squared or Monte-Carlo test."
            )
    start = np.concatenate([[0], np.cumsum([len(w) for w in weights])])
    return start, np.concatenate(children), np.concatenate(weights)


def _log_totals(states: np.ndarray, columns: np.ndarray, lf: np.ndarray) -> np.ndarray:
    """log sum over tables with row sums ``states`` and column sums ``columns`` of prod 1/x! ."""
    return lf[states.sum(axis=1)] - lf[states].sum(axis=1) - lf[columns].sum()


def _network(rows: np.ndarray, columns: np.ndarray, lf: np.ndarray) -> tuple[list[_Level], list[_Edges]]:
    """Stages 0 .. c-2 of the network: stage k holds the row sums left after filling k columns."""
    if (int(rows.max()) + 1) ** len(rows) >= 2**62:
        raise InputError(
            f"fisher_exact: a table with row sums {rows.tolist()} is too large to enumerate exactly; "
            "merge sparse categories, or use a chi-squared or Monte-Carlo test."
        )
    radix = (int(rows.max()) + 1) ** np.arange(len(rows), dtype=np.int64)
    root = np.sort(rows)[None, :]
    levels = [_Level(root, _encode(root, radix), _log_totals(root, columns, lf))]
    edges: list[_Edges] = []
    for k in range(len(columns) - 2):
        start, child_states, weight = _expand(levels[-1].states, int(columns[k]), lf)
        keys, first, inverse = np.unique(_encode(child_states, radix), return_index=True, return_inverse=True)
        states = child_states[first]
        child = inverse.ravel()
        parent = np.repeat(np.arange(len(start) - 1), np.diff(start))
        order = np.argsort(parent * len(keys) + child, kind="stable")
        edges.append(_Edges(start=start, child=child[order], weight=weight[order]))
        levels.append(_Level(states, keys, _log_totals(states, columns[k + 1 :], lf)))
    return levels, edges


@dataclass
class _Tail:
    """The last two columns of every final-stage node, as one array of segments for a vector search.

    Segment i holds node i's completion log-weights f, ascending, shifted by ``i * span - floor`` so
    that the segments follow each other; ``cumulative`` is each segment's cumsum of exp(f - max f).
    """

    values: np.ndarray
    cumulative: np.ndarray
    start: np.ndarray  # (m + 1,)
    span: float
    floor: float

    def mass_below(self, node: np.ndarray, limit: np.ndarray) -> np.ndarray:
        """Per query: sum of exp(f - max f) over node's completions with f <= limit."""
        position = np.searchsorted(self.values, limit - self.floor + node * self.span, side="right")
        count = np.clip(position - self.start[node], 0, self.start[node + 1] - self.start[node])
        found = self.cumulative[np.maximum(self.start[node] + count - 1, 0)]
        return np.where(count > 0, found, 0.0)


def _tail(level: _Level, column: int, lf: np.ndarray) -> _Tail:
    """Fill the last two columns (sums ``column`` and the rest) of each node; set its bounds."""
    weights = []
    for state in level.states:
        x = _column_vectors(state, column)
        weights.append(np.sort(-(lf[x] + lf[state - x]).sum(axis=1)))
    level.high = np.array([f[-1] for f in weights])
    level.low = np.array([f[0] for f in weights])
    floor = float(level.low.min())
    span = float(level.high.max()) - floor + 1.0
    values = np.concatenate([f - floor + i * span for i, f in enumerate(weights)])
    cumulative = np.concatenate([np.cumsum(np.exp(f - f[-1])) for f in weights])
    start = np.concatenate([[0], np.cumsum([len(f) for f in weights])])
    return _Tail(values=values, cumulative=cumulative, start=start, span=span, floor=floor)


def _bounds(levels: list[_Level], edges: list[_Edges]) -> None:
    """Exact largest and smallest completion log-weight of every node, from the last stage up."""
    for k in range(len(edges) - 1, -1, -1):
        edge, below = edges[k], levels[k + 1]
        levels[k].high = np.maximum.reduceat(edge.weight + below.high[edge.child], edge.start[:-1])
        levels[k].low = np.minimum.reduceat(edge.weight + below.low[edge.child], edge.start[:-1])


_Paths = tuple[np.ndarray, np.ndarray, np.ndarray]  # (node index, past log-weight, count) per path


def _merge(node: np.ndarray, past: np.ndarray, count: np.ndarray) -> _Paths:
    """Paths that reach the same node with the same past log-weight (to 1e-9) become one, counted."""
    rounded = np.round(past * 1e9)
    order = np.lexsort((rounded, node))
    node, past, count, rounded = node[order], past[order], count[order], rounded[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (np.diff(node) != 0) | (np.diff(rounded) != 0)
    first = np.flatnonzero(new)
    return node[first], past[first], np.add.reduceat(count, first) if len(first) else count[first]


def _follow(edge: _Edges, node: np.ndarray, past: np.ndarray, count: np.ndarray) -> _Paths:
    """Every path one column further: (child, past + edge weight, count)."""
    begin, width = edge.start[node], edge.start[node + 1] - edge.start[node]
    offset = np.arange(int(width.sum())) - np.repeat(np.cumsum(width) - width, width)
    index = np.repeat(begin, width) + offset
    return edge.child[index], np.repeat(past, width) + edge.weight[index], np.repeat(count, width)


def _batches(node: np.ndarray, edge: _Edges, limit: int = 1 << 21) -> list[slice]:
    """Slices of the path arrays whose expansions hold about ``limit`` edges each (bounds memory)."""
    width = np.cumsum(edge.start[node + 1] - edge.start[node])
    cuts = np.searchsorted(width, np.arange(limit, int(width[-1]) if len(width) else 0, limit))
    bounds = np.unique(np.concatenate([[0], cuts, [len(node)]]))
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _settle(below: _Level, child: np.ndarray, weight: np.ndarray, times: np.ndarray, limit: float,
            constant: float) -> tuple[float, _Paths]:
    """Add the paths whose every completion is at or under ``limit``; keep those that straddle it."""
    inside = weight + below.high[child] <= limit
    mass = float(np.sum(times[inside] * np.exp(weight[inside] + below.log_total[child[inside]] + constant)))
    open_ = ~inside & (weight + below.low[child] <= limit)
    return mass, (child[open_], weight[open_], times[open_])


def _sweep(levels: list[_Level], edges: list[_Edges], tail: _Tail, limit: float, constant: float) -> float:
    """Total probability of the tables whose log-weight is <= ``limit``, walking down the network.

    A path (node, past log-weight, count) is settled as soon as the node's exact bounds allow:
    every completion at or under ``limit`` adds the node's whole mass, none adds nothing; the
    others go one column further (equal paths merged), and on reaching the last stage a vector
    search over the sorted tails settles every path at once.
    """
    node, past, count = np.zeros(1, dtype=np.int64), np.zeros(1), np.ones(1)
    total = 0.0
    for k, edge in enumerate(edges[:-1]):
        kept: list[_Paths] = []
        for part in _batches(node, edge):
            paths = _follow(edge, node[part], past[part], count[part])
            mass, straddling = _settle(levels[k + 1], *paths, limit, constant)
            total += mass
            kept.append(straddling)
            if sum(len(paths[0]) for paths in kept) > MAX_EDGES:
                raise InputError(
                    f"fisher_exact: more than {MAX_EDGES} partial tables straddle the observed probability, "
                    "too many to walk exactly; merge sparse categories, or use a Monte-Carlo test."
                )
        node, past, count = _merge(*(np.concatenate(arrays) for arrays in zip(*kept)))
        if not len(node):
            return total
    last = levels[-1]
    paths = [(node, past, count)]
    if edges:
        paths = (_follow(edges[-1], node[part], past[part], count[part]) for part in _batches(node, edges[-1]))
    for path in paths:
        mass, (child, weight, times) = _settle(last, *path, limit, constant)
        below = tail.mass_below(child, limit - weight)
        total += mass + float(np.sum(times * np.exp(weight + last.high[child] + constant) * below))
    return total


def _walk_transposed(counts: np.ndarray) -> bool:
    """Whether to walk the table transposed: the network is smaller with fewer, and equal, row sums.

    Fewer rows make shorter column vectors; between equally many, repeated (or close) row sums
    make more partial tables meet in the same node.
    """
    if counts.shape[0] != counts.shape[1]:
        return counts.shape[0] > counts.shape[1]
    rows, columns = counts.sum(axis=1), counts.sum(axis=0)
    row_key = (len(np.unique(rows)), int(np.ptp(rows)))
    column_key = (len(np.unique(columns)), int(np.ptp(columns)))
    return column_key < row_key


def fisher_exact(table: Any) -> float:
    """Two-sided p-value of Fisher's exact test for an r x c table of counts, as R's ``fisher.test``.

    p = sum of P(T) over the tables T with the observed row and column sums and P(T) <= P(observed)
    times 1 + 1e-7 (2 x 2) or exp(3.45254e-7) (larger tables, R's FEXACT), where
    P(T) = prod(row sums!) prod(column sums!) / (n! prod(T!)) is the multivariate hypergeometric
    probability. Empty rows and columns are dropped first; when one row or one column is left the
    p-value is 1. The tables are walked as a network over the columns (Mehta & Patel 1983): stage
    k holds the multisets of row sums still to fill after k columns, and whole sub-networks are
    settled at once from their exact largest and smallest probabilities.
    """
    counts = _count_table(table)
    counts = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]
    if min(counts.shape) < 2:
        return 1.0
    if _walk_transposed(counts):
        counts = counts.T
    rows, columns = counts.sum(axis=1), np.sort(counts.sum(axis=0))
    n = int(rows.sum())
    lf = gammaln(np.arange(n + 2) + 1.0)
    constant = float(lf[rows].sum() + lf[columns].sum() - lf[n])
    slack = math.log1p(R_RELATIVE_TOLERANCE) if counts.shape == (2, 2) else R_FEXACT_TOLERANCE
    limit = float(-lf[counts].sum()) + slack
    levels, edges = _network(rows, columns, lf)
    tail = _tail(levels[-1], int(columns[-2]), lf)
    _bounds(levels, edges)
    return min(1.0, _sweep(levels, edges, tail, limit, constant))


# ---------------------------------------------------------------- quartiles, Bonferroni, AUC


def _finite_vector(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-D float array with no NaN or infinity; InputError naming the first bad one."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected numbers, got {type(values).__name__}; pass a numeric column.") from None
    if array.ndim != 1 or array.size == 0:
        raise InputError(f"{name}: expected a non-empty 1-D sequence, got shape {array.shape}.")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise InputError(
            f"{name}: value {array[bad[0]]!r} at position {bad[0]} is not finite; drop missing cases first."
        )
    return array


def quartiles(values: Any) -> np.ndarray:
    """Quartile label (int 0..3) of each value: the bin of ``pandas.qcut(values, 4, duplicates="drop")``.

    Edges are ``numpy.quantile(values, [0, .25, .5, .75, 1])`` (linear interpolation); a value's
    label is the number of distinct inner edges strictly below it, so bins are closed on the right
    and the minimum is in bin 0. Ties always share a label; edges that ties make equal count once,
    so fewer than four labels can occur, and all-equal values are all 0 (where qcut gives NaN).
    """
    array = _finite_vector("quartiles", values)
    edges = np.unique(np.quantile(array, [0.0, 0.25, 0.5, 0.75, 1.0]))
    return np.searchsorted(edges[1:-1], array, side="left").astype(np.int64)


def bonferroni(pvalues: Any) -> np.ndarray:
    """min(1, p * m) for each p, where m is the number of p-values that are not NaN; NaN stays NaN."""
    array = np.asarray(pvalues, dtype=float).ravel()
    finite = ~np.isnan(array)
    if ((array[finite] < 0) | (array[finite] > 1)).any():
        bad = array[finite][(array[finite] < 0) | (array[finite] > 1)][0]
        raise InputError(f"bonferroni: p-value {bad!r} is outside [0, 1]; pass p-values, not statistics.")
    return np.minimum(1.0, array * int(finite.sum()))


def auc(scores: Any, labels: Any) -> float:
    """Mann-Whitney AUC: P(score of a positive > score of a negative), ties counted one half.

    Computed from average ranks: (rank sum of the positives - n1 (n1 + 1) / 2) / (n1 n0), where
    ``labels`` is truthy for the positives (the cluster) and falsy for the negatives (the rest).
    """
    values = _finite_vector("auc scores", scores)
    positive = np.asarray(labels).astype(bool).ravel()
    if positive.shape != values.shape:
        raise InputError(f"auc: {values.size} scores but {positive.size} labels; pass one label per score.")
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        raise InputError(f"auc: needs both classes, got {n1} positives and {n0} negatives; check the labels.")
    ranks = rankdata(values)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# ---------------------------------------------------------------- the paper's tests


def _by_patient(frame: pd.DataFrame, name: str, needed: Sequence[str]) -> pd.DataFrame:
    """``frame`` indexed by its ``patient`` (or data.csv's ``Patient``) column, ``needed`` columns kept."""
    keys = [column for column in ("patient", PATIENT) if column in frame.columns]
    if len(keys) != 1:
        raise InputError(
            f"{name}: needs exactly one patient key column, 'patient' or 'Patient', found {keys or 'none'} "
            f"(columns: {', '.join(map(str, frame.columns))})."
        )
    absent = [column for column in needed if column not in frame.columns]
    if absent:
        raise InputError(f"{name}: no column {absent[0]!r} (columns: {', '.join(map(str, frame.columns))}).")
    indexed = frame.set_index(frame[keys[0]].astype(str))[list(needed)]
    if indexed.index.duplicated().any():
        repeated = sorted(set(indexed.index[indexed.index.duplicated()]))
        raise InputError(f"{name}: patient {repeated[0]} appears more than once; keep one row a patient.")
    return indexed


def _numeric(frame: pd.DataFrame, name: str, codes: bool) -> pd.DataFrame:
    """Every column as numbers (NaN or NA where missing); with ``codes``, whole numbers only."""
    columns = {}
    for column in frame.columns:
        try:
            values = pd.to_numeric(frame[column])
        except (TypeError, ValueError):
            message = f"{name}: column {column!r} holds values that are not numbers; fix or drop them."
            raise InputError(message) from None
        present = values.dropna().to_numpy(dtype=float)
        if codes and not np.all(present == np.round(present)):
            bad = present[present != np.round(present)][0]
            raise InputError(f"{name}: column {column!r} holds {bad!r}, not an integer cluster code.")
        columns[column] = values
    return pd.DataFrame(columns, index=frame.index)


def _joined(
    features: pd.DataFrame, clinical: pd.DataFrame, names: Sequence[str], variables: Sequence[str]
) -> pd.DataFrame:
    """Features and clinical variables side by side, one row per patient present in both."""
    left = _numeric(_by_patient(features, "features", names), "features", codes=False)
    right = _numeric(_by_patient(clinical, "clinical", variables), "clinical", codes=True)
    return left.join(right, how="inner")


def _fisher_row(frame: pd.DataFrame, feature: str, variable: str) -> dict[str, Any]:
    """One Fisher test of feature quartile x variable over the complete cases of the pair."""
    cases = frame[[feature, variable]].dropna()
    if cases.empty:
        return {"feature": feature, "variable": variable, "n": 0, "p": math.nan, "table": pd.DataFrame()}
    quartile = pd.Series(quartiles(cases[feature].to_numpy(float)), index=cases.index, name="quartile")
    table = pd.crosstab(quartile, cases[variable].astype("int64"))
    p = fisher_exact(table.to_numpy())
    return {"feature": feature, "variable": variable, "n": len(cases), "p": p, "table": table}


def association_tests(
    features: pd.DataFrame,
    clinical: pd.DataFrame,
    variables: Sequence[str] = CLUSTER_COLUMNS,
    preregistered: Collection[tuple[str, str]] = PREREGISTERED,
    *,
    feature_names: Sequence[str] = FEATURES,
    alpha: float = ALPHA,
) -> list[dict[str, Any]]:
    """Fisher's exact test of quartile(feature) x variable for every feature and variable.

    ``features`` has a ``patient`` column and one column per feature; ``clinical`` a ``patient`` or
    ``Patient`` column and the variables (``read_clinical_csv``'s frame). Each test uses the
    patients in both frames with both values present (``n``), the feature's quartiles among them
    (``quartiles``) and the contingency table ``table`` (rows quartile, columns variable codes).
    ``p_adjusted`` is Bonferroni over the tests run (``n`` > 0), ``significant`` is
    ``p_adjusted < alpha``; ``paper_significant`` is ``p < PAPER_THRESHOLD`` (0.005) for the pairs
    in ``preregistered`` and False for the others, the paper's own criterion.
    """
    frame = _joined(features, clinical, feature_names, variables)
    results = [_fisher_row(frame, feature, variable) for feature in feature_names for variable in variables]
    adjusted = bonferroni([result["p"] for result in results])
    chosen = {(str(f), str(v)) for f, v in preregistered}
    for result, p_adjusted in zip(results, adjusted):
        pair = (result["feature"], result["variable"]) in chosen
        result.update(
            p_adjusted=float(p_adjusted),
            significant=bool(p_adjusted < alpha),
            preregistered=pair,
            paper_significant=bool(pair and result["p"] < PAPER_THRESHOLD),
        )
    return results


def feature_aucs(
    features: pd.DataFrame,
    clinical: pd.DataFrame,
    variables: Sequence[str] = CLUSTER_COLUMNS,
    *,
    feature_names: Sequence[str] = FEATURES,
) -> list[dict[str, Any]]:
    """Per feature, variable and cluster code k: the AUC of the feature for "k against the rest".

    Over the complete cases of each (feature, variable) pair, as in ``association_tests``; a row
    ``{feature, variable, cluster, n, n_cluster, auc}`` for every code k present, when at least
    two codes are present (with one, "the rest" is empty and no AUC exists).
    """
    frame = _joined(features, clinical, feature_names, variables)
    rows: list[dict[str, Any]] = []
    for feature in feature_names:
        for variable in variables:
            cases = frame[[feature, variable]].dropna()
            codes = np.sort(cases[variable].astype("int64").unique())
            if len(codes) < 2:
                continue
            for code in codes:
                member = (cases[variable] == code).to_numpy()
                rows.append({
                    "feature": feature, "variable": variable, "cluster": int(code), "n": len(cases),
                    "n_cluster": int(member.sum()), "auc": auc(cases[feature].to_numpy(float), member),
                })
    return rows
