"""The real data sources: the Kaggle client against a local fake API, zips, local folders."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from unet.download.sources import (
    DownloadError,
    KaggleCredentialsError,
    UnsafeArchiveError,
    _redact,
    download_kaggle,
    extract_archive,
    find_dataset_root,
    use_local,
)

from kaggle_server import FakeKaggle, kaggle_zip, nothing_listening, serve

REPO = Path(__file__).resolve().parents[1]
DATASET = "mateuszbuda/lgg-mri-segmentation"
PATIENTS = {"TCGA_CS_4941_19960909": 2, "TCGA_DU_5849_19950405": 3}
FAKE_KEY = "fake-key-0123456789"  # never a real credential
FAKE_TOKEN = "KGAT_fake-token-0123456789"
SECRETS = (FAKE_KEY, FAKE_TOKEN)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


EXPECTED = {"data.csv", "README.md"} | {
    f"{folder}/{folder}_{n}{suffix}.tif"
    for folder, count in PATIENTS.items()
    for n in range(1, count + 1)
    for suffix in ("", "_mask")
}


def write_zip(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def assert_nothing_left(dest: Path) -> None:
    """A failed source leaves no dataset and no staging folders behind."""
    assert not (dest / "kaggle_3m").exists()
    assert not dest.exists() or list(dest.iterdir()) == []


# ---------------------------------------------------------------- Kaggle API (real client, fake server)


@pytest.fixture
def kaggle_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real credentials, no proxy, the client pointed at localhost:7777."""
    for name in list(os.environ):
        if name.startswith("KAGGLE_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    # KaggleApi fixes its kaggle.json path when `kaggle` is first imported in a process; make sure
    # no earlier import (with the real HOME) lets a developer's own credentials into these tests.
    from kaggle.api.kaggle_api_extended import KaggleApi

    monkeypatch.setattr(KaggleApi, "config", str(home / ".kaggle" / "kaggle.json"))


def fake_kaggle(**kwargs: object) -> FakeKaggle:
    tops = ("kaggle_3m/", "lgg-mri-segmentation/kaggle_3m/")  # the nested copy seen in the real zip
    return FakeKaggle(datasets={DATASET: kaggle_zip(PATIENTS, tops)}, key=FAKE_KEY, token=FAKE_TOKEN, **kwargs)


CREDENTIALS = [
    pytest.param({"KAGGLE_USERNAME": "tester", "KAGGLE_KEY": FAKE_KEY}, "Basic", id="username-and-key"),
    pytest.param({"KAGGLE_API_TOKEN": FAKE_TOKEN}, "Bearer", id="access-token"),
]


@pytest.mark.parametrize(("env", "scheme"), CREDENTIALS)
def test_download_kaggle_fetches_and_extracts_one_tree(kaggle_env, monkeypatch, tmp_path, caplog, env, scheme):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    with serve(fake_kaggle()) as fake:
        root = download_kaggle(DATASET, tmp_path / "raw")
    assert root == tmp_path / "raw" / "kaggle_3m"
    assert tree(root) == EXPECTED
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["kaggle_3m"]
    download = [r for r in fake.requests if r[1].endswith("/DownloadDataset")]
    assert download == [("POST", "/api/v1/datasets.DatasetApiService/DownloadDataset", scheme)]
    assert all(secret not in caplog.text for secret in SECRETS)


FAULTS = [
    pytest.param({"fail_with": 500}, {"KAGGLE_API_TOKEN": FAKE_TOKEN}, DownloadError, "500", id="500-on-token-check"),
    pytest.param({"fail_with": 503}, {"KAGGLE_USERNAME": "tester", "KAGGLE_KEY": FAKE_KEY}, DownloadError, "503",
                 id="503-on-download"),
    pytest.param({"key": "another-key"}, {"KAGGLE_USERNAME": "tester", "KAGGLE_KEY": FAKE_KEY},
                 KaggleCredentialsError, "HTTP 401", id="key-rejected"),
    pytest.param({"token": "another-token"}, {"KAGGLE_API_TOKEN": FAKE_TOKEN}, KaggleCredentialsError,
                 "KAGGLE_API_TOKEN", id="token-inactive"),
    pytest.param({"datasets": {}}, {"KAGGLE_USERNAME": "tester", "KAGGLE_KEY": FAKE_KEY}, ValueError, "HTTP 404",
                 id="no-such-dataset"),
]


@pytest.mark.parametrize(("server", "env", "error", "words"), FAULTS)
def test_download_kaggle_sorts_server_answers(kaggle_env, monkeypatch, tmp_path, caplog, server, env, error, words):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    fake = fake_kaggle()
    for name, value in server.items():
        setattr(fake, name, value)
    with serve(fake), pytest.raises(error, match=words) as caught:
        download_kaggle(DATASET, tmp_path / "raw")
    assert not isinstance(caught.value, DownloadError) or error is DownloadError  # only faults are retried
    assert all(secret not in str(caught.value) + caplog.text for secret in SECRETS)
    assert_nothing_left(tmp_path / "raw")


def test_download_kaggle_connection_refused_is_download_error(kaggle_env, monkeypatch, tmp_path):
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    with nothing_listening(), pytest.raises(DownloadError, match="ConnectionError") as caught:
        download_kaggle(DATASET, tmp_path / "raw")
    assert FAKE_KEY not in str(caught.value)
    assert_nothing_left(tmp_path / "raw")


@pytest.mark.parametrize("dataset", ["lgg-mri-segmentation", "a/b/c", "", "owner/slug/versions/x"])
def test_download_kaggle_rejects_malformed_reference(tmp_path, dataset):
    with pytest.raises(ValueError, match="owner/slug"):
        download_kaggle(dataset, tmp_path / "raw")


FRESH_PROCESS = """
import json, sys
from pathlib import Path
from unet.download.sources import download_kaggle
try:
    root = download_kaggle(sys.argv[1], Path(sys.argv[2]))
    print(json.dumps({"root": str(root)}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def run_fresh(tmp_path: Path, env: dict[str, str]) -> tuple[dict, str]:
    """download_kaggle in a new interpreter: `import kaggle` runs (and prints) only once a process."""
    home, config = tmp_path / "home", tmp_path / "config"
    home.mkdir(exist_ok=True)
    config.mkdir(exist_ok=True)
    base = {"PATH": os.environ["PATH"], "HOME": str(home), "KAGGLE_CONFIG_DIR": str(config),
            "PYTHONPATH": str(REPO), "KAGGLE_API_ENVIRONMENT": "TEST", "NO_PROXY": "localhost,127.0.0.1"}
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, DATASET, str(tmp_path / "raw")],
                          env=base | env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


def test_missing_credentials_is_one_clear_error(tmp_path):
    result, output = run_fresh(tmp_path, {})
    assert result["error"] == "KaggleCredentialsError"
    for option in ("KAGGLE_API_TOKEN", "kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", str(tmp_path / "config")):
        assert option in result["message"]
    assert "Authentication required" not in output  # the client's own help text stays hidden
    assert_nothing_left(tmp_path / "raw")


def test_kaggle_json_in_config_dir_is_used(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "kaggle.json").write_text(json.dumps({"username": "tester", "key": FAKE_KEY}))
    (tmp_path / "config" / "kaggle.json").chmod(0o600)
    with serve(fake_kaggle()):
        result, output = run_fresh(tmp_path, {})
    assert result == {"root": str(tmp_path / "raw" / "kaggle_3m")}
    assert tree(Path(result["root"])) == EXPECTED
    assert FAKE_KEY not in output


# ---------------------------------------------------------------- archives


def entry(name: str, data: bytes = b"x", mode: int = stat.S_IFREG | 0o644) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info, data


UNSAFE = [
    pytest.param(entry("../evil.txt"), id="parent"),
    pytest.param(entry("kaggle_3m/../../evil.txt"), id="parent-inside"),
    pytest.param(entry("/tmp/evil.txt"), id="absolute"),
    pytest.param(entry("C:/evil.txt"), id="drive-letter"),
    pytest.param(entry("kaggle_3m\\..\\..\\evil.txt"), id="backslashes"),
    pytest.param(entry("kaggle_3m/TCGA_CS_4941_19960909/link", b"/etc/passwd", stat.S_IFLNK | 0o777), id="symlink"),
]


@pytest.mark.parametrize("bad", UNSAFE)
def test_extract_refuses_entries_leaving_the_target(tmp_path, bad):
    good = zipfile.ZipFile(io.BytesIO(kaggle_zip(PATIENTS)))
    archive = tmp_path / "lgg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for info in good.infolist():
            zf.writestr(info, good.read(info))
        zf.writestr(*bad)
    with pytest.raises(UnsafeArchiveError, match=bad[0].filename.replace("\\", "\\\\\\\\")):
        extract_archive(archive, tmp_path / "out" / "raw")
    assert_nothing_left(tmp_path / "out" / "raw")
    assert not list(tmp_path.rglob("evil.txt"))


LAYOUTS = [
    pytest.param(("kaggle_3m/",), id="kaggle-layout"),
    pytest.param(("kaggle_3m/", "lgg-mri-segmentation/kaggle_3m/"), id="nested-duplicate"),
    pytest.param(("lgg-mri-segmentation/kaggle_3m/", "kaggle_3m/"), id="duplicate-listed-first"),
    pytest.param(("",), id="patients-at-top"),
    pytest.param(("archive/data/",), id="other-folder-names"),
]


@pytest.mark.parametrize("tops", LAYOUTS)
def test_extract_keeps_one_kaggle_3m_tree(tmp_path, tops):
    archive = write_zip(tmp_path / "lgg.zip", kaggle_zip(PATIENTS, tops))
    root = extract_archive(archive, tmp_path / "raw")
    assert root == tmp_path / "raw" / "kaggle_3m"
    assert tree(root) == EXPECTED
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["kaggle_3m"]


def test_extract_replaces_a_previous_tree(tmp_path):
    stale = tmp_path / "raw" / "kaggle_3m" / "TCGA_OLD_0000_20000101" / "stale.tif"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    root = extract_archive(write_zip(tmp_path / "lgg.zip", kaggle_zip(PATIENTS)), tmp_path / "raw")
    assert tree(root) == EXPECTED


def corrupt(data: bytes) -> bytes:
    """Flip the stored bytes of README.md (written after data.csv) so its CRC check fails mid-extract."""
    assert data.count(b"LGG segmentation\n") == 1
    return data.replace(b"LGG segmentation\n", b"XXX segmentation\n")


BROKEN = [
    pytest.param(None, FileNotFoundError, "archive not found: .*missing.zip", id="missing"),
    pytest.param(b"Patient,death01\n", ValueError, "lgg.zip is not a zip archive", id="not-a-zip"),
    pytest.param(kaggle_zip({}), ValueError, "no 'kaggle_3m' tree in .*lgg.zip", id="no-patients"),
    pytest.param(kaggle_zip(PATIENTS, ("a/", "b/")), ValueError, "ambiguous", id="two-trees-same-depth"),
    pytest.param(corrupt(kaggle_zip(PATIENTS)), ValueError, "lgg.zip is corrupt", id="bad-crc"),
]


@pytest.mark.parametrize(("data", "error", "words"), BROKEN)
def test_extract_errors_name_the_archive(tmp_path, data, error, words):
    archive = write_zip(tmp_path / "lgg.zip", data) if data is not None else tmp_path / "missing.zip"
    with pytest.raises(error, match=words):
        extract_archive(archive, tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")


# ---------------------------------------------------------------- folders


def make_files(top: Path, names: list[str]) -> Path:
    for name in names:
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(b"x")
    return top


ROOTS = [
    pytest.param(["kaggle_3m/TCGA_A_1/a.tif"], "kaggle_3m", id="kaggle_3m"),
    pytest.param(["TCGA_A_1/a.tif", "data.csv"], ".", id="folder-itself"),
    pytest.param(["kaggle_3m/TCGA_A_1/a.tif", "lgg/kaggle_3m/TCGA_A_1/a.tif"], "kaggle_3m", id="shallowest-copy"),
    pytest.param(["__MACOSX/TCGA_A_1/a.tif", "d/kaggle_3m/TCGA_A_1/a.tif"], "d/kaggle_3m", id="skips-macosx"),
    pytest.param(["a/b/c/kaggle_3m/TCGA_A_1/a.tif"], "a/b/c/kaggle_3m", id="four-levels-down"),
]


@pytest.mark.parametrize(("names", "expected"), ROOTS)
def test_find_dataset_root(tmp_path, names, expected):
    assert find_dataset_root(make_files(tmp_path, names)) == tmp_path / expected


NO_ROOT = [
    pytest.param(["notes/readme.txt"], "no 'kaggle_3m' tree", id="no-patients"),
    pytest.param(["a/b/c/d/kaggle_3m/TCGA_A_1/a.tif"], "within 4 levels", id="too-deep"),
    pytest.param(["x/TCGA_A_1/a.tif", "y/TCGA_B_2/b.tif"], "ambiguous", id="two-trees"),
]


@pytest.mark.parametrize(("names", "words"), NO_ROOT)
def test_find_dataset_root_errors(tmp_path, names, words):
    with pytest.raises(ValueError, match=words):
        find_dataset_root(make_files(tmp_path, names))


@pytest.fixture
def local_set(tmp_path: Path) -> Path:
    """A user's download folder with an extracted Kaggle tree inside."""
    extract_archive(write_zip(tmp_path / "lgg.zip", kaggle_zip(PATIENTS)), tmp_path / "downloads")
    return tmp_path / "downloads"


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "link"])
@pytest.mark.parametrize("pointed_at", [".", "kaggle_3m"], ids=["parent-folder", "kaggle_3m-folder"])
def test_use_local(tmp_path, local_set, copy, pointed_at):
    root = use_local(local_set / pointed_at, tmp_path / "raw", copy=copy)
    assert root == tmp_path / "raw" / "kaggle_3m"
    assert tree(root) == EXPECTED
    assert root.is_symlink() is not copy
    assert root.resolve() == (root if copy else local_set / "kaggle_3m").resolve()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["kaggle_3m"]
    assert tree(local_set / "kaggle_3m") == EXPECTED


