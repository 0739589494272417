"""Shadow mode (issue 27 item 1): a pending challenger answers live requests in the background,
never changing, slowing or showing up in the doctor's answer.

Real components: the web suite's MLflow server with real registered versions (the champion v1; a
challenger with the same network and threshold 0, so it answers PNEUMONIA for everything and its
logit must equal the champion's; a challenger with NaN weights, which cannot be put in service),
the real inference path, the Django test client, and gunicorn for the background thread."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from django.test import override_settings
from mlflow import MlflowClient
from scipy.stats import beta

from pipeline.mlops.server import CHALLENGER, CHAMPION
from livesite import Site, manage, predict, site_env
from webutil import api, free_port, make_user, register_version, staff_client, threshold_variant, upload


def nan_variant(checkpoint: Path, dest: Path) -> Path:
    """The tiny network with every weight NaN: a broken model (its warm-up refuses it)."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ckpt["state_dict"] = {k: (v * float("nan") if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, dest)
    return dest


@pytest.fixture(scope="module")
def challengers(registry, tiny_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shadow-models")
    good = register_version(registry["uri"], registry["name"], threshold_variant(tiny_checkpoint, 0.0, tmp / "t0.pt"))
    broken = register_version(registry["uri"], registry["name"], nan_variant(tiny_checkpoint, tmp / "nan.pt"))
    point(registry, good)
    return {"good": good, "broken": broken}


def point(registry, version) -> None:
    """Move the challenger alias (the DAG's train task does it on every new version)."""
    MlflowClient(tracking_uri=registry["uri"]).set_registered_model_alias(registry["name"], CHALLENGER, str(version))


def make_shadow(registry, size: int = 16):
    """A process shadow whose worker is not started: the test drains the queue in its own thread
    (inside the test's transaction). The live test below runs the real thread."""
    from diagnosis.champion import ChampionHolder
    from diagnosis.shadow import runner

    holder = ChampionHolder(runner.PendingRegistry(registry["uri"], registry["name"], CHALLENGER),
                            check_seconds=3600, retry_seconds=3600, load_timeout=120)
    holder.refresh()
    return runner.Shadow(holder, size=size, start=False)


@pytest.fixture
def shadow_on(registry, challengers, champion):
    from diagnosis.shadow import runner

    point(registry, challengers["good"])
    shadow = make_shadow(registry)
    previous = runner.reset(shadow)
    with override_settings(XRAY_SHADOW=True):
        yield shadow
    runner.reset(previous)
    shadow.close()


def answer_of(d) -> tuple:
    heat = Path(d.heatmap.path).read_bytes() if d.heatmap else b""
    return d.label, d.probability, d.threshold, d.logit, d.model_version, heat


def test_shadow_never_changes_the_doctors_answer(doctor, registry, challengers, champion, xray_jpeg, shadow_on):
    from diagnosis import analysis
    from diagnosis.models import ShadowAnswer

    with override_settings(XRAY_SHADOW=False):
        off = analysis.diagnose(doctor, "a.jpeg", xray_jpeg, champion.get(), source="web")
    on = analysis.diagnose(doctor, "a.jpeg", xray_jpeg, champion.get(), source="web")
    assert shadow_on.queue.qsize() == 1 and not ShadowAnswer.objects.exists()  # queued, not answered inline
    assert shadow_on.drain() == 1
    assert answer_of(on) == answer_of(off) and on.model_version == registry["v1"]
    s = ShadowAnswer.objects.get(diagnosis=on)
    assert s.model_version == challengers["good"] and s.model_name == registry["name"]
    # same network, threshold 0: its raw output is the champion's, and it calls everything PNEUMONIA
    assert s.logit == pytest.approx(on.logit, abs=1e-5) and s.label == "PNEUMONIA" and s.threshold == 0.0
    assert s.heatmap and Path(s.heatmap.path).stat().st_size > 0 and s.ms > 0 and not s.refusal
    assert not ShadowAnswer.objects.filter(diagnosis=off).exists()  # nothing queued while off


def test_a_broken_challenger_counts_as_failed(doctor, registry, challengers, champion, xray_jpeg, shadow_on):
    from diagnosis import analysis
    from diagnosis.models import ShadowAnswer, ShadowTally

    point(registry, challengers["broken"])
    shadow = make_shadow(registry)  # its holder tried to load the NaN model: refused at warm-up
    assert shadow.holder.peek() is None and shadow.holder.alias_version == challengers["broken"]
    from diagnosis.shadow import runner

    runner.reset(shadow)
    with override_settings(XRAY_SHADOW=False):
        off = analysis.diagnose(doctor, "a.jpeg", xray_jpeg, champion.get(), source="api")
    on = analysis.diagnose(doctor, "a.jpeg", xray_jpeg, champion.get(), source="api")
    shadow.drain()
    assert answer_of(on) == answer_of(off)
    assert not ShadowAnswer.objects.exists()
    assert ShadowTally.objects.get(model_version=challengers["broken"]).failed == 1


def test_answers_stored_never_shown(doctor_client, doctor, registry, challengers, xray_jpeg, shadow_on):
    from diagnosis.models import Diagnosis, ShadowAnswer

    r = api(doctor_client, xray_jpeg, query="?heatmap=1")
    assert r.status_code == 200
    body = r.json()
    page = doctor_client.get(body["result_url"]).content.decode()
    shadow_on.drain()
    s = ShadowAnswer.objects.get(diagnosis_id=body["id"])
    assert s.heatmap
    # neither the API answer nor the result page carries anything of the challenger
    assert "shadow" not in r.content.decode().lower() and f"v{s.model_version}" not in page
    assert s.heatmap.name not in page and "challenger" not in page.lower()
    assert body["model_version"] == registry["v1"] and body["label"] == Diagnosis.objects.get(pk=body["id"]).label
    assert doctor_client.get(f"/staff/shadow/{s.pk}/shadow").status_code == 302  # doctors are refused
    upload(doctor_client, xray_jpeg)  # the web page's answers are shadowed too
    assert shadow_on.drain() == 1 and ShadowAnswer.objects.count() == 2


def test_full_queue_drops_and_counts(doctor, registry, challengers, champion, xray_jpeg, shadow_on):
    from diagnosis import analysis
    from diagnosis.models import ShadowAnswer, ShadowTally
    from diagnosis.shadow import evidence, runner

    small = make_shadow(registry, size=1)
    runner.reset(small)
    made = [analysis.diagnose(doctor, "a.jpeg", xray_jpeg, champion.get(), source="pacs", heatmap=False)
            for _ in range(3)]
    assert small.queue.qsize() == 1
    assert small.drain() == 1  # and the drops are written
    assert ShadowTally.objects.get(model_version=challengers["good"]).dropped == 2
    assert ShadowAnswer.objects.get().diagnosis_id == made[0].pk
    figures = evidence(registry["name"], int(challengers["good"]))
    assert (figures["answered"], figures["dropped"], figures["failed"]) == (1, 2, 0)
    # imports are not live traffic: not shadowed
    analysis.diagnose(doctor, "a.jpeg", xray_jpeg, champion.get(), source="import", heatmap=False)
    assert small.queue.qsize() == 0


def test_only_a_pending_challenger_is_shadowed(doctor, registry, challengers, champion, xray_jpeg, shadow_on):
    from diagnosis import analysis
    from diagnosis.shadow import runner
    from pipeline.mlops import aliases, server

    client = server.client_of(registry["uri"])
    good = challengers["good"]
    assert runner.pending(client, registry["name"]) == int(good)
    client.set_model_version_tag(registry["name"], good, "decision", "pending_approval")
    assert runner.pending(client, registry["name"]) == int(good)
    try:
        aliases.reject(int(good), {"reason": "worse on local cases", "champion_version": registry["v1"]},
                       name=registry["name"])
        assert runner.pending(client, registry["name"]) is None
        shadow_on.holder.refresh()  # its next check: the rejected version leaves service
        assert shadow_on.holder.peek() is None
        analysis.diagnose(doctor, "a.jpeg", xray_jpeg, champion.get(), source="web", heatmap=False)
        assert shadow_on.queue.qsize() == 0
    finally:
        client.delete_model_version_tag(registry["name"], good, "decision")
    point(registry, registry["v1"])  # the champion's own version is never its challenger
    assert MlflowClient(tracking_uri=registry["uri"]).get_model_version_by_alias(
        registry["name"], CHAMPION).version == registry["v1"]
    assert runner.pending(client, registry["name"]) is None
    point(registry, good)
