"""The typed schema of params.yaml: one frozen dataclass per section.

params.yaml stays the one home of the values (these classes have no defaults); `parse` checks a
mapping against the schema once, when settings are read (`config.load_params`), and the code then
reads typed attributes (`params.train.lr`) without casts. A wrong key or value is a one-line
`ParamsError` naming the key and what is allowed; nothing falls back silently to a default."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

FLOOR_METRICS = ("auc", "sensitivity", "specificity")


class ParamsError(ValueError):
    """A settings file or override that the code would misread: one line naming the key."""


def within(low: float | None = None, high: float | None = None):
    """A field whose value must lie in [low, high] (None: unbounded on that side)."""
    return field(metadata={"range": (low, high)})


@dataclass(frozen=True)
class Data:
    val_fraction: float = within(0, 0.5)
    test_fraction: float = within(0, 0.5)
    min_provided_split: int = within(0)
    seed: int
    max_file_mb: float = within(0)
    max_pixels: int = within(1)
    min_side: int = within(1)
    max_rejected_fraction: float = within(0, 1)
    min_images_per_class: int = within(1)
    max_unknown_patient_fraction: float = within(0, 1)
    subset_per_class: int = within(0)


@dataclass(frozen=True)
class Preprocess:
    image_size: int = within(32, 1024)
    intensity: Literal["none", "equalize"]


@dataclass(frozen=True)
class Model:
    init: str  # scratch | imagenet | path/to/model.pt | models:/<name>@<alias>


@dataclass(frozen=True)
class Photometric:
    p: float = within(0, 1)
    gamma: float = within(0)
    blur: float = within(0)
    sharpen: float = within(0)
    noise: float = within(0)
    downscale: float = within(0, 1)
    jpeg: int = within(0, 95)


@dataclass(frozen=True)
class Augment:
    rotate_deg: float = within(0, 180)
    scale: list[float]
    aspect: float = within(1)
    translate: float = within(0, 1)
    letterbox: float = within(0, 1)
    brightness: float = within(0, 1)
    contrast: float = within(0, 1)
    hflip: bool
    photometric: Photometric


@dataclass(frozen=True)
class Train:
    epochs: int = within(0)
    batch_size: int = within(1)
    lr: float = within(0)
    weight_decay: float = within(0)
    warmup_epochs: float = within(0)
    label_smoothing: float = within(0, 0.5)
    patience: int = within(1)
    class_weighting: Literal["balanced", "none"]
    bf16: Literal["auto", "on", "off"]
    ema_decay: float = within(0, 0.99999)
    threads: int = within(0)
    memory_limit_gb: float = within(0)
    augment: Augment


@dataclass(frozen=True)
class Evaluate:
    target_sensitivity: float = within(0, 1)
    threshold_rule: Literal["clean", "pooled", "worst"]
    calibration: Literal["clean", "stress"]
    stress_images: int = within(1)
    stress_families: list[str]
    stress_source_max_side: int = within(32)
    batch_size: int = within(1)
    # the fixed golden evaluation set (pipeline/data/golden.py): "" = none; a folder NORMAL/ PNEUMONIA/,
    # relative to the repository ($XRAY_REPO) unless absolute, whose content must match the pin
    golden_dir: str
    golden_fingerprint: str


@dataclass(frozen=True)
class Gate:
    enabled: bool
    target_false_refusal: float = within(0, 1)
    max_fit_images: int = within(1)
    distance_margin: float = within(1)


@dataclass(frozen=True)
class Drift:
    psi: float = within(0)
    refusal_rate: float = within(0, 1)
    positive_rate_shift: float = within(0, 1)
    min_records: int = within(0)
    psi_watch: float = within(0)


@dataclass(frozen=True)
class Registry:
    experiment: str
    model_name: str


@dataclass(frozen=True)
class Shadow:
    # a pending challenger's live answers in the background, before promotion (docs/review.md)
    min_cases: int = within(0)
    min_days: float = within(0)
    max_days: float = within(0)
    check_minutes: float = within(0.01)


@dataclass(frozen=True)
class Promotion:
    # floors: a free subset of FLOOR_METRICS (a policy may set some floors only)
    floors: dict[str, float]
    stress_floors: dict[str, float]
    external_floors: dict[str, float]
    golden_floors: dict[str, float]
    golden_no_worse: bool
    non_inferiority_margin: float = within(0, 1)
    confidence: float = within(0.5, 0.9999)
    bootstrap_samples: int = within(10)
    first_champion: Literal["promote_if_floors", "manual"]
    approval: Literal["required", "auto"]
    approval_timeout_hours: float = within(0)
    shadow: Shadow


@dataclass(frozen=True)
class Site:
    # the site's operating point from its confirmed cases (pipeline/evaluation/site.py)
    target_sensitivity: float = within(0.5, 1)
    confidence: float = within(0.5, 0.9999)
    min_cases: int = within(2)
    min_per_class: int = within(1)
    folds: int = within(2, 20)
    floors: dict[str, float]
    margin: float = within(0, 1)
    train_share: float = within(0, 1)


@dataclass(frozen=True)
class Dag:
    retrain_on_unchanged_data: bool
    train_timeout_minutes: float = within(1)
    retries: int = within(0)
    retry_delay_seconds: float = within(0)


@dataclass(frozen=True)
class Params:
    data: Data
    preprocess: Preprocess
    model: Model
    train: Train
    evaluate: Evaluate
    gate: Gate
    drift: Drift
    registry: Registry
    promotion: Promotion
    site: Site
    dag: Dag

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML, checkpoints, XCom)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """{'train.lr': 0.002, ...}: MLflow params are flat."""
        def walk(node: dict, prefix: str) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, value in node.items():
                if isinstance(value, dict):
                    out.update(walk(value, f"{prefix}{key}."))
                else:
                    out[prefix + key] = value
            return out
        return walk(self.to_dict(), "")


def parse(values: Any) -> Params:
    """`values` (a params.yaml mapping) checked against the schema and typed: whole numbers given
    for a float become floats, YAML's on/off booleans become the words. Raises ParamsError."""
    return _build(Params, values, "")


