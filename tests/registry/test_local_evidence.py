"""The site's confirmed cases in promotion: a data version with a local/ folder (what `python -m
pipeline site export` writes) judges every challenger at its own site operating point, paired with
the champion; a challenger better in distribution but worse on the site's cases is rejected, and a
promoted one is served at its own site operating point. Real models, real registry, real films."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.data import dataset, preprocess
from pipeline.inference.predict import Predictor
from pipeline.mlops import aliases, audit, candidates, loading, policy, site_version


def film_logits(trained_checkpoint, films) -> tuple[Predictor, list[float]]:
    """The trained model and its logit for each of `films`: the ranking the site's labels follow."""
    predictor = Predictor.from_checkpoint(trained_checkpoint, device="cpu")
    return predictor, [predictor.logit_features(preprocess.to_array(preprocess.load_image(f), predictor.image_size))[0]
                       for f in films]


def site_data(base, tmp_path, films, logits, agree: bool, normal_share: float = 0.5):
    """base's images (symlinked) plus local/<CLASS>/ of `films`, labelled by the site: in the order of
    the trained model's own ranking (`logits`, agree) or against it; `normal_share` of them NORMAL."""
    root = tmp_path / ("agree" if agree else "against")
    for path in sorted(base.rglob("*.jpeg")):
        link = root / path.relative_to(base)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    order = np.argsort(logits)   # lowest first
    normals = int(round(len(films) * normal_share))
    positive = set(order[normals:] if agree else order[: len(films) - normals])
    for i, f in enumerate(films):
        label = "PNEUMONIA" if i in positive else "NORMAL"
        key = hashlib.sha256(f.name.encode()).hexdigest()[:16]
        dest = root / "local" / label / f"site-{key}-{i:04d}.jpeg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(f.resolve())
    return root


@pytest.fixture
def films(shared_datasets):
    return sorted((shared_datasets / "fullres_samples").glob("*/*.jpeg"))[:80]


def test_local_set_is_its_own_split(small_dataset, films, trained, tmp_path):
    root = site_data(small_dataset, tmp_path, films, film_logits(trained["checkpoint"], films)[1], agree=True)
    samples = dataset.discover(root)
    local = [s for s in samples if s.split_hint == "local"]
    assert len(local) == 80 and all(s.patient.startswith("SITE-") for s in local)


def test_challenger_better_in_distribution_but_worse_locally_is_rejected(
        mlflow_server, model_name, register, trained, loose_params, small_dataset, films, tmp_path):
    champion = register("constant")            # AUC 0.5 everywhere
    aliases.promote(champion, force=True)
    challenger = register("good")              # better on the held-out patients and under shift
    against = site_data(small_dataset, tmp_path, films, film_logits(trained["checkpoint"], films)[1], agree=False)
    scores = candidates.evaluate_candidates(challenger, loose_params, against)
    ch, cp = scores["challenger"]["metrics"], scores["champion"]["metrics"]
    assert ch["auc"] > cp["auc"] and ch["stress_mean_auc"] > cp["stress_mean_auc"]    # better in distribution
    assert ch["local_n"] == 80 and ch["local_auc"] < 0.2                              # the site says otherwise
    local = scores["comparison"]["local"]
    assert local["high"] < 0
    decision = policy.decide(scores, loose_params)
    assert not decision["promote"]
    # under the site floors at its own (cross-fitted) operating point, which is checked first
    assert any(f.startswith("local ") for f in decision["floors_failed"]), decision["reason"]
    # and the paired verdict alone says the same
    verdict = policy._paired_verdict(challenger, champion, scores["comparison"], loose_params.promotion)
    assert not verdict[0] and "significantly worse on the site's confirmed cases" in verdict[1]


def test_promoted_challenger_is_served_at_its_own_site_operating_point(
        mlflow_server, model_name, register, trained, loose_params, small_dataset, films, tmp_path):
    champion = register("constant")
    aliases.promote(champion, force=True)
    challenger = register("good")
    # the site's labels follow the model's ranking but not its trained threshold (the case a site
    # operating point is for), whatever that threshold makes of these films on this machine's
    # 1-epoch fixture: the site's boundary lies a quarter of the films away from the trained one's
    predictor, logits = film_logits(trained["checkpoint"], films)
    trained_normal = np.mean([predictor.decide(logit).label == "NORMAL" for logit in logits])
    share = float(np.clip(trained_normal + 0.25 if trained_normal <= 0.5 else trained_normal - 0.25, 0.25, 0.75))
    agree = site_data(small_dataset, tmp_path, films, logits, agree=True, normal_share=share)
    scores = candidates.evaluate_candidates(challenger, loose_params, agree)
    assert scores["challenger"]["metrics"]["local_auc"] > 0.95 and scores["comparison"]["local"]["low"] > 0
    decision = policy.decide(scores, loose_params)
    assert decision["promote"], decision["reason"]
    assert aliases.promote(challenger, decision)["promoted"]
    site = site_version.adapt_version(challenger, scores["local_cases"], loose_params, name=model_name)
    assert site["promoted"] and site["version"], site
    client = MlflowClient(mlflow_server)
    mv = client.get_model_version(model_name, str(site["version"]))
    assert mv.tags["site.parent_version"] == str(challenger) and mv.tags["site.weights_version"] == str(challenger)
    last = audit.timeline(client, model_name)[-1]   # the move to the site's answer, on record
    assert (last["kind"], last["from_version"], last["to_version"]) == ("site_adaptation", challenger, site["version"])
    assert last["reason"].startswith(f"site operating point for v{challenger}")
    served, _ = loading.load_champion(model_name)
    assert served.threshold != pytest.approx(predictor.threshold)      # its own, not the trained one
    assert served.metadata["site"]["parent_version"] == challenger
