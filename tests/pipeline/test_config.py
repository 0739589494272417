"""Settings (pipeline.settings.config): one check when params are read, one line naming the key, for the
CLI, the DAG and a custom $XRAY_PARAMS file alike; nothing falls back silently to a default."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from pipeline.settings import config


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown parameter 'train.epoch' (did you mean 'train.epochs'?)"),
    ("train.epochs=three", "train.epochs='three': expected int"),
    ("train.bf16=maybe", "train.bf16='maybe': expected one of auto, on, off"),
    ("train.class_weighting=inverse", "expected one of balanced, none"),
    ("promotion.first_champion=always", "expected one of promote_if_floors, manual"),
    ("evaluate.threshold_rule=median", "expected one of clean, pooled, worst"),
    ("preprocess.intensity=clahe", "expected one of none, equalize"),
    ("data.val_fraction=0.9", "data.val_fraction=0.9: expected a value in [0, 0.5]"),
    ("train.batch_size=0", "expected a value in [1, inf]"),
    ("gate.enabled=maybe", "gate.enabled='maybe': expected bool"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(config.ParamsError) as err:
        config.load_params(overrides=[override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_values_parse_as_the_code_reads_them():
    p = config.load_params(overrides=["train.lr=1e-3", "train.bf16=on", "train.epochs=3",
                                      "promotion.floors={auc: 0.8}", "evaluate.target_sensitivity=1"])
    assert p.train.lr == 0.001                       # YAML 1.1 alone would read "1e-3" as a string
    assert p.train.bf16 == "on"                      # YAML reads on/off as booleans
    assert p.train.epochs == 3 and p.promotion.floors == {"auc": 0.8}
    # a whole number for a float key becomes a float once, here: the code reads values without casts
    assert type(p.evaluate.target_sensitivity) is float and type(p.train.epochs) is int


def test_settings_are_read_only_and_round_trip():
    p = config.load_params(overrides=["train.epochs=3"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.train.epochs = 4                           # checked once: nobody changes them unchecked later
    assert config.apply_overrides(p, {}) == p        # to_dict() and parse() lose nothing
    assert p.flat()["train.augment.photometric.jpeg"] == 30 and p.flat()["promotion.floors.auc"] == 0.9
    with pytest.raises(config.ParamsError, match="unknown parameter 'promotion.floors.recall'"):
        config.apply_overrides(p, {"promotion.floors": {"recall": 0.9}})


def test_a_params_file_with_an_unknown_or_missing_key_is_refused(tmp_path):
    params = yaml.safe_load(config.PARAMS_FILE.read_text())
    params["train"]["channels_last"] = True          # a key nothing reads any more
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(config.ParamsError, match="unknown parameter 'train.channels_last'"):
        config.load_params(tmp_path / "extra.yaml")
    del params["train"]["channels_last"], params["train"]["ema_decay"]
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(config.ParamsError, match="missing parameter 'train.ema_decay'"):
        config.load_params(tmp_path / "missing.yaml")


def test_cli_prints_the_error_not_a_traceback():
    run = subprocess.run([sys.executable, "-m", "pipeline", "train", "--set", "train.epoch=3"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == "error: unknown parameter 'train.epoch' (did you mean 'train.epochs'?)"