def _build(cls: type, values: Any, prefix: str):
    section = prefix.rstrip(".") or "params"
    if not isinstance(values, dict):
        raise ParamsError(f"{section}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ParamsError(f"unknown parameter '{prefix}{key}' (known in {section}: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            raise ParamsError(f"missing parameter '{prefix}{name}'")
        kwargs[name] = _value(prefix + name, values[name], hints[name], f.metadata.get("range"))
    return cls(**kwargs)


def _value(name: str, value: Any, hint: Any, bounds: tuple | None):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, name + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value not in args:
            raise ParamsError(f"{name}={value!r}: expected one of {', '.join(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{name}={value!r}: expected a list")
        return [_value(f"{name}[{i}]", v, args[0], bounds) for i, v in enumerate(value)]
    if origin is dict:  # promotion floors
        if not isinstance(value, dict):
            raise ParamsError(f"{name}={value!r}: expected a mapping of {', '.join(FLOOR_METRICS)}")
        for key in value:
            if key not in FLOOR_METRICS:
                raise ParamsError(f"unknown parameter '{name}.{key}' (known in {name}: {', '.join(FLOOR_METRICS)})")
        return {key: _value(f"{name}.{key}", v, float, (0, 1)) for key, v in value.items()}
    value = _scalar(name, value, hint)
    low, high = bounds or (None, None)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ParamsError(f"{name}={value!r}: expected a value in [{low}, {'inf' if high is None else high}]")
    return value


def _scalar(name: str, value: Any, hint: type):
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)  # typed once here: the code reads floats as floats
    if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    raise ParamsError(f"{name}={value!r}: expected {hint.__name__}")