def test_use_local_replacing_a_link_keeps_the_source(tmp_path, local_set):
    use_local(local_set, tmp_path / "raw", copy=False)
    root = use_local(local_set, tmp_path / "raw", copy=True)
    assert not root.is_symlink() and tree(root) == EXPECTED
    assert tree(local_set / "kaggle_3m") == EXPECTED


def test_use_local_on_its_own_output_changes_nothing(tmp_path, local_set):
    assert use_local(local_set, local_set) == local_set / "kaggle_3m"
    assert tree(local_set / "kaggle_3m") == EXPECTED


@pytest.mark.parametrize(("names", "error", "words"), [
    pytest.param(None, FileNotFoundError, "dataset folder not found", id="missing"),
    pytest.param(["kaggle_3m/data.csv"], ValueError, "no 'kaggle_3m' tree", id="no-patients"),
])
def test_use_local_errors(tmp_path, names, error, words):
    folder = make_files(tmp_path / "downloads", names) if names else tmp_path / "nowhere"
    with pytest.raises(error, match=words):
        use_local(folder, tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")


@pytest.mark.parametrize(("text", "secrets", "expected"), [
    ("Authorization: Basic dGVzdGVyOmtleQ==", [], "Authorization: ***"),
    ("proxy-authorization: Bearer abc", [], "proxy-authorization: ***"),
    (f"url?key={FAKE_KEY}", [FAKE_KEY], "url?key=***"),
    ("Dataset URL: https://www.kaggle.com/datasets/a/b", [FAKE_KEY], "Dataset URL: https://www.kaggle.com/datasets/a/b"),
])
def test_redact_hides_credentials(text, secrets, expected):
    assert _redact(text, secrets) == expected
