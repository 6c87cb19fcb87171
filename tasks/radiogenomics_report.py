"""The radiogenomics stage's report for a reader: each mask kind's Bonferroni family, the tests, the AUCs
(those of small clusters flagged), automatic against manual features, and what the terms mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from tasks.reports import table

AUC_MIN_PATIENTS = 5  # an AUC from a cluster (or a rest) with fewer patients is shown but flagged unreliable
_MASK_KINDS = {"manual": "manual masks", "automatic": "automatic masks (out of fold)"}
_RADIOGENOMICS_TERMS = """## Definitions

- **BEVR**, bounding ellipsoid volume ratio: the volume of the largest 3-D tumour component over the volume of
  its minimum-volume enclosing ellipsoid (1 for an ellipsoid; lower for an irregular tumour).
- **MF**, margin fluctuation: on the slice with the largest FLAIR tumour area, the distances from the tumour's
  centroid to its boundary, normalised to mean 1; MF is the standard deviation of those distances minus their
  moving average over 10% of the perimeter (high for a ragged margin).
- **ASD**, angular standard deviation: the same distances in 10 equal angular bins around the centroid; ASD is
  the mean over the bins of the standard deviation within each bin.
- **Test**: Fisher's exact test of the feature's quartiles against the codes of one genomic cluster variable,
  on complete cases (the patients with both the feature and the cluster; *n*). **p (Bonferroni)** is p times
  the number of tests run with the same kind of masks, at most 1. *Pre-registered*: a pair the paper named
  in advance.
- **AUC**: the area under the ROC curve of the feature for one cluster against the rest of those patients
  (0.5: no separation).
- **Masks**: *manual*, the data set's ground truth; *automatic*, this pipeline's segmentation of each patient
  by the cross-validation fold that did not train on it.

After Mazurowski et al. 2017 (J Neurooncol, the features and the test) and Buda et al. 2019 (Comput Biol Med,
the same study on automatic masks).
"""


def radiogenomics_report(result: Mapping) -> str:
    """The study for a reader: each mask kind's Bonferroni family, the tests most significant first,
    the AUCs (small clusters flagged), automatic against manual features, and what the terms mean."""
    families = _bonferroni_families(result["tests"])
    title = ", ".join(f"{f.kind} masks {f.significant} of {f.tested} significant" for f in families)
    lines = [f"# radiogenomics: {title} ({result['patients']} patients)", "",
             "Bonferroni is applied within each kind of masks, over the tests run with it:", "",
             *_family_lines(families, result.get("alpha"))]
    if unlisted := result.get("patients_without_clinical_row"):
        lines += ["", f"**{len(unlisted)} patient(s) have no row in data.csv and are in no test:** "
                      f"{', '.join(unlisted)}."]
    lines += ["", "## Tests, most significant first", "", _tests_table(result["tests"])]
    if result.get("aucs"):
        lines += ["", "## AUC of each cluster against the rest", "", *_auc_section(result["aucs"])]
    if agreement := result.get("agreement"):
        lines += ["", "## Automatic against manual masks", "",
                  table(["feature", "n", "Pearson r (automatic vs manual)", "mean absolute difference"],
                        [(f.upper(), a["n"], float(a["pearson_r"]), float(a["mean_abs_difference"]))
                         for f, a in agreement.items()])]
    return "\n".join(lines) + "\n\n" + _RADIOGENOMICS_TERMS


class _Family(NamedTuple):
    """One Bonferroni family: a mask kind's tests, ``tested`` of them run (the m p-values were multiplied by)."""

    kind: str
    significant: int
    tested: int
    listed: int


def _bonferroni_families(tests: Sequence[Mapping]) -> list[_Family]:
    """Per mask kind, in order. The stage corrects each kind's tests apart (one ``association_tests``
    call each), over those run: the ones with a p-value (n > 0), as ``stats.bonferroni`` counts."""
    families = []
    for kind in dict.fromkeys(t["masks"] for t in tests):
        own = [t for t in tests if t["masks"] == kind]
        families.append(_Family(kind, sum(bool(t["significant"]) for t in own), sum(t["p"] == t["p"] for t in own),
                                len(own)))
    return families


def _family_lines(families: Sequence[_Family], alpha: float | None) -> list[str]:
    """One bullet a family: what was corrected for, with the family's own count."""
    lines = []
    for f in families:
        rule = f" (p x {f.tested} < {alpha:g})" if alpha is not None else ""
        idle = f"; {f.listed - f.tested} not run (no patient with both values)" if f.listed > f.tested else ""
        lines.append(f"- **{_MASK_KINDS.get(f.kind, f'{f.kind} masks')}**: {f.significant} of {f.tested} tests "
                     f"significant, Bonferroni over those {f.tested}{rule}{idle}.")
    return lines


def _tests_table(tests: Sequence[Mapping]) -> str:
    ordered = sorted(tests, key=lambda t: (t["p"] != t["p"], t["p"]))
    rows = [(t["feature"].upper(), _one_line(t["variable"]), _one_line(t["masks"]), t["n"], float(t["p"]),
             float(t["p_adjusted"]),
             ("yes" if t["significant"] else "no") + (" (pre-registered)" if t["preregistered"] else ""))
            for t in ordered]
    return table(["feature", "cluster", "masks", "n", "p", "p (Bonferroni)", "significant"], rows)


def _auc_section(aucs: Sequence[Mapping]) -> list[str]:
    """One row a (feature, cluster variable, masks): each cluster k's AUC and size, † where k or the rest
    has fewer than ``AUC_MIN_PATIENTS`` patients; a footnote says how many and why."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in aucs:
        groups.setdefault((row["feature"], row["variable"], row["masks"], row["n"]), []).append(row)
    rows = [(feature.upper(), _one_line(variable), _one_line(masks), n,
             "; ".join(f"{r['cluster']}: {float(r['auc']):.2f}{'†' if _small(r) else ''} ({r['n_cluster']})"
                       for r in members))
            for (feature, variable, masks, n), members in groups.items()]
    lines = [table(["feature", "cluster", "masks", "n", "cluster k: AUC (patients in k)"], rows)]
    if small := sum(map(_small, aucs)):
        lines += ["", f"† {small} of {len(aucs)} AUCs come from a cluster, or a rest, of fewer than "
                      f"{AUC_MIN_PATIENTS} patients: unreliable (with so few, an AUC of 0 or 1 is easily chance). "
                      "They are marked here, not dropped: the stage's JSON keeps every number."]
    return lines


def _small(auc: Mapping) -> bool:
    """Whether an AUC row's cluster, or the rest it is set against, has under ``AUC_MIN_PATIENTS`` patients."""
    return min(auc["n_cluster"], auc["n"] - auc["n_cluster"]) < AUC_MIN_PATIENTS


def _one_line(value: object) -> str:
    """A name as one table cell's text: line breaks (which would end the row) become spaces."""
    return " ".join(str(value).split())
