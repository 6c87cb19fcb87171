"""The radiogenomics report a researcher reads: tables that render, each Bonferroni family said with
its own count, the features and the test defined, and AUCs from small clusters flagged."""

from __future__ import annotations

import math
import re

import pytest

from tasks.radiogenomics_report import AUC_MIN_PATIENTS, radiogenomics_report
from unet.radiogenomics.clinical import CLUSTER_COLUMNS

NAN = math.nan
PIPE = re.compile(r"(?<!\\)\|")  # a pipe that splits cells (an escaped one, \|, is text)
DELIMITER = re.compile(r"\|( :?-{3,}:? \|)+")


def family(masks: str, significant: int = 0, not_run: int = 0, variables=CLUSTER_COLUMNS) -> list[dict]:
    """One mask kind's 3 x len(variables) tests, Bonferroni over the ones run, as the stage writes them."""
    pairs = [(f, v) for f in ("bevr", "mf", "asd") for v in variables]
    m = len(pairs) - not_run
    tests = []
    for i, (feature, variable) in enumerate(pairs):
        run = i >= not_run
        p = (1e-4 if i - not_run < significant else 0.5) if run else NAN
        tests.append({"feature": feature, "variable": variable, "n": 15 if run else 0, "p": p,
                      "p_adjusted": min(1.0, p * m) if run else NAN, "significant": run and p * m < 0.05,
                      "preregistered": i == 0, "paper_significant": False, "masks": masks})
    return tests


def auc_row(n_cluster: int, n: int, value: float = 1.0, cluster: int = 1, masks: str = "manual") -> dict:
    return {"feature": "bevr", "variable": "RNASeqCluster", "cluster": cluster, "n": n, "n_cluster": n_cluster,
            "auc": value, "masks": masks}


def study(*families: list[dict], aucs=(), agreement=None, unlisted=()) -> dict:
    result = {"patients": 16, "patients_without_clinical_row": list(unlisted), "alpha": 0.05,
              "masks": [f[0]["masks"] for f in families], "tests": [t for f in families for t in f],
              "aucs": list(aucs)}
    if agreement:
        result["agreement"] = agreement
    return result


AGREEMENT = {f: {"n": 16, "pearson_r": 0.4, "mean_abs_difference": 0.05} for f in ("bevr", "mf", "asd")}


def table_blocks(markdown: str) -> list[tuple[int, int]]:
    """(first, past-last) line index of each run of lines that start with a pipe."""
    blocks, lines = [], markdown.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            blocks.append([i, i + 1])
        elif line.startswith("|"):
            blocks[-1][1] = i + 1
    return [tuple(b) for b in blocks]


def assert_valid_tables(markdown: str) -> None:
    """GitHub-flavoured tables: a blank line either side, a delimiter row, one cell count in every row,
    and no cell-splitting pipe anywhere outside a table (it would show as raw text)."""
    lines = markdown.split("\n")
    blocks = table_blocks(markdown)
    assert blocks, "the report has no table"
    for first, last in blocks:
        assert first > 0 and lines[first - 1] == "", f"no blank line before {lines[first]!r}"
        assert last == len(lines) or lines[last] == "", f"no blank line after {lines[last - 1]!r}"
        assert DELIMITER.fullmatch(lines[first + 1]), f"not a delimiter row: {lines[first + 1]!r}"
        counts = [len(PIPE.findall(line)) for line in lines[first:last]]
        assert len(set(counts)) == 1, f"cells per row {counts} in the table at line {first}"
    inside = {i for first, last in blocks for i in range(first, last)}
    stray = [line for i, line in enumerate(lines) if i not in inside and PIPE.search(line)]
    assert not stray, f"pipes outside a table: {stray}"


def rendered_tables(markdown: str) -> int:
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark").enable("table").render(markdown).count("<table>")


SMALL_AUCS = [auc_row(1, 15, 0.0, 1), auc_row(3, 15, 1.0, 2), auc_row(11, 15, 0.6, 3)]

