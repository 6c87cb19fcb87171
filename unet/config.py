"""The pipeline's one typed configuration, parsed from ``params.yaml`` once at a flow's entry.

Every knob of every stage lives in ``params.yaml`` in a section per stage; this module turns that
file into frozen pydantic models and refuses a bad value at once, naming the key, the value and
what is allowed. The entry points parse it (``flows/common.py`` for the stages, ``flows/pipeline.py``
after applying a run's overrides as DVC does) and pass the models down: nothing in ``unet/`` reads
params.yaml or the environment. The one exception at the edge is ``tasks/tracking.py``, which
honours MLflow's and DVC's own variables (``MLFLOW_TRACKING_URI``, ``DVC_ROOT``, ``DVC_EXP_NAME``).
Output file names are path properties of their sections (``config.train.best_path``), the one
place they are spelt in Python; ``dvc.yaml`` names the same files (a test checks they agree).
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from unet.errors import InputError

log = logging.getLogger(__name__)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class ConfigError(InputError):
    """params.yaml holds a value the pipeline cannot use; the message names key, value and fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Section):
    """The generated set (``data.source: synthetic``): patients on the MNI152 brain, or phantoms."""

    anatomy: Literal["mni152", "phantom"] = "mni152"  # phantom: ellipses, the fastest (tests)
    n_patients: Annotated[int, Field(ge=1, le=110)] = 110
    min_slices: PositiveInt = 20
    max_slices: PositiveInt = 88
    image_size: Annotated[int, Field(ge=16)] = 256
    seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _slice_range(self) -> SyntheticConfig:
        if self.min_slices > self.max_slices:
            raise ValueError(
                f"min_slices ({self.min_slices}) is above max_slices ({self.max_slices}): "
                "set min_slices <= max_slices"
            )
        return self


KAGGLE_DATASET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")  # owner/name, nothing else


class DataConfig(_Section):
    """Where the raw Kaggle-layout tree comes from and where the download stage puts it."""

    source: Literal["synthetic", "kaggle", "archive", "local"] = "synthetic"
    path: Path | None = None
    kaggle_dataset: str = Field("mateuszbuda/lgg-mri-segmentation", max_length=200)  # owner/name
    copy_local: bool = True
    raw_dir: Path = Path("data/raw")
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _path_for_source(self) -> DataConfig:
        if self.source in ("archive", "local"):
            kind = "a Kaggle zip" if self.source == "archive" else "an extracted kaggle_3m folder"
            if self.path is None:
                raise ValueError(f"data.source is {self.source!r}: set data.path to {kind}")
            if not self.path.exists():
                raise ValueError(
                    f"data.path {str(self.path)!r} does not exist: point it at {kind}"
                )
        if not KAGGLE_DATASET.fullmatch(self.kaggle_dataset):
            raise ValueError(
                f"data.kaggle_dataset {self.kaggle_dataset!r} is not 'owner/name', "
                "e.g. 'mateuszbuda/lgg-mri-segmentation'"
            )
        return self

    @property
    def raw_root(self) -> Path:
        """The ``kaggle_3m`` folder that the download stage writes and prepare reads."""
        return self.raw_dir / "kaggle_3m"


class SplitConfig(_Section):
    """Patient-level split: ``random`` fractions, the ``reference`` 10 patients, or ``kfold``."""

    method: Literal["random", "reference", "kfold"] = "random"
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    folds: Annotated[int, Field(ge=2)] = 5
    fold: NonNegativeInt = 0
    seed: int = 42

    @model_validator(mode="after")
    def _consistent(self) -> SplitConfig:
        if self.method == "random" and self.val_fraction + self.test_fraction >= 1.0:  # kfold: its fold is the test
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                "leaves no training patients: keep their sum below 1"
            )
        if self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} is not below folds ({self.folds}): use 0..{self.folds - 1}")
        return self


