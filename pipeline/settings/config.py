"""Settings: `params.yaml` for ML choices, environment variables for places and endpoints."""
from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Iterable

import yaml

from pipeline.settings.params import Params, ParamsError, parse

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO_ROOT / "params.yaml"
CLASSES = ("NORMAL", "PNEUMONIA")
# The dataset as an Airflow Asset: publishing a data version announces it (versioning.announce) and
# the retraining DAG is scheduled on it, and daily as a fallback.
DATA_ASSET_URI = "dvc://chest-xray/data/chest_xray"


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Params:
    """params.yaml (or `path`) with `section.key=value` overrides applied (values parsed as YAML),
    checked and typed once (pipeline/settings/params.py). Raises ParamsError (a ValueError) naming the key."""
    with open(path or PARAMS_FILE) as f:
        values = yaml.safe_load(f)
    return parse(_override(values, overrides))


def apply_overrides(params: Params, overrides: Iterable[str] | dict) -> Params:
    """A copy of `params` with dotted-key overrides applied, checked again."""
    return parse(_override(params.to_dict(), overrides))


def checkpoint_params(saved: dict) -> Params:
    """Today's settings with the `data` and `preprocess` sections a checkpoint was trained with:
    what re-makes its split and its inputs (gate refits, benchmarks of a saved model)."""
    return apply_overrides(load_params(), {f"{section}.{key}": value for section in ("data", "preprocess")
                                           for key, value in saved[section].items()})


def _override(values: dict, overrides: Iterable[str] | dict) -> dict:
    """A copy of the mapping with dotted-key overrides applied; an unknown key is a ParamsError."""
    params = copy.deepcopy(values)
    if not isinstance(params, dict):
        return params  # parse() names the problem
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for key, value in items:
        node, parts = params, key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ParamsError(f"unknown parameter '{key}' (no section '{part}')")
            node = node[part]
        if parts[-1] not in node:
            close = difflib.get_close_matches(parts[-1], list(node), n=1)
            raise ParamsError(f"unknown parameter '{key}'" + (f" (did you mean '{'.'.join(parts[:-1] + close)}'?)"
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
        raise ParamsError(f"override '{override}' must look like section.key=value")
    key, value = override.split("=", 1)
    return key.strip(), value


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


def model_name(params: Params) -> str:
    return os.environ.get("XRAY_MODEL_NAME") or params.registry.model_name
