"""params.yaml parsing: the shipped file is valid, and each bad value is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unet.config import ConfigError, PipelineConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_parse_and_hold_the_public_keys():
    config = load_config(REPO / "params.yaml")
    assert config.data.source == "synthetic"
    assert config.data.kaggle_dataset == "mateuszbuda/lgg-mri-segmentation"
    assert config.registry.model_name == "lgg-unet"
    assert config.train.device in ("auto", "cuda", "cpu")
    assert config.train.epochs > 0


def test_defaults_are_the_reference_values():
    config = PipelineConfig()
    assert config.prepare.image_size == 256
    assert config.data.raw_root == Path("data/raw/kaggle_3m")
    assert (config.weightmaps.w0, config.weightmaps.sigma) == (10.0, 5.0)
    assert (config.augment.grid, config.augment.sigma) == (3, 10.0)
    assert (config.train.lr, config.train.batch_size) == (1e-4, 16)


@pytest.mark.parametrize(
    ("raw", "key", "hint"),
    [
        ({"data": {"source": "s3"}}, "data.source", "'synthetic', 'kaggle', 'archive' or 'local'"),
        ({"data": {"source": "archive"}}, "data", "set data.path"),
        ({"data": {"source": "local", "path": "/no/such/folder"}}, "data", "does not exist"),
        ({"data": {"kaggle_dataset": "no-slash", "source": "kaggle"}}, "data", "owner/name"),
        ({"prepare": {"image_size": -4}}, "prepare.image_size", "greater than or equal to 16"),
        ({"prepare": {"image_size": "big"}}, "prepare.image_size", "valid integer"),
        ({"prepare": {"clip_percentiles": [99, 10]}}, "prepare", "low < high"),
        ({"prepare": {"split": {"val_fraction": 0.6, "test_fraction": 0.5}}}, "prepare.split", "below 1"),
        ({"prepare": {"split": {"method": "slices"}}}, "prepare.split.method", "'random', 'reference' or 'kfold'"),
        ({"prepare": {"split": {"folds": 3, "fold": 3}}}, "prepare.split", "0..2"),
        ({"weightmaps": {"sigma": 0}}, "weightmaps.sigma", "greater than 0"),
        ({"augment": {"grid": 1}}, "augment.grid", "greater than or equal to 2"),
        ({"augment": {"copies": -1}}, "augment.copies", "greater than or equal to 0"),
        ({"train": {"device": "tpu"}}, "train.device", "'auto', 'cuda' or 'cpu'"),
        ({"train": {"epochs": 0}}, "train.epochs", "greater than 0"),
        ({"train": {"epoch": 3}}, "train.epoch", "unknown key"),
        ({"data": {"synthetic": {"min_slices": 30, "max_slices": 20}}}, "data.synthetic", "min_slices"),
        ({"registry": {"model_name": ""}}, "registry.model_name", "at least 1"),
        ({"prepare": {"image_size": 72}, "model": {"depth": 4}}, "(top level)", "multiple of 16 (e.g. 64 or 80)"),
    ],
)
def test_bad_values_name_key_value_and_fix(raw, key, hint):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert f"  {key}:" in message
    assert hint in message


def test_all_faults_reported_at_once():
    with pytest.raises(ConfigError, match="2 invalid value"):
        parse_config({"train": {"device": "tpu", "epochs": -1}})


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    broken.write_text(yaml.safe_dump(["a", "list"]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(broken)


def test_archive_source_accepts_an_existing_path(tmp_path):
    archive = tmp_path / "lgg.zip"
    archive.write_bytes(b"PK")
    config = parse_config({"data": {"source": "archive", "path": str(archive)}})
    assert config.data.path == archive


def test_a_renamed_section_reads_for_a_release_and_says_its_new_name(caplog):
    """``weightmap`` became ``weightmaps`` (the stage's and the package's name): a params file with the old
    name still parses, with a warning naming the new one; with both names it is refused."""
    with caplog.at_level("WARNING", logger="unet.config"):
        config = parse_config({"weightmap": {"sigma": 3.0}})
    assert config.weightmaps.sigma == 3.0
    assert "the section 'weightmap' is now 'weightmaps'" in caplog.text
    with pytest.raises(ConfigError, match="both 'weightmap' and 'weightmaps'"):
        parse_config({"weightmap": {"sigma": 3.0}, "weightmaps": {"sigma": 4.0}})
