"""Challenger and champion scored on the fixed golden set through the real path: evaluate_candidates
against a real registry, the decision, and the figures logged on the version (pipeline.data.golden)."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from pipeline.mlops import aliases, candidates, policy, versions
from pipeline.settings import config
from pipeline.data import dataset, golden


def test_challenger_and_champion_are_scored_on_the_golden_set(mlflow_server, model_name, register, loose_params,
                                                              small_dataset, shared_datasets, tmp_path):
    gold = tmp_path / "golden"   # symlinks to whole patients of the real training folder, some in small_dataset
    for sample in dataset.subset(dataset.discover(shared_datasets / "chest_xray" / "train"), 12, seed=0):
        (gold / sample.path.parent.name).mkdir(parents=True, exist_ok=True)
        (gold / sample.path.parent.name / sample.path.name).symlink_to(sample.path.resolve())
    n_golden = len(list(gold.rglob("*.jpeg")))
    params = config.apply_overrides(loose_params, {"evaluate.golden_dir": str(gold),
                                                   "evaluate.golden_fingerprint": golden.fingerprint(gold)[0]})
    client = MlflowClient(mlflow_server)
    v1 = register("constant")
    aliases.promote(v1, force=True)
    v2 = register("good")

    scores = candidates.evaluate_candidates(v2, params, small_dataset)
    ch, cp = scores["challenger"]["metrics"], scores["champion"]["metrics"]
    assert scores["n_golden"] == ch["golden_n"] == cp["golden_n"] == n_golden
    assert scores["golden"]["fingerprint"] == params.evaluate.golden_fingerprint and scores["golden_excluded"] > 0
    assert cp["golden_auc"] == pytest.approx(0.5) and cp["golden_specificity"] == 0   # the zeroed model
    assert ch["golden_auc"] > 0.6 and 0 <= ch["golden_ece"] <= 1
    for m in (ch, cp):   # counts, at each model's own served threshold
        assert m["golden_tn"] + m["golden_fp"] + m["golden_fn"] + m["golden_tp"] == n_golden
    assert cp["golden_threshold"] == cp["threshold"] and ch["golden_threshold"] == ch["threshold"]
    assert scores["comparison"]["golden"]["delta"] == pytest.approx(ch["golden_auc"] - 0.5, abs=1e-6)

    decision = policy.decide(scores, params)
    assert decision["promote"] and f"[golden set, {n_golden} images: challenger AUC {ch['golden_auc']:.4f}" \
        in decision["reason"]
    aliases.promote(v2, decision)
    logged = versions.version_scores(client, model_name, v2)   # metrics of the version's logged model
    assert logged["challenger.golden_auc"] == pytest.approx(ch["golden_auc"])
    assert logged["champion.golden_auc"] == pytest.approx(0.5) and logged["challenger.golden_n"] == n_golden
    tags = client.get_model_version(model_name, str(v2)).tags
    assert "[golden set" in tags["decision_reason"] and "compare.golden.auc_delta" in tags

    # the golden set edited after it was pinned: evaluation refuses to run
    outside = sorted((shared_datasets / "chest_xray" / "train" / "NORMAL").iterdir())[-1]
    (gold / "NORMAL" / "extra.jpeg").symlink_to(outside)
    with pytest.raises(golden.GoldenSetError, match="changed since it was pinned"):
        candidates.evaluate_candidates(v2, params, small_dataset)
