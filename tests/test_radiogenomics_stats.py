"""Fisher's exact test, quartiles, Bonferroni, AUC and the paper's tests, against known answers and brute force."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from scipy.special import gammaln

from unet.errors import InputError, MissingInputError
from unet.radiogenomics import stats
from unet.radiogenomics.clinical import CLUSTER_COLUMNS, read_clinical_csv, sniff_delimiter
from unet.radiogenomics.stats import (
    PAPER_THRESHOLD,
    PREREGISTERED,
    association_tests,
    auc,
    bonferroni,
    feature_aucs,
    fisher_exact,
    quartiles,
)

NAN = math.nan


def r_matrix(values: list[int], rows: int, columns: int) -> np.ndarray:
    """R's ``matrix(values, rows, columns)``: filled column by column."""
    return np.array(values).reshape(columns, rows).T


def tables_with_margins(rows: tuple[int, ...], columns: tuple[int, ...]):
    """Every table of non-negative integers with these row and column sums (brute force)."""
    if len(columns) == 1:
        yield np.array(rows)[:, None]
        return
    for first in itertools.product(*(range(r + 1) for r in rows)):
        if sum(first) == columns[0]:
            rest = tuple(r - x for r, x in zip(rows, first))
            for tail in tables_with_margins(rest, columns[1:]):
                yield np.column_stack([first, tail])


def brute_force_p(table) -> float:
    """Sum of P(T) over all tables T with P(T) <= P(table) (1 + 1e-7), enumerated one by one.

    (R's FEXACT allows exp(3.45e-7) rather than 1 + 1e-7 above 2 x 2; no table here falls between.)
    """
    table = np.asarray(table)
    rows, columns, n = table.sum(axis=1), table.sum(axis=0), table.sum()
    constant = gammaln(rows + 1).sum() + gammaln(columns + 1).sum() - gammaln(n + 1)
    probability = [math.exp(constant - gammaln(t + 1).sum()) for t in tables_with_margins(tuple(rows), tuple(columns))]
    observed = math.exp(constant - gammaln(table + 1).sum())
    return sum(p for p in probability if p <= observed * (1 + 1e-7))


# ---------------------------------------------------------------- Fisher's exact test


def test_fisher_r_job_satisfaction_example():
    """R's ?fisher.test: Job <- matrix(c(1,2,1,0, 3,3,6,1, 10,10,14,9, 6,7,12,11), 4, 4) gives p = 0.7827."""
    job = r_matrix([1, 2, 1, 0, 3, 3, 6, 1, 10, 10, 14, 9, 6, 7, 12, 11], 4, 4)
    assert fisher_exact(job) == pytest.approx(0.7827, abs=5e-5)


@pytest.mark.parametrize(
    "table",
    [[[3, 1], [1, 3]], [[8, 2], [1, 5]], [[0, 5], [5, 0]], [[10, 0], [0, 10]], [[12, 5], [9, 7]], [[1, 9], [11, 3]],
     [[2, 7], [8, 2]], [[0, 1], [1, 0]], [[20, 15], [14, 21]], [[1, 1], [1, 1]]],
)
def test_fisher_2x2_matches_scipy(table):
    assert fisher_exact(table) == pytest.approx(scipy.stats.fisher_exact(table).pvalue, rel=1e-9)


@pytest.mark.parametrize(
    "table",
    [
        [[1, 2, 3], [4, 0, 2]],
        [[3, 0, 4], [1, 5, 2]],
        [[6, 1, 0], [0, 2, 7]],
        [[2, 2, 2], [2, 2, 2]],  # the most probable table: p = 1
        [[3, 1, 2], [0, 4, 1], [2, 2, 5]],
        [[2, 0, 1, 3], [1, 3, 0, 1], [0, 1, 4, 0]],
        [[2, 1, 0, 1], [0, 2, 1, 1], [1, 0, 2, 0], [1, 1, 0, 3]],
    ],
)
def test_fisher_r_by_c_matches_brute_force_enumeration(table):
    assert fisher_exact(table) == pytest.approx(brute_force_p(table), rel=1e-9)


