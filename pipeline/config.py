"""Settings: `params.yaml` for ML choices, environment variables for places and endpoints."""
from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO_ROOT / "params.yaml"
CLASSES = ("NORMAL", "PNEUMONIA")
# The dataset as an Airflow Asset: publishing a data version announces it (versioning.announce) and
# the retraining DAG is scheduled on it, and daily as a fallback.
DATA_ASSET_URI = "dvc://chest-xray/data/chest_xray"


class ParamsError(ValueError):
    """A settings file or override that the code would misread: one line naming the key."""


# Values that are one of a few words (anything else used to fall back silently to a default).
CHOICES = {
    "preprocess.intensity": ("none", "equalize"),
    "train.class_weighting": ("balanced", "none"),
    "train.bf16": ("auto", "on", "off"),
    "evaluate.threshold_rule": ("clean", "pooled", "worst"),
    "evaluate.calibration": ("clean", "stress"),
    "promotion.first_champion": ("promote_if_floors", "manual"),
}
# (low, high) inclusive bounds of numbers (None: unbounded on that side).
RANGES = {
    "data.val_fraction": (0, 0.5), "data.test_fraction": (0, 0.5), "data.max_rejected_fraction": (0, 1),
    "data.max_unknown_patient_fraction": (0, 1), "data.min_side": (1, None), "data.subset_per_class": (0, None),
    "preprocess.image_size": (32, 1024), "train.epochs": (0, None), "train.batch_size": (1, None),
    "train.lr": (0, None), "train.weight_decay": (0, None), "train.label_smoothing": (0, 0.5),
    "train.ema_decay": (0, 0.99999), "train.patience": (1, None), "train.augment.photometric.p": (0, 1),
    "evaluate.target_sensitivity": (0, 1), "evaluate.stress_images": (1, None), "evaluate.batch_size": (1, None),
    "gate.target_false_refusal": (0, 1), "gate.distance_margin": (1, None),
    "promotion.non_inferiority_margin": (0, 1), "promotion.confidence": (0.5, 0.9999),
    "promotion.bootstrap_samples": (10, None),
}
# Sections whose keys are a free subset (a policy may set some floors only).
OPEN_SECTIONS = ("promotion.floors", "promotion.stress_floors", "promotion.external_floors")


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Read params.yaml (or `path`), apply `section.key=value` overrides (values parsed as YAML)
    and check the result against the shipped params.yaml: every key known, of its type, and within
    CHOICES / RANGES; whole numbers given for a float key become floats, so the code reads every
    value as its type without casts. Raises ParamsError (a ValueError) naming the key."""
    with open(path or PARAMS_FILE) as f:
        params = yaml.safe_load(f)
    try:
        params = apply_overrides(params, overrides)
    except KeyError as exc:
        raise ParamsError(exc.args[0]) from None
    return validate(params)


def validate(params: dict) -> dict:
    """`params` checked against the shipped params.yaml (see load_params); returns it."""
    with open(PARAMS_FILE) as f:
        _check(params, yaml.safe_load(f), "")
    return params


def _check(values: dict, reference: dict, prefix: str) -> None:
    if not isinstance(values, dict):
        raise ParamsError(f"{prefix.rstrip('.') or 'params'}: expected a mapping, got {values!r}")
    open_section = prefix.rstrip(".") in OPEN_SECTIONS
    for key in values:
        if key not in reference:
            known = ", ".join(sorted(reference))
            raise ParamsError(f"unknown parameter '{prefix}{key}' (known in {prefix.rstrip('.') or 'params'}: {known})")
    for key, ref in reference.items():
        name = f"{prefix}{key}"
        if key not in values:
            if open_section:
                continue
            raise ParamsError(f"missing parameter '{name}' (params.yaml has it: {ref!r})")
        value = values[key]
        if isinstance(ref, dict):
            _check(value, ref, name + ".")
            continue
        if name in CHOICES and isinstance(value, bool):  # YAML reads on/off as booleans
            value = values[key] = "on" if value else "off"
        if not _same_type(value, ref):
            raise ParamsError(f"{name}={value!r}: expected {type(ref).__name__} like {ref!r}")
        if isinstance(ref, float) and isinstance(value, int):  # typed once here: code reads floats as floats
            value = values[key] = float(value)
        if name in CHOICES and value not in CHOICES[name]:
            raise ParamsError(f"{name}={value!r}: expected one of {', '.join(CHOICES[name])}")
        low, high = RANGES.get(name, (None, None))
        if (low is not None and value < low) or (high is not None and value > high):
            raise ParamsError(f"{name}={value!r}: expected a value in [{low}, {'inf' if high is None else high}]")


def _same_type(value, ref) -> bool:
    if isinstance(ref, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(ref, bool)
    if isinstance(ref, float):
        return isinstance(value, (int, float))
    if ref is None:
        return True
    return isinstance(value, type(ref))


def apply_overrides(params: dict, overrides: Iterable[str] | dict) -> dict:
    """Return a copy of params with dotted-key overrides applied; unknown keys are an error."""
    params = copy.deepcopy(params)
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for key, value in items:
        node, parts = params, key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"unknown parameter '{key}' (no section '{part}')")
            node = node[part]
        if parts[-1] not in node:
            close = difflib.get_close_matches(parts[-1], list(node), n=1)
            raise KeyError(f"unknown parameter '{key}'" + (f" (did you mean '{'.'.join(parts[:-1] + close)}'?)"
                                                         if close else ""))
        node[parts[-1]] = _parse(value) if isinstance(value, str) else value
    return params


def _parse(text: str):
    """An override's value as YAML, with numbers in exponent form (1e-3) read as numbers
    (YAML 1.1, which PyYAML speaks, reads them as strings)."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def _split(override: str) -> tuple[str, str]:
    if "=" not in override:
        raise ValueError(f"override '{override}' must look like section.key=value")
    key, value = override.split("=", 1)
    return key.strip(), value


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; lists become strings (MLflow params are flat)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def default_data_root() -> Path:
    for name in ("XRAY_DATA", "DATA"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    return REPO_ROOT.parent / "shared" / "datasets" / "chest_xray"


def cache_dir() -> Path:
    return env_path("XRAY_CACHE_DIR", REPO_ROOT / ".cache" / "preprocess")


def runs_dir() -> Path:
    return env_path("XRAY_RUNS_DIR", REPO_ROOT / "runs")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")


def model_name(params: dict) -> str:
    return os.environ.get("XRAY_MODEL_NAME") or params["registry"]["model_name"]
