"""Settings: `params.yaml` for ML choices, environment variables for places and endpoints."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO_ROOT / "params.yaml"
CLASSES = ("NORMAL", "PNEUMONIA")


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Read params.yaml and apply `section.key=value` overrides (values parsed as YAML)."""
    with open(path or PARAMS_FILE) as f:
        params = yaml.safe_load(f)
    return apply_overrides(params, overrides)


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
            raise KeyError(f"unknown parameter '{key}'")
        node[parts[-1]] = yaml.safe_load(value) if isinstance(value, str) else value
    return params


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
