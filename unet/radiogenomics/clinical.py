"""The genomic clusters of the Kaggle LGG ``data.csv``, read strictly.

The file has one row per patient keyed by ``Patient`` (``TCGA_CS_4941``: the image folder's name
without its date) and, among the clinical columns, the seven TCGA cluster assignments of
``CLUSTER_COLUMNS``, coded as small integers. The published file writes some of them as floats
(``4.0``) and leaves missing ones empty; other copies write ``NA`` or use ``;`` as the delimiter.
``read_clinical_csv`` accepts all of those and refuses anything it would have to guess at.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from unet.errors import InputError, MissingInputError

__all__ = ["CLUSTER_COLUMNS", "MISSING_TOKENS", "PATIENT", "read_clinical_csv", "sniff_delimiter"]

PATIENT = "Patient"
CLUSTER_COLUMNS = (
    "RNASeqCluster",
    "MethylationCluster",
    "miRNACluster",
    "CNCluster",
    "RPPACluster",
    "OncosignCluster",
    "COCCluster",
)
MISSING_TOKENS = frozenset({"", "NA", "N/A", "NaN", "nan"})
_INTEGER = re.compile(r"[+-]?\d+(\.0*)?")  # 4, -1, 4.0 and 4. are integers; 4.5, 1e0, four are not


def sniff_delimiter(text: str, source: str | Path = "<text>") -> str:
    """``,`` or ``;``: whichever occurs more often in the header (first non-blank) line; ``,`` on a tie."""
    header = next((line for line in text.splitlines() if line.strip()), None)
    if header is None:
        raise InputError(f"{source}: the file is empty; pass the Kaggle data.csv (a header line, one row a patient).")
    return ";" if header.count(";") > header.count(",") else ","


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, a BOM allowed); MissingInputError or InputError naming the file."""
    if not path.is_file():
        raise MissingInputError(
            f"{path}: no such file; download the dataset first (kaggle_3m/data.csv comes with the images)."
        )
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc}); pass the Kaggle data.csv.") from None


def _row_name(frame: pd.DataFrame, row: int) -> str:
    """``row 3 (patient TCGA_CS_4943)``: the 1-based data row, with its patient when it has one."""
    patient = str(frame[PATIENT].iloc[row]).strip() if PATIENT in frame.columns else ""
    return f"row {row + 1}" + (f" (patient {patient})" if patient else "")


def _integer_column(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """One column's text as nullable Int64: ``MISSING_TOKENS`` become NA, anything else must be an integer."""
    values: list[int | None] = []
    for row, raw in enumerate(frame[column]):
        token = str(raw).strip()
        if token in MISSING_TOKENS:
            values.append(None)
        elif _INTEGER.fullmatch(token):
            values.append(int(token.split(".")[0]))
        else:
            raise InputError(
                f"{path}: column {column!r} holds {token!r} at {_row_name(frame, row)}, which is not an integer "
                f"code; fix that cell, or write NA (or leave it empty) where the value is missing."
            )
    return pd.Series(values, dtype="Int64", name=column)


def _patients(frame: pd.DataFrame, path: Path) -> pd.Series:
    """The ``Patient`` column, stripped; InputError on an empty or repeated key."""
    patients = frame[PATIENT].astype(str).str.strip()
    empty = [row for row, name in enumerate(patients) if name in MISSING_TOKENS]
    if empty:
        raise InputError(
            f"{path}: column {PATIENT!r} is empty at {_row_name(frame, empty[0])}; every row needs its patient "
            "id, e.g. TCGA_CS_4941."
        )
    repeated = sorted(set(patients[patients.duplicated()]))
    if repeated:
        raise InputError(
            f"{path}: column {PATIENT!r} lists {', '.join(repeated[:5])} more than once; keep one row each."
        )
    return patients.reset_index(drop=True)


def read_clinical_csv(path: str | Path, columns: Sequence[str] = CLUSTER_COLUMNS) -> pd.DataFrame:
    """``data.csv`` as a frame: ``Patient`` (str) and each of ``columns`` as nullable Int64 codes.

    The delimiter is sniffed from the header (``sniff_delimiter``); cells in ``MISSING_TOKENS``
    (empty, ``NA``, ``NaN``, ...) are missing; other cells must be integers, written ``4`` or
    ``4.0``. Rows keep the file's order. InputError names the file, the column and, for a bad
    cell, its value and row, when ``Patient`` or a requested column is absent or a cell is bad.
    """
    path = Path(path)
    text = _read_text(path)
    delimiter = sniff_delimiter(text, path)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: does not parse as {delimiter!r}-delimited CSV ({exc}).") from None
    frame.columns = [str(name).strip() for name in frame.columns]
    missing = [name for name in (PATIENT, *columns) if name not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: no column {missing[0]!r} (columns: {', '.join(frame.columns)}); pass the Kaggle data.csv, "
            "keyed by 'Patient', or request only the columns it has."
        )
    result = pd.DataFrame({PATIENT: _patients(frame, path)})
    for column in columns:
        result[column] = _integer_column(frame, column, path)
    return result
