"""A user's mistake prints one line and exits; a bug keeps its traceback (stages and lgg-predict)."""

from __future__ import annotations

import pytest

from flows.common import stage_main
from unet.config import ConfigError
from unet.download.sources import KaggleCredentialsError, UnsafeArchiveError
from unet.errors import EnvironmentMismatch, InputError, MissingInputError, UserError
from unet.io.kaggle import RawDataError
from unet.predict import cli
from unet.split import SplitError
from unet.train.loop import TrainingDiverged

USER_MISTAKES = [
    ConfigError("params.yaml has 1 invalid value(s):\n  train.epochs: 0: must be > 0"),
    RawDataError("data/raw/kaggle_3m/P/P_1.tif: unreadable or truncated TIFF"),
    SplitError("3 patients cannot fill train, val and test"),
    KaggleCredentialsError("no Kaggle credentials: set KAGGLE_API_TOKEN"),
    UnsafeArchiveError("x.zip: entry ../evil escapes the folder"),
    TrainingDiverged("loss is nan at epoch 3, step 7: lower train.lr"),
    MissingInputError("data/prepared/manifest.parquet: no manifest; run the prepare stage first"),
    EnvironmentMismatch("device 'cuda' was asked for but torch sees no CUDA device"),
]
BUGS = [
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ValueError("operands could not be broadcast together with shapes (3,) (4,)"),
    KeyError("model_config"),
    FileNotFoundError("/tmp/x: a path the code got wrong"),
]


def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 1\n")
    return path


@pytest.mark.parametrize("error", USER_MISTAKES, ids=lambda e: type(e).__name__)
def test_a_user_mistake_prints_its_message_alone(error, tmp_path, capsys):
    def flow(config):
        raise error

    assert isinstance(error, UserError)
    assert stage_main(flow, "test", ["--params", str(params_file(tmp_path))], prefect=False) == 1
    err = capsys.readouterr().err
    assert err == f"error: {error}\n" and "Traceback" not in err


@pytest.mark.parametrize("error", BUGS, ids=lambda e: type(e).__name__)
def test_a_bug_keeps_its_traceback(error, tmp_path):
    def flow(config):
        raise error

    with pytest.raises(type(error)) as raised:
        stage_main(flow, "test", ["--params", str(params_file(tmp_path))], prefect=False)
    assert raised.value is error and raised.traceback  # not turned into a one-line message


def test_a_bad_params_file_is_a_user_mistake(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 0\n  lr: -1\n")
    assert stage_main(lambda config: None, "test", ["--params", str(path)]) == 1
    err = capsys.readouterr().err
    assert "train.epochs" in err and "train.lr" in err and "Traceback" not in err


@pytest.mark.parametrize("error, code", [(InputError("scan.nii: unreadable NIfTI file"), 2),
                                         (PermissionError("[Errno 13] Permission denied: 'out'"), 2)])
def test_lgg_predict_prints_a_user_mistake_and_exits_2(error, code, tmp_path, monkeypatch, capsys):
    def fail(options):
        raise error

    monkeypatch.setattr(cli, "predict", fail)
    assert cli.main(["--model", "m.pt", "--input", "x", "--output", str(tmp_path / "out")]) == code
    assert capsys.readouterr().err == f"lgg-predict: error: {error}\n"


def test_lgg_predict_lets_a_bug_keep_its_traceback(tmp_path, monkeypatch):
    def fail(options):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(cli, "predict", fail)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        cli.main(["--model", "m.pt", "--input", "x", "--output", str(tmp_path / "out")])


@pytest.mark.integration
def test_a_stage_run_says_a_user_mistake_without_a_traceback(tmp_path):
    """Inside a Prefect flow too: the engine would log the traceback of any exception it sees."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    params = tmp_path / "params.yaml"
    params.write_text(f"prepare:\n  out_dir: {tmp_path / 'nothing'}\n")
    result = subprocess.run([sys.executable, "-m", "flows.weightmaps", "--params", str(params)], cwd=repo,
                            env={**os.environ, "PREFECT_LOGGING_LEVEL": "INFO"}, capture_output=True, text=True,
                            timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "run the prepare stage first" in output
    assert "Traceback" not in output and output.count("error: ") == 1

