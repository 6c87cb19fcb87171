"""A pipeline run's overrides, checked before anything runs.

``validate_overrides`` applies ``key=value`` overrides to params.yaml as ``dvc exp run -S`` does
(Hydra syntax) and validates the result with ``unet.config``: every bad key and value is reported
at once, with "did you mean". A run may set no path and no store (``refuse_local_only``).
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from unet.config import ConfigError, PipelineConfig, parse_config, read_params

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$")
MAX_VALUE_CHARS, MAX_OVERRIDES = 256, 64  # params values are short; a 200 KB one broke DVC's command line


# the typed parameters a user sees in the UI, and the params.yaml key each one sets
TYPED = {
    "epochs": "train.epochs", "lr": "train.lr", "batch_size": "train.batch_size",
    "image_size": "prepare.image_size", "data_source": "data.source",
    "model_variant": "model.variant", "device": "train.device",
}


def collect_overrides(typed: Mapping[str, object], overrides: Mapping[str, str] | None) -> dict[str, str]:
    """The typed parameters that are set, as ``key: value`` text, merged with the free-form ones."""
    merged = {str(k): str(v) for k, v in (overrides or {}).items()}
    for name, value in typed.items():
        if value is None:
            continue
        key, text = TYPED[name], str(value)
        if key in merged and merged[key] != text:
            raise ConfigError(f"{name}={text} and overrides {key}={merged[key]} disagree; give one of them")
        merged[key] = text
    return merged


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _set(raw: dict, key: str, value: object) -> str | None:
    """Put ``value`` at dotted ``key`` in ``raw``; the key must exist (as ``dvc exp run -S`` wants)."""
    *path, leaf = key.split(".")
    node, seen = raw, []
    for part in path:
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            where = ".".join(seen) or "params.yaml"
            sections = [k for k, v in node.items() if isinstance(v, dict)] if isinstance(node, dict) else []
            return f"  {key}: {where} has no section {part!r}; sections: {', '.join(sections)}" \
                   f"{_did_you_mean(part, sections)}"
        node, seen = node[part], [*seen, part]
    if leaf not in node:
        return f"  {key}: unknown key; {'.'.join(seen)} has {', '.join(node)}{_did_you_mean(leaf, list(node))}"
    node[leaf] = value
    return None


def validate_overrides(params_path: Path, overrides: Mapping[str, str]) -> PipelineConfig:
    """params.yaml with the overrides applied as DVC applies ``-S`` (Hydra syntax), then typed-checked.

    Raises ConfigError naming every bad key/value and the fix, before anything runs.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if len(overrides) > MAX_OVERRIDES:
        raise ConfigError(f"{len(overrides)} overrides: a run sets at most {MAX_OVERRIDES}")
    raw = read_params(params_path)
    parser, errors = OverridesParser.create(), []
    for key, text in overrides.items():
        if not KEY.match(key) or len(key) > 100:
            errors.append(f"  {key[:100]!r}: not a dotted params key; write section.key, e.g. train.epochs")
            continue
        if len(text) > MAX_VALUE_CHARS:
            errors.append(f"  {key}: a value of {len(text)} characters; a params value has at most {MAX_VALUE_CHARS}")
            continue
        if "${" in text:  # DVC (OmegaConf) would resolve it when it writes params.yaml: ${oc.env:SECRET}
            errors.append(f"  {key}={text}: interpolation (${{...}}) is not allowed in a run's values; "
                          "give the value itself")
            continue
        try:
            override = parser.parse_override(f"{key}={text}")
        except HydraException as exc:
            errors.append(f"  {key}={text}: DVC cannot parse the value ({str(exc).splitlines()[0]}); "
                          f"quote it: {key}='{text}'")
            continue
        if override.is_sweep_override():
            errors.append(f"  {key}={text}: a sweep of several values; give one value (quote commas: '{text}')")
            continue
        if problem := _set(raw, key, override.value()):
            errors.append(problem)
    source = f"{params_path} with the run's overrides"
    try:
        config = parse_config(raw, source=source)  # the values of the keys that exist: reported beside the rest
    except ConfigError as exc:
        errors += str(exc).splitlines()[1:]
        config = None
    if errors:
        raise ConfigError(f"{source} has {len(errors)} invalid key(s) or value(s):\n" + "\n".join(errors))
    return config


def path_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """The dotted params keys of ``model`` whose values are paths (``prepare.out_dir``, ...)."""
    keys = set()
    for name, info in model.model_fields.items():
        kinds = [info.annotation, *typing.get_args(info.annotation)]
        nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if nested:
            keys |= path_keys(nested[0], f"{prefix}{name}.")
        elif any(k is Path for k in kinds):
            keys.add(f"{prefix}{name}")
    return keys


# keys a run started through the Prefect API may not set: folders and files on this machine (an
# output there replaces what was there), where MLflow sends the run, and where the folds run (which
# deployment the cv stage starts runs of is the machine's owner's choice)
LOCAL_ONLY = frozenset(path_keys(PipelineConfig) | {"mlflow.tracking_uri", "cv.executor", "cv.pool.deployment"})


def refuse_local_only(overrides: Mapping[str, str]) -> None:
    """A run from the UI or the API cannot point the pipeline at another folder or store."""
    bad = sorted(k for k in overrides if k in LOCAL_ONLY)
    if bad:
        raise ConfigError(f"a pipeline run cannot set {', '.join(bad)}: paths and the MLflow store come from "
                          "params.yaml only (edit it, or run dvc exp run -S yourself)")