@pytest.mark.parametrize(
    "table, expected",
    [
        ([[1, 0, 1], [0, 1, 1]], 1.0),  # the most probable table (1/3)
        ([[0, 0, 2], [1, 1, 0]], 1 / 3),  # 1/6: itself and its mirror [[1, 1, 0], [0, 0, 2]]
    ],
)
def test_fisher_handworked_2x3(table, expected):
    """Rows (2, 2), columns (1, 1, 2): P(T) = 2! 2! 1! 1! 2! / (4! prod T!) = 1 / (3 prod T!), and the
    four tables are [[0,0,2],[1,1,0]] and [[1,1,0],[0,0,2]] (1/6 each), [[1,0,1],[0,1,1]] and
    [[0,1,1],[1,0,1]] (1/3 each)."""
    assert fisher_exact(table) == pytest.approx(expected)


@pytest.mark.parametrize(
    "table, same_as",
    [
        ([[0, 0], [3, 4]], None),  # one row left
        ([[5, 0, 3]], None),  # one row
        ([[0, 0], [0, 0]], None),  # nothing at all
        ([[4], [2], [7]], None),  # one column
        ([[0, 0, 0], [1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5, 6]]),  # an empty row is dropped
        ([[1, 0, 2], [3, 0, 4]], [[1, 2], [3, 4]]),  # an empty column is dropped
    ],
)
def test_fisher_degenerate_tables(table, same_as):
    expected = 1.0 if same_as is None else fisher_exact(same_as)
    assert fisher_exact(table) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fisher_does_not_depend_on_the_order_or_orientation(seed):
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 6, size=(3, 4))
    p = fisher_exact(table)
    shuffled = table[rng.permutation(3)][:, rng.permutation(4)]
    assert [fisher_exact(table.T), fisher_exact(shuffled)] == pytest.approx([p, p], rel=1e-9)


@pytest.mark.parametrize(
    "table, expected",
    [
        # quartiles x clusters, n = 110; p cross-checked by Monte Carlo (1e6 tables): 0.0656 +- 0.0003
        ([[12, 8, 4, 4], [6, 10, 6, 5], [5, 6, 10, 6], [3, 5, 8, 12]], 0.0658),
        ([[15, 5, 4, 4], [3, 14, 6, 4], [5, 4, 15, 3], [2, 4, 5, 17]], 1.554e-7),  # strong association
        ([[10, 10, 8], [9, 9, 9], [12, 8, 7], [5, 10, 13]], 0.5002),  # 4 x 3
    ],
)
def test_fisher_quartiles_by_clusters_n110_is_fast(table, expected):
    """Under 2 s of CPU (CPU time, so that other jobs on a shared machine do not count)."""
    start = time.process_time()
    p = fisher_exact(table)
    assert time.process_time() - start < 2.0
    assert p == pytest.approx(expected, rel=1e-3)


def test_fisher_refuses_a_network_too_large_to_walk(monkeypatch):
    monkeypatch.setattr(stats, "MAX_EDGES", 50)
    with pytest.raises(InputError, match="too many"):
        fisher_exact(r_matrix([1, 2, 1, 0, 3, 3, 6, 1, 10, 10, 14, 9, 6, 7, 12, 11], 4, 4))


@pytest.mark.parametrize(
    "table",
    [[1, 2, 3], [[1, -1], [2, 3]], [[1.5, 2], [3, 4]], [[1, math.nan], [2, 3]], [["a", "b"], ["c", "d"]],
     [[True, False], [False, True]]],
)
def test_fisher_refuses_what_is_not_a_table_of_counts(table):
    with pytest.raises(InputError):
        fisher_exact(table)


# ---------------------------------------------------------------- quartiles, Bonferroni, AUC


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 1, 1, 2, 2, 3, 3]),
        ([3.0, 1.0, 2.0, 4.0], [2, 0, 1, 3]),
        ([1, 1, 1, 2, 3], [0, 0, 0, 0, 1]),  # ties share a label; equal edges count once
        ([5, 5, 5, 5], [0, 0, 0, 0]),  # all equal (qcut gives NaN)
        ([7.5], [0]),
        ([1, 2], [0, 3]),
    ],
)
def test_quartiles_known_answers(values, expected):
    assert quartiles(values).tolist() == expected


