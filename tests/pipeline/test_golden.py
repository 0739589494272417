"""The golden evaluation set (pipeline.data.golden): pinned by its content fingerprint, validated like the
data, its patients dropped from every data version, scored beside the held-out set; an edited set
is refused. Golden folders are symlinks to real films of the shared dataset."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.settings import config
from pipeline.data import dataset, golden
from pipeline.data import training_data


def link_golden(source: Path, dest: Path, per_class: int, seed: int) -> Path:
    """dest/{NORMAL,PNEUMONIA}/ holding symlinks to whole patients of `source` (no copies)."""
    for sample in dataset.subset(dataset.discover(source), per_class, seed):
        link = dest / sample.path.parent.name / sample.path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(sample.path.resolve())
    return dest


def with_golden(params, folder: Path, pin: str | None = None):
    return config.apply_overrides(params, {
        "evaluate.golden_dir": str(folder),
        "evaluate.golden_fingerprint": golden.fingerprint(folder)[0] if pin is None else pin})


@pytest.fixture
def train_folder(shared_datasets) -> Path:
    return shared_datasets / "chest_xray" / "train"


def test_golden_patients_never_reach_a_data_versions_splits(tmp_path, train_folder, tiny_params):
    # a data version that holds the golden patients (the same seeded patient order: 12 is a prefix of 60)
    version = tmp_path / "version"
    dataset.link_subset(train_folder, version, 60, seed=0)
    gold = link_golden(train_folder, tmp_path / "golden", 12, seed=0)
    # ... and one golden film pushed again under a new name and another patient id (patients.csv)
    film = sorted((gold / "NORMAL").iterdir())[0]
    (version / "train" / "NORMAL" / "scan-0001.jpeg").symlink_to(film.resolve())
    (version / "patients.csv").write_text("file,patient\ntrain/NORMAL/scan-0001.jpeg,ALIAS-0001\n")
    golden_patients = {s.patient for s in dataset.discover(gold)}

    plain, _, _ = training_data.load(version, tiny_params)   # without the golden set: they train and test
    assert golden_patients <= {s.patient for _, part in plain.items() for s in part}
    assert not plain.golden

    params = with_golden(tiny_params, gold)
    splits, report, _ = training_data.load(version, params)
    scored_apart = [s for name, part in splits.items() if name != "golden" for s in part]
    assert splits.train and splits.val and splits.test
    assert not golden_patients & {s.patient for s in scored_apart}
    assert not {s.digest for s in splits.golden} & {s.digest for s in scored_apart}   # no copy either
    # counted and reported
    in_version = [p for p in (version / "train").rglob("*") if p.is_file() and dataset.patient_id(p.name) in golden_patients]
    by_patient = [g for g in report.golden_excluded if g["why"] == "golden patient"]
    assert len(by_patient) == len(in_version) > 0
    assert [g["patient"] for g in report.golden_excluded if g["why"] == "golden image"] == ["ALIAS-0001"]
    assert report.golden["fingerprint"] == params.evaluate.golden_fingerprint
    assert report.golden["images"] == len(splits.golden) == len(list(gold.rglob("*.jpeg")))
    assert f"{len(report.golden_excluded)} images of {len(golden_patients) + 1} golden patients" in report.summary()
    assert "golden" in splits.counts() and json.loads(json.dumps(report.to_dict()))["golden_excluded"]
    # the DAG's validate task and `python -m pipeline validate` run the same path
    usable, again = training_data.prepare(version, params)
    assert len(again.golden_excluded) == len(report.golden_excluded)
    assert not golden_patients & {s.patient for s in usable}


def test_an_edited_missing_or_unpinned_golden_set_is_refused(tmp_path, train_folder, tiny_params, monkeypatch,
                                                              capsys):
    version = tmp_path / "version"
    dataset.link_subset(train_folder, version, 20, seed=3)
    gold = link_golden(train_folder, tmp_path / "golden", 12, seed=9)
    pin = golden.fingerprint(gold)[0]
    # relative to the repository the DAG works in ($XRAY_REPO)
    monkeypatch.setenv("XRAY_REPO", str(tmp_path))
    params = config.apply_overrides(tiny_params, {"evaluate.golden_dir": "golden", "evaluate.golden_fingerprint": pin})
    assert golden.main(["fingerprint", str(gold)]) == 0 and capsys.readouterr().out.strip() == pin
    assert len(training_data.load(version, params)[0].golden) == len(list(gold.rglob("*.jpeg")))   # as pinned: runs

    def refused(match: str):
        for run in (lambda: training_data.load(version, params), lambda: training_data.prepare(version, params)):
            with pytest.raises(golden.GoldenSetError, match=match):
                run()

    # relabelled: one NORMAL film moved to PNEUMONIA
    film = sorted((gold / "NORMAL").iterdir())[0]
    moved = film.rename(gold / "PNEUMONIA" / film.name)
    refused(f"changed since it was pinned: its content fingerprint is [0-9a-f]{{64}} .*is {pin}")
    moved.rename(film)
    assert golden.fingerprint(gold)[0] == pin
    # one film's content replaced (same name), one film added, one film removed
    other = sorted(p for p in (train_folder / "NORMAL").iterdir() if p.name not in {q.name for q in gold.rglob("*")})
    target = film.readlink()
    film.unlink()
    film.symlink_to(other[0])
    refused("changed since it was pinned")
    film.unlink()
    refused("changed since it was pinned")
    film.symlink_to(target)
    (gold / "NORMAL" / other[1].name).symlink_to(other[1])
    refused("changed since it was pinned")
    (gold / "NORMAL" / other[1].name).unlink()
    training_data.load(version, params)
    # missing, and not pinned
    os.rename(gold, tmp_path / "elsewhere")
    refused("golden set not found at .*golden .*dvc pull golden.dvc")
    os.rename(tmp_path / "elsewhere", gold)
    refused_params = config.apply_overrides(params, {"evaluate.golden_fingerprint": "\"\""})
    with pytest.raises(golden.GoldenSetError, match=f"no pinned fingerprint.*prints {pin}"):
        training_data.load(version, refused_params)
    # the CLI says it in one line
    from pipeline import cli

    film.unlink()
    film.symlink_to(other[0])
    overrides = {"evaluate.golden_dir": "golden", "evaluate.golden_fingerprint": pin, "preprocess.image_size": 64,
                 "data.min_side": 32, "data.min_images_per_class": 10}
    assert cli.main(["validate", "--data", str(version), *[f"--set={k}={v}" for k, v in overrides.items()]]) == 1
    assert "changed since it was pinned" in capsys.readouterr().err


def test_golden_settings_are_typed_and_not_overridable_in_a_dag_run():
    params = config.load_params()
    assert params.evaluate.golden_dir == "" and params.promotion.golden_floors == {}
    assert golden.load(params) is None   # off: nothing checked, nothing dropped
    with pytest.raises(config.ParamsError, match="golden_floors.auroc"):
        config.apply_overrides(params, {"promotion.golden_floors": {"auroc": 0.9}})
    import importlib.util

    pytest.importorskip("airflow")
    spec = importlib.util.spec_from_file_location("retrain_xray", config.REPO_ROOT / "dags" / "retrain_xray.py")
    retrain = importlib.util.module_from_spec(spec)   # a DAG file is a script, not a package module
    spec.loader.exec_module(retrain)
    assert retrain.check_overrides(["evaluate.golden_dir=", "evaluate.golden_fingerprint=abc",
                                    "promotion.golden_no_worse=false"]) == [
        "evaluate.golden_dir=", "evaluate.golden_fingerprint=abc", "promotion.golden_no_worse=false"]


def test_challengers_training_run_is_scored_on_the_golden_set(tmp_path, small_dataset, train_folder, tiny_params):
    """train() (the DAG's train task, through tracking.tracked_train) reports golden_* beside held-out."""
    from pipeline.mlops.tracking import _data_tags, _run_metrics
    from pipeline.training.train import train

    gold = link_golden(train_folder, tmp_path / "golden", 12, seed=0)   # patients of small_dataset too
    result = train(with_golden(tiny_params, gold), small_dataset, tmp_path / "run", progress=False)
    m = result.metrics
    n = len(list(gold.rglob("*.jpeg")))
    assert m["golden_n"] == n == m["golden_tn"] + m["golden_fp"] + m["golden_fn"] + m["golden_tp"]
    assert 0 <= m["golden_auc"] <= 1 and 0 <= m["golden_ece"] <= 1 and m["golden_threshold"] == m["threshold"]
    logged = _run_metrics(m)   # MLflow metric names of the run
    assert logged["golden_auc"] == m["golden_auc"] and "test_golden_auc" not in logged and "test_auc" in logged
    report = json.loads((tmp_path / "run" / "validation_report.json").read_text())
    assert report["golden_excluded"] and result.dataset["golden_excluded"] == len(report["golden_excluded"])
    tags = _data_tags(result.dataset, None)
    assert tags["golden.fingerprint"] == golden.fingerprint(gold)[0] and int(tags["data.golden_excluded"]) > 0
    assert tags["data.count.golden"] == str(n)
    from pipeline.mlops import model_card

    assert "**Golden set**" in model_card.render(1, m, tiny_params, "x", result.dataset["counts"])


def test_detect_pulls_the_golden_set_from_its_own_remote(tmp_path, monkeypatch):
    """versioning.pull_golden (the DAG's detect task): `dvc pull data/golden.dvc` from the remote its
    pointer names, never the data engineers' remote ($XRAY_DVC_REMOTE)."""
    import subprocess
    import sys

    from pipeline.data import versioning

    repo = tmp_path / "repo"
    (repo / "data" / "golden" / "NORMAL").mkdir(parents=True)
    (repo / "data" / "golden" / "NORMAL" / "IM-0001-0001.txt").write_text("film")

    def dvc(*args):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q")
    dvc("remote", "add", "-d", "local", str(tmp_path / "data-remote"))
    dvc("remote", "add", "golden", str(tmp_path / "golden-remote"))
    dvc("add", "-q", "data/golden")
    pointer = repo / "data" / "golden.dvc"
    pointer.write_text(pointer.read_text().replace("  path: golden", "  path: golden\n  remote: golden"))
    dvc("push", "-q", "data/golden.dvc")
    assert (tmp_path / "golden-remote").is_dir() and not (tmp_path / "data-remote").exists()
    pin = golden.fingerprint(repo / "data" / "golden")[0]
    for path in [repo / "data" / "golden", repo / ".dvc" / "cache"]:
        shutil.rmtree(path)

    monkeypatch.setenv("XRAY_DVC_REMOTE", str(tmp_path / "data-remote"))   # the data's remote: not used
    assert versioning.pull_golden("", repo=repo) is None                   # no golden set configured
    assert versioning.pull_golden("elsewhere", repo=repo) is None          # not DVC-tracked: nothing to pull
    pulled = versioning.pull_golden("data/golden", repo=repo)
    assert pulled["path"] == "data/golden" and pulled["nfiles"] == 1
    assert golden.fingerprint(repo / "data" / "golden")[0] == pin
