"""A data version as training and evaluation start from it: the usable samples (discovered, golden
patients dropped, subset, validated) and their patient-level split, with the golden set attached.

Kept apart from pipeline.data.dataset because the golden set is itself discovered and validated by
dataset's code: golden depends on dataset, and this module on both.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.data import golden as golden_set
from pipeline.data.cache import PreprocessCache
from pipeline.data.dataset import Splits, ValidationReport, open_cache, discover, split, subset, validate
from pipeline.settings.params import Params


def prepare(root: str | Path, params: Params, cache: PreprocessCache | None = None, golden=None):
    """discover -> drop golden patients -> subset -> validate -> drop copies of golden images:
    the usable samples of a data version and the report (what the DAG's validate task, `python -m
    pipeline validate` and `load` run). `golden`: a loaded pipeline.data.golden.GoldenSet; by default the
    one params configure, verified against its pin first (GoldenSetError when it changed)."""
    root = Path(root)
    cache = cache or open_cache(params)
    golden = golden_set.load(params, cache) if golden is None else golden
    samples, dropped = golden_set.exclude(discover(root), golden)
    samples = subset(samples, params.data.subset_per_class, params.data.seed)
    usable, report = validate(samples, params, cache, root)
    usable, copies = golden_set.exclude(usable, golden)
    report.golden_excluded = dropped + copies
    report.golden = golden.summary() if golden else {}
    return usable, report


def load(root: str | Path, params: Params) -> tuple[Splits, ValidationReport, PreprocessCache]:
    """prepare (discover, golden exclusion, subset, validate) -> split, with the golden set (when
    one is configured) attached as `splits.golden`: what training and evaluation start from."""
    cache = open_cache(params)
    golden = golden_set.load(params, cache)
    usable, report = prepare(root, params, cache, golden)
    splits = split(usable, params)
    splits.golden = golden.samples if golden else []
    return splits, report, cache