@pytest.mark.parametrize("seed, n, rounding", [(0, 110, None), (1, 57, 1), (2, 20, 0), (3, 9, None)])
def test_quartiles_agree_with_pandas_qcut(seed, n, rounding):
    values = np.random.default_rng(seed).normal(size=n) * 3
    values = values if rounding is None else np.round(values, rounding)  # rounding makes ties
    expected = pd.qcut(values, 4, labels=False, duplicates="drop")
    assert quartiles(values).tolist() == expected.tolist()


@pytest.mark.parametrize("values", [[1.0, NAN, 2.0], [], [[1, 2], [3, 4]], ["a", "b"]])
def test_quartiles_refuse_missing_or_odd_values(values):
    with pytest.raises(InputError):
        quartiles(values)


@pytest.mark.parametrize(
    "pvalues, expected",
    [
        ([0.01, 0.2, 0.5], [0.03, 0.6, 1.0]),
        ([0.01, NAN, 0.02], [0.02, NAN, 0.04]),  # m counts the tests run
        ([0.004], [0.004]),
        ([], []),
    ],
)
def test_bonferroni(pvalues, expected):
    np.testing.assert_allclose(bonferroni(pvalues), expected)


def test_bonferroni_refuses_a_value_that_is_no_p_value():
    with pytest.raises(InputError):
        bonferroni([0.5, 1.5])


@pytest.mark.parametrize(
    "scores, labels, expected",
    [
        ([1, 2, 3, 4], [0, 0, 1, 1], 1.0),
        ([1, 2, 3, 4], [1, 1, 0, 0], 0.0),
        ([5, 5, 5, 5], [0, 1, 0, 1], 0.5),  # all tied: every pair counts one half
        ([1, 2, 2, 3], [0, 1, 0, 1], 0.875),  # pairs: 2>1, 2=2 (half), 3>1, 3>2 -> 3.5 / 4
        ([0.3, 0.1, 0.2], [True, False, False], 1.0),
        ([1, 3, 2, 4, 0], [0, 1, 0, 0, 1], 1 / 3),  # positives 3, 0 against 1, 2, 4: 3>1, 3>2 of 6 pairs
    ],
)
def test_auc_hand_cases(scores, labels, expected):
    assert auc(scores, labels) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auc_matches_a_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    scores, labels = rng.integers(0, 6, size=40).astype(float), rng.random(40) < 0.3
    positive, negative = scores[labels], scores[~labels]
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in positive for b in negative]
    assert auc(scores, labels) == pytest.approx(sum(pairs) / len(pairs))


@pytest.mark.parametrize(
    "scores, labels", [([1, 2, 3], [1, 1, 1]), ([1, 2, 3], [0, 0, 0]), ([1, 2], [0, 1, 1]), ([1, NAN], [0, 1])]
)
def test_auc_refuses_one_class_or_bad_scores(scores, labels):
    with pytest.raises(InputError):
        auc(scores, labels)


# ---------------------------------------------------------------- the paper's tests