class PrepareConfig(_Section):
    """The reference per-volume preprocessing and where its arrays go."""

    image_size: Annotated[int, Field(ge=16, le=1024)] = 256
    out_dir: Path = Path("data/prepared")
    crop_threshold: Fraction = 0.1
    clip_percentiles: tuple[float, float] = (10.0, 99.0)
    split: SplitConfig = SplitConfig()
    nifti: bool = True
    workers: PositiveInt = 2  # processes preprocessing patients

    @model_validator(mode="after")
    def _percentiles(self) -> PrepareConfig:
        low, high = self.clip_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(
                f"clip_percentiles {list(self.clip_percentiles)} must satisfy 0 <= low < high <= 100, "
                "e.g. [10, 99]"
            )
        return self

    @property
    def manifest_path(self) -> Path:
        """One row a slice: paths, tumour areas, geometry, split part, data.csv columns."""
        return self.out_dir / "manifest.parquet"

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "summary.json"


class WeightmapConfig(_Section):
    """The U-Net paper's weight maps (issue: precompute stages)."""

    w0: Annotated[float, Field(ge=0.0)] = 10.0
    sigma: Annotated[float, Field(gt=0.0)] = 5.0
    class_balance: Literal["inverse_frequency", "sqrt_inverse_frequency", "none"] = "inverse_frequency"
    task_runner: Literal["threads", "processes", "dask"] = "threads"
    workers: PositiveInt = 2
    out_dir: Path = Path("data/weightmaps")
    figure: Path = Path("reports/weightmaps.png")  # the border term between touching parts, at 256 px

    @property
    def summary_path(self) -> Path:
        """Class weights used, w0 and sigma in pixels, statistics."""
        return self.out_dir / "weightmaps.json"


class AugmentConfig(_Section):
    """Elastic deformation copies of the training slices."""

    copies: NonNegativeInt = 4
    grid: Annotated[int, Field(ge=2)] = 3
    sigma: Annotated[float, Field(ge=0.0)] = 10.0
    image_mode: Literal["bicubic", "bilinear"] = "bicubic"
    seed: int = 0
    task_runner: Literal["threads", "processes", "dask"] = "threads"
    workers: PositiveInt = 2
    out_dir: Path = Path("data/augmented")
    preview: Path = Path("reports/augment_grid.png")

    @property
    def summary_path(self) -> Path:
        """Copies, grid, sigma in pixels, bytes per copy."""
        return self.out_dir / "augment.json"


class ModelConfig(_Section):
    variant: Literal["reference", "paper"] = "reference"
    features: PositiveInt | None = None
    depth: Annotated[int, Field(ge=1, le=6)] = 4
    dropout: Fraction = 0.5