CASES = {
    "manual masks only": study(family("manual")),
    "manual and automatic, with agreement": study(family("manual", 2), family("automatic", 1), agreement=AGREEMENT),
    "patients without a data.csv row": study(family("manual"), unlisted=["TCGA_CS_4941", "TCGA_DU_5849"]),
    "a test not run, AUCs from small clusters": study(family("manual", 1, not_run=2), aucs=SMALL_AUCS),
    "a pipe and a newline in a name": study(family("manual", variables=["RNA|Seq\nCluster"]),
                                            aucs=[{**auc_row(4, 15), "variable": "RNA|Seq\nCluster"}]),
}


@pytest.mark.parametrize("result", CASES.values(), ids=CASES.keys())
def test_every_table_is_valid_github_markdown(result):
    report = radiogenomics_report(result)
    assert_valid_tables(report)
    assert rendered_tables(report) == len(table_blocks(report))


@pytest.mark.parametrize(
    "families, title, lines",
    [
        ([family("manual")], "manual masks 0 of 21 significant",
         ["**manual masks**: 0 of 21 tests significant, Bonferroni over those 21 (p x 21 < 0.05)"]),
        ([family("manual", 2), family("automatic", 1)], "manual masks 2 of 21 significant, automatic masks 1 of 21",
         ["**manual masks**: 2 of 21 tests significant, Bonferroni over those 21 (p x 21 < 0.05)",
          "**automatic masks (out of fold)**: 1 of 21 tests significant, Bonferroni over those 21 (p x 21 < 0.05)"]),
        ([family("manual", 1, not_run=3), family("automatic")], "manual masks 1 of 18 significant",
         ["**manual masks**: 1 of 18 tests significant, Bonferroni over those 18 (p x 18 < 0.05); 3 not run",
          "**automatic masks (out of fold)**: 0 of 21"]),
        ([family("manual", variables=CLUSTER_COLUMNS[:2])], "manual masks 0 of 6 significant",
         ["Bonferroni over those 6 (p x 6 < 0.05)"]),
    ],
)
def test_each_mask_kind_is_its_own_bonferroni_family(families, title, lines):
    report = radiogenomics_report(study(*families))
    heading = report.split("\n")[0]
    assert heading.startswith("# radiogenomics: ") and title in heading, heading
    assert "of 42" not in report and "of 39" not in report  # no count across the families
    for line in lines:
        assert line in report


@pytest.mark.parametrize(
    "term",
    ["BEVR", "bounding ellipsoid volume ratio", "minimum-volume enclosing ellipsoid",
     "MF", "margin fluctuation", "moving average over 10% of the", "largest FLAIR",
     "ASD", "angular standard deviation", "10 equal angular bins",
     "Fisher's exact test", "quartiles", "complete cases", "Mazurowski et al. 2017", "Buda et al. 2019"],
)
def test_the_features_and_the_test_are_defined(term):
    report = radiogenomics_report(CASES["manual and automatic, with agreement"])
    assert "## Definitions" in report
    assert term in report.split("## Definitions", 1)[1]


@pytest.mark.parametrize(
    "n_cluster, n, flagged",
    [(1, 15, True), (3, 15, True), (AUC_MIN_PATIENTS - 1, 40, True), (AUC_MIN_PATIENTS, 15, False),
     (8, 15, False), (12, 15, True), (AUC_MIN_PATIENTS, 2 * AUC_MIN_PATIENTS, False)],
)
def test_an_auc_from_a_small_cluster_is_flagged_not_dropped(n_cluster, n, flagged):
    """A cluster, or the rest, under AUC_MIN_PATIENTS makes the AUC unreliable: shown, and marked."""
    report = radiogenomics_report(study(family("manual"), aucs=[auc_row(n_cluster, n, 0.0)]))
    section = report.split("## AUC of each cluster against the rest", 1)[1].split("## Definitions")[0]
    row = next(line for line in section.split("\n") if line.startswith(f"| BEVR | RNASeqCluster | manual | {n} |"))
    assert f"1: 0.00{'†' if flagged else ''} ({n_cluster})" in row
    assert (f"fewer than {AUC_MIN_PATIENTS} patients" in report) == flagged
    if flagged:
        assert "1 of 1 AUCs" in report and "unreliable" in report


def test_an_auc_table_is_left_out_when_the_stage_gave_none():
    assert "AUC" not in radiogenomics_report(study(family("manual"))).split("## Definitions")[0]
