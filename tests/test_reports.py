"""Stage reports show their pictures: a PNG embedded as a data URI, or named with the reason why not."""

from __future__ import annotations

import base64
import re

import numpy as np

from tasks.reports import PNG, figure, figures


def png(path, size: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(size, size), dpi=40)
    axis.imshow(np.random.default_rng(0).random((64, 64)))
    fig.savefig(path)
    plt.close(fig)
    return path


def embedded(markdown: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r"\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)]


def test_a_png_is_embedded_over_its_caption_and_path(tmp_path):
    path = png(tmp_path / "curve.png", 2)
    text = figure(path, "Loss [by] epoch")
    assert embedded(text) == [path.read_bytes()]
    assert text.startswith("\n![Loss  by  epoch](data:image/png;base64,")  # brackets would end the alt text
    assert f"*Loss [by] epoch* (`{path}`)" in text


def test_a_missing_foreign_or_large_picture_is_named_with_why(tmp_path):
    assert figure(tmp_path / "none.png", "Curve") == f"\n*Curve*: `{tmp_path / 'none.png'}` was not written.\n"
    (tmp_path / "fake.png").write_text("<svg/>")
    assert "is not a PNG" in figure(tmp_path / "fake.png", "Curve")
    big = png(tmp_path / "big.png", 8)
    text = figure(big, "Curve", limit=100)
    assert embedded(text) == [] and "over the 0.0 MB a report embeds" in text and str(big) in text


def test_figures_share_one_budget_in_order(tmp_path):
    paths = [png(tmp_path / f"{k}.png", 2) for k in range(3)]
    size = paths[0].stat().st_size
    assert all(p.read_bytes().startswith(PNG) for p in paths)
    text = figures([(p, f"picture {k}") for k, p in enumerate(paths)], budget=2 * size + size // 2)
    assert len(embedded(text)) == 2 and "picture 2*: `" in text


def test_a_table_keeps_its_columns_whatever_its_text():
    from tasks.reports import table

    text = table(["name", "mean |difference|"], [("a|b", 0.5), ("two\nlines", "x")])
    lines = text.splitlines()
    columns = [len(re.findall(r"(?<!\\)\|", line)) for line in lines]
    assert len(lines) == 4 and columns == [3, 3, 3, 3], text
    assert "two lines" in text and "a\\|b" in text and "mean \\|difference\\|" in text