class OnlineAugmentConfig(_Section):
    """Augmentations drawn on the fly every batch (the reference's; on the GPU when there is one)."""

    scale: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    rotate_deg: Annotated[float, Field(ge=0.0, le=180.0)] = 15.0
    flip_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    elastic_sigma: Annotated[float, Field(ge=0.0)] = 0.0  # px at 256 px; 0: only the precomputed copies
    # share of samples whose pre- or post-contrast channel becomes FLAIR, as the set fills a missing
    # sequence (benchmarks/README.md: the recipe study); 0: off, the reference's recipe
    missing_sequence_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    # each sample's channels get a contrast in [1 - intensity, 1 + intensity] and a brightness shift in
    # [-intensity, intensity] (z-score units): lesions fainter or brighter than the training patients'; 0: off
    intensity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class TrainConfig(_Section):
    """The train stage: the reference's recipe by default (Adam 1e-4, batch 16, soft Dice)."""

    epochs: PositiveInt = 100
    device: Literal["auto", "cuda", "cpu"] = "auto"
    batch_size: PositiveInt = 16
    steps_per_epoch: PositiveInt | None = None  # None: one pass over the training rows
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0.0)] = 1e-4
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.99  # sgd only (the paper's 0.99)
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    scheduler: Literal["none", "cosine", "plateau"] = "none"
    dice_weight: Annotated[float, Field(ge=0.0)] = 1.0
    ce_weight: Annotated[float, Field(ge=0.0)] = 0.0  # > 0: pixel-wise CE weighted by the weight maps
    grad_clip: Annotated[float, Field(ge=0.0)] = 0.0  # max gradient norm; 0: off
    early_stopping: NonNegativeInt = 0  # epochs without a better val DSC before stopping; 0: off
    # the model that ships (best.pt): the epoch with the best validation DSC (the reference's choice),
    # or the last epoch of the schedule (nnU-Net's; a few validation volumes make a noisy judge)
    select: Literal["best", "last"] = "best"
    # the shipped model keeps only the largest 3-D component (the reference's step) unless that costs
    # more than this on the validation DSC: a few validation volumes tell a real loss (a tumour dropped
    # for a larger false blob, -0.1 and more) from noise (the robustness grid: -0.0001..-0.005)
    postprocess_margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    tumour_sampling: Annotated[float, Field(ge=0.0, le=1.0)] = 10 / 11
    elastic_copies: bool = True  # train on the augment stage's copies too
    skip_edge_slices: bool = True  # the reference drops each volume's first and last slice
    augment: OnlineAugmentConfig = OnlineAugmentConfig()
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX)
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (CUDA)
    workers: NonNegativeInt = 0  # DataLoader workers on the CPU path
    # CPU threads: auto = the cores this process may use (affinity, cgroup quota), fewer while other
    # processes keep some busy (unet/threads.py); a number is kept as it is
    threads: PositiveInt | Literal["auto"] = "auto"
    resume: bool = False  # continue from out_dir/checkpoint.pt if its config matches
    seed: int = 0
    out_dir: Path = Path("models")  # checkpoint.pt, best.pt (DVC-cached); mlflow_run.json (neither)
    metrics_dir: Path = Path("metrics")  # train.json, train_history.csv (kept in git)

    @property
    def checkpoint_path(self) -> Path:
        """The last finished epoch, with optimizer and RNG state (``train.resume`` continues it)."""
        return self.out_dir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        """The epoch with the best validation DSC: the model that is evaluated and registered."""
        return self.out_dir / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.metrics_dir / "train.json"

    @property
    def history_path(self) -> Path:
        """One row an epoch, drawn by ``dvc plots``."""
        return self.metrics_dir / "train_history.csv"

    @property
    def curve_path(self) -> Path:
        """The training curve as a PNG (readable offline)."""
        return self.metrics_dir / "train_curve.png"

    @property
    def run_path(self) -> Path:
        """This workspace's last training run in MLflow (its id, model URI and speed), for
        ``train.resume`` and the summary: a fact of the run, not of the data and params, so neither
        DVC nor git keeps it (evaluate and register find a checkpoint's run by its weights)."""
        return self.out_dir / "mlflow_run.json"

    @model_validator(mode="after")
    def _loss(self) -> TrainConfig:
        if self.dice_weight + self.ce_weight == 0:
            raise ValueError("dice_weight and ce_weight are both 0: set one above 0 (reference: dice_weight 1)")
        if self.early_stopping and self.select == "last":
            raise ValueError(f"early_stopping is {self.early_stopping} but select is 'last': the last epoch always "
                             "ships, so nothing would stop; set select: best, or early_stopping: 0")
        return self


class EvaluateConfig(_Section):
    """Scoring on the test split (and val) at the original geometry, pictures and NIfTI predictions."""

    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    tta: bool = False  # average with the horizontally flipped prediction
    out_dir: Path = Path("metrics")
    predictions_dir: Path = Path("data/predictions")
    overlays_dir: Path = Path("reports/overlays")
    overlay_patients: NonNegativeInt = 3  # the best, median and worst test patients by DSC

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "eval.json"

    @property
    def per_patient_path(self) -> Path:
        return self.out_dir / "per_patient.csv"

    @property
    def per_patient_figure(self) -> Path:
        """The per-patient bars as a PNG (readable offline), mean and median of the test patients."""
        return self.out_dir / "per_patient.png"