def cohort(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features where BEVR follows RNASeqCluster, with a few missing values on either side."""
    rng = np.random.default_rng(seed)
    patients = [f"TCGA_XX_{i:04d}" for i in range(n)]
    rnaseq = rng.integers(1, 4, size=n)
    features = pd.DataFrame({
        "patient": patients,
        "bevr": 0.3 + 0.1 * rnaseq + rng.normal(scale=0.01, size=n),
        "mf": rng.random(n),
        "asd": rng.random(n),
    })
    features.loc[3, "mf"] = NAN  # an empty prediction
    clinical = pd.DataFrame({"Patient": patients, **{name: rng.integers(1, 4, size=n) for name in CLUSTER_COLUMNS}})
    clinical["RNASeqCluster"] = rnaseq
    clinical = clinical.astype({name: "Int64" for name in CLUSTER_COLUMNS})
    clinical.loc[[0, 1], "MethylationCluster"] = pd.NA
    return features, clinical


def test_association_tests_run_every_pair_on_complete_cases():
    features, clinical = cohort()
    results = association_tests(features, clinical)
    assert len(results) == 3 * 7
    by_pair = {(r["feature"], r["variable"]): r for r in results}
    assert by_pair["bevr", "MethylationCluster"]["n"] == 38
    assert by_pair["mf", "MethylationCluster"]["n"] == 37
    assert by_pair["mf", "RNASeqCluster"]["n"] == 39
    strong = by_pair["bevr", "RNASeqCluster"]
    assert strong["table"].to_numpy().sum() == 40 and strong["table"].shape == (4, 3)
    assert strong["p"] < 1e-6 and strong["significant"] and strong["paper_significant"]
    for result in results:
        assert result["p_adjusted"] == pytest.approx(min(1.0, 21 * result["p"]))
        assert result["preregistered"] == ((result["feature"], result["variable"]) in PREREGISTERED)
        assert result["paper_significant"] == (result["preregistered"] and result["p"] < PAPER_THRESHOLD)


def test_association_test_p_is_fisher_on_the_quartile_table():
    features, clinical = cohort()
    result = association_tests(features, clinical, ["MethylationCluster"], feature_names=["asd"])[0]
    cases = features.set_index("patient").join(clinical.set_index("Patient"))
    cases = cases.dropna(subset=["asd", "MethylationCluster"])
    table = pd.crosstab(quartiles(cases["asd"]), cases["MethylationCluster"].astype(int).to_numpy())
    assert result["p"] == pytest.approx(fisher_exact(table.to_numpy()))
    np.testing.assert_array_equal(result["table"].to_numpy(), table.to_numpy())
    assert result["p_adjusted"] == pytest.approx(result["p"])  # one test run


def test_preregistered_lists_the_nine_runnable_pairs():
    assert len(PREREGISTERED) == 9 and len(set(PREREGISTERED)) == 9
    assert PAPER_THRESHOLD == pytest.approx(0.005)
    assert all(variable in CLUSTER_COLUMNS and feature in ("bevr", "mf", "asd") for feature, variable in PREREGISTERED)


def test_association_tests_keep_patients_in_both_frames(tmp_path):
    features, _ = cohort(12)
    path = tmp_path / "data.csv"
    rows = "".join(f"{patient};{1 + i % 2}\n" for i, patient in enumerate(features["patient"][:8]))
    path.write_text("Patient;RNASeqCluster\n" + rows)
    results = association_tests(features, read_clinical_csv(path, ["RNASeqCluster"]), ["RNASeqCluster"])
    assert [r["n"] for r in results] == [8, 7, 8]  # mf is missing for patient 3


@pytest.mark.parametrize(
    "change",
    [
        lambda f, c: (f.drop(columns="bevr"), c),
        lambda f, c: (f, c.drop(columns="COCCluster")),
        lambda f, c: (f.drop(columns="patient"), c),
        lambda f, c: (pd.concat([f, f.iloc[:1]]), c),
        lambda f, c: (f.assign(Patient=f["patient"]), c),
        lambda f, c: (f.assign(mf="high"), c),
        lambda f, c: (f, c.astype({"CNCluster": float}).assign(CNCluster=1.5)),
    ],
)
def test_association_tests_refuse_frames_they_cannot_join(change):
    features, clinical = change(*cohort(12))
    with pytest.raises(InputError):
        association_tests(features, clinical)


def test_feature_aucs_for_each_cluster_against_the_rest():
    features, clinical = cohort()
    rows = feature_aucs(features, clinical, ["RNASeqCluster"], feature_names=["bevr"])
    assert [row["cluster"] for row in rows] == [1, 2, 3]
    assert sum(row["n_cluster"] for row in rows) == 40
    aucs = {row["cluster"]: row["auc"] for row in rows}
    assert aucs[1] == pytest.approx(0.0) and aucs[3] == pytest.approx(1.0)  # BEVR rises with the cluster
    cases = features.set_index("patient").join(clinical.set_index("Patient"))
    assert aucs[2] == pytest.approx(auc(cases["bevr"], cases["RNASeqCluster"] == 2))


def test_feature_aucs_skip_a_variable_with_one_cluster():
    features, clinical = cohort(10)
    clinical["CNCluster"] = 2
    assert feature_aucs(features, clinical, ["CNCluster"]) == []


# ---------------------------------------------------------------- data.csv

KAGGLE_LIKE = (  # the published file's layout: floats where a column has gaps, empty cells for missing
    "Patient,RNASeqCluster,MethylationCluster,miRNACluster,CNCluster,RPPACluster,OncosignCluster,COCCluster,"
    "histological_type,death01\n"
    "TCGA_CS_4941,2.0,4.0,2,1.0,,1.0,2,1.0,1.0\n"
    "TCGA_CS_4942,1.0,5.0,2,1.0,1.0,2.0,1,1.0,1.0\n"
    "TCGA_CS_4943,,NA,2,1.0,2.0,2.0,1,1.0,\n"
)


@pytest.mark.parametrize(
    "text, columns, expected",
    [
        ("Patient,RNASeqCluster\nTCGA_CS_4941,1\nTCGA_CS_4942,NA\n", ["RNASeqCluster"], {"RNASeqCluster": [1, None]}),
        ("Patient;RNASeqCluster;CNCluster\nTCGA_CS_4941;3;2\nTCGA_CS_4942;;1\n", ["RNASeqCluster", "CNCluster"],
         {"RNASeqCluster": [3, None], "CNCluster": [2, 1]}),
        ("\ufeffPatient , CNCluster\n TCGA_CS_4941 , 4.0 \nTCGA_CS_4942,nan\n", ["CNCluster"],
         {"CNCluster": [4, None]}),
        (KAGGLE_LIKE, ["RNASeqCluster", "MethylationCluster", "RPPACluster", "COCCluster"],
         {"RNASeqCluster": [2, 1, None], "MethylationCluster": [4, 5, None], "RPPACluster": [None, 1, 2],
          "COCCluster": [2, 1, 1]}),
    ],
    ids=["comma-NA", "semicolon-empty", "bom-spaces-float", "kaggle-like"],
)
def test_read_clinical_csv(tmp_path, text, columns, expected):
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    frame = read_clinical_csv(path, columns)
    assert list(frame.columns) == ["Patient", *columns]
    assert frame["Patient"].tolist()[:2] == ["TCGA_CS_4941", "TCGA_CS_4942"]
    for column, values in expected.items():
        assert str(frame[column].dtype) == "Int64"
        assert [None if pd.isna(v) else int(v) for v in frame[column]] == values


def test_read_clinical_csv_reads_all_seven_clusters_by_default(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(KAGGLE_LIKE)
    assert list(read_clinical_csv(path).columns) == ["Patient", *CLUSTER_COLUMNS]


@pytest.mark.parametrize(
    "text, columns, words",
    [
        ("patient_id,RNASeqCluster\nTCGA_CS_4941,1\n", ["RNASeqCluster"], ["'Patient'"]),
        ("Patient,RNASeqCluster\nTCGA_CS_4941,1\n", ["RNASeqCluster", "CNCluster"], ["'CNCluster'"]),
        ("Patient,CNCluster\nTCGA_CS_4941,1\nTCGA_CS_4942,4.5\n", ["CNCluster"],
         ["'CNCluster'", "'4.5'", "row 2", "TCGA_CS_4942"]),
        ("Patient;CNCluster\nTCGA_CS_4941;two\n", ["CNCluster"], ["'two'", "row 1", "TCGA_CS_4941"]),
        ("Patient,CNCluster\n,1\n", ["CNCluster"], ["'Patient'", "row 1"]),
        ("Patient,CNCluster\nTCGA_CS_4941,1\nTCGA_CS_4941,2\n", ["CNCluster"], ["TCGA_CS_4941", "more than once"]),
        ("", ["CNCluster"], ["empty"]),
    ],
    ids=["no-patient", "no-column", "fraction", "word", "empty-patient", "repeated-patient", "empty-file"],
)
def test_read_clinical_csv_names_the_file_column_value_and_row(tmp_path, text, columns, words):
    path = tmp_path / "data.csv"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        read_clinical_csv(path, columns)
    assert all(word in str(caught.value) for word in [str(path), *words])


def test_read_clinical_csv_of_a_missing_file(tmp_path):
    with pytest.raises(MissingInputError, match="data.csv"):
        read_clinical_csv(tmp_path / "data.csv")


@pytest.mark.parametrize(
    "text, delimiter",
    [("Patient,A,B\n", ","), ("Patient;A;B\n", ";"), ("\n\nPatient;A\n", ";"), ("Patient\n", ","),
     ("Patient;A,B;C\n", ";")],
)
def test_sniff_delimiter(text, delimiter):
    assert sniff_delimiter(text) == delimiter