class PoolConfig(_Section):
    """``cv.executor: pool``: the folds as flow runs of a deployment on a Prefect work pool."""

    deployment: str = Field("cv-fold/lgg-cv-fold", pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")  # flow/deployment
    wait_minutes: Annotated[float, Field(gt=0)] = 1440.0  # the longest the stage waits for its folds
    # a running fold whose lease stands still this long (its worker died) is started again elsewhere,
    # from its last epoch, at most ``retries`` times
    lost_after_s: Annotated[float, Field(ge=10)] = 120.0
    retries: NonNegativeInt = 2


class CvConfig(_Section):
    """Cross-validation over every patient (the study the set was published with: 22 folds of 5)."""

    folds: NonNegativeInt = 0  # 0: off; k >= 2 patient-level folds, stratified as the split is
    val_fraction: Fraction = 0.15  # of each fold's training patients, to pick its best epoch
    seed: int = 42
    epochs: PositiveInt | None = None  # None: train.epochs
    # the main split's test patients sit out (True): folds over the rest, then each fold model and
    # their ensemble are scored on the held-out patients; False: every patient in a fold (the paper)
    holdout_test: bool = False
    # where the folds train: local, one after another in the stage's process; pool, one flow run a fold
    # on a Prefect work pool (tasks.cv_pool). The same results either way: not part of a fold's key
    executor: Literal["local", "pool"] = "local"
    pool: PoolConfig = PoolConfig()
    out_dir: Path = Path("data/cv")  # fold-<k>/ (model, history, scores), predictions/ (out-of-fold NIfTI)
    metrics_dir: Path = Path("metrics")

    @model_validator(mode="after")
    def _folds(self) -> CvConfig:
        if self.folds == 1:
            raise ValueError("folds is 1: use 0 (off) or at least 2 (the paper: 22)")
        return self

    def fold_dir(self, fold: int) -> Path:
        return self.out_dir / f"fold-{fold:02d}"

    @property
    def predictions_dir(self) -> Path:
        """``<patient>_pred.nii.gz``: every patient segmented by the fold that did not see it."""
        return self.out_dir / "predictions"

    @property
    def metrics_path(self) -> Path:
        return self.metrics_dir / "cv.json"

    @property
    def per_patient_path(self) -> Path:
        return self.metrics_dir / "cv_per_patient.csv"


class RadiogenomicsConfig(_Section):
    """Shape features of the manual and out-of-fold masks against the genomic clusters (Buda 2019)."""

    # (slice, row, column) mm. The TIFFs carry none: an assumption (0.94 mm in-plane, 240 mm field of
    # view at 256 px; 3 mm slices). BEVR, MF and ASD do not change with it (scale-free); volumes do.
    spacing_mm: tuple[float, float, float] = (3.0, 0.94, 0.94)
    out_dir: Path = Path("metrics")  # radiogenomics.json, radiogenomics_features.csv
    figure: Path = Path("reports/radiogenomics.png")  # -log10 p, features x clusters, manual | automatic
    # that the MLflow store holds the study's run: DVC-cached, not in git, so a fresh clone (a new store)
    # logs it again, as register's receipt does for the registry
    receipt_path: Path = Path("models/radiogenomics_logged.json")

    @model_validator(mode="after")
    def _spacing(self) -> RadiogenomicsConfig:
        if min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm {list(self.spacing_mm)}: every spacing must be above 0 mm")
        return self

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "radiogenomics.json"

    @property
    def features_path(self) -> Path:
        """One row a patient and mask kind: bevr, mf, asd, volume_ml."""
        return self.out_dir / "radiogenomics_features.csv"


class RegistryConfig(_Section):
    """The register stage: the train run's model into the MLflow registry, champion if it scores better."""

    model_name: str = Field("lgg-unet", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    export: bool = True  # ONNX + TorchScript (checked on real slices) and the model card beside each version
    # champion only at or above this DSC (validation; the CV's per-volume mean for the fold ensemble, which
    # also needs every fold to have learned: a fold mean under half of it): a model that did not learn is
    # registered, never made champion
    champion_floor: Fraction = 0.5
    out_dir: Path = Path("metrics")  # registry.json: version, aliases, decision, scores
    # what the MLflow store now holds, DVC-cached and not in git: the registry lives in the store, which a
    # fresh clone lacks, and with the receipt gone there the stage registers again
    receipt_path: Path = Path("models/registered.json")

    @property
    def record_path(self) -> Path:
        return self.out_dir / "registry.json"


class MlflowConfig(_Section):
    """Where runs are tracked: None is sqlite:///<repo>/mlflow.db; MLFLOW_TRACKING_URI overrides both."""

    tracking_uri: str | None = None
    experiment: str = Field("lgg-unet", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _./-]*$")


RENAMED_SECTIONS = {"weightmap": "weightmaps"}  # old -> new (2026-12): read for one release, with a warning


class PipelineConfig(_Section):
    """Everything in params.yaml; each flow takes the sections it needs from this."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """A section under its old name still reads (one release), and says to rename it; under both
        names it is refused (which one did the user mean?)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in RENAMED_SECTIONS.items():
            if old in data and new in data:
                raise ValueError(f"params.yaml has both '{old}' and '{new}': '{old}' is the old name of '{new}'; "
                                 f"keep '{new}' alone")
            if old in data:
                log.warning("params.yaml: the section '%s' is now '%s' (as its stage and package are named); "
                            "rename it: DVC's templates (dvc.yaml's ${%s.out_dir}) read the new name only",
                            old, new, new)
                data[new] = data.pop(old)
        return data

    data: DataConfig = DataConfig()
    prepare: PrepareConfig = PrepareConfig()
    weightmaps: WeightmapConfig = WeightmapConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    cv: CvConfig = CvConfig()
    radiogenomics: RadiogenomicsConfig = RadiogenomicsConfig()
    registry: RegistryConfig = RegistryConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @property
    def checked_path(self) -> Path:
        """The check stage's constant output, on which every stage depends (``flows/check.py``)."""
        return Path(".params-checked")

    @model_validator(mode="after")
    def _size_fits_depth(self) -> PipelineConfig:
        step = 2**self.model.depth
        size = self.prepare.image_size
        if self.model.variant == "reference" and size % step:
            fits = sorted({max(step, size // step * step), -(-size // step) * step})
            raise ValueError(
                f"prepare.image_size {size} cannot be halved model.depth={self.model.depth} times: "
                f"use a multiple of {step} (e.g. {' or '.join(map(str, fits))}) or a smaller depth"
            )
        return self


def _did_you_mean(loc: tuple) -> str:
    """`` (did you mean 'epochs'?)`` for an unknown key close to one its section has."""
    model: type[BaseModel] = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(error: dict, raw: dict) -> str:
    """One line per fault: the dotted key, the value given, and what would be accepted."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "(top level)"
    value: object = raw
    for part in error["loc"]:
        value = value.get(part, "<missing>") if isinstance(value, dict) else "<missing>"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"  {key}: unknown key (value {value!r}){_did_you_mean(error['loc'])}; remove it or fix its spelling"
    if error["type"] == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return f"  {key}: {value!r} is not allowed; use one of {allowed}"
    if isinstance(value, dict):  # a check across a section's keys: its message names them
        return f"  {key}: {message}"
    return f"  {key}: {value!r}: {message}"


def parse_config(raw: dict | None, *, source: str = "params.yaml") -> PipelineConfig:
    """Validate a params mapping; a bad value raises ConfigError naming every offending key."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(error, raw) for error in exc.errors()]
        raise ConfigError(f"{source} has {len(lines)} invalid value(s):\n" + "\n".join(lines)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last, silently; DVC refuses)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.name}: {key!r} is given twice in one section, on lines {seen[key]} and "
                                  f"{line}; keep one (DVC refuses the file, and the stages must not pick one)")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_params(path: str | Path = "params.yaml") -> dict:
    """The params file as a plain mapping (not yet validated); a clear error when it is missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file; run from the repository root or pass --params")
    try:
        loader = _UniqueKeyLoader(path.read_text())
        loader.name = str(path)
        try:
            return loader.get_single_data() or {}
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None


def load_config(path: str | Path = "params.yaml") -> PipelineConfig:
    """Read and validate a params file: what every stage's entry point does once."""
    return parse_config(read_params(path), source=str(Path(path)))
