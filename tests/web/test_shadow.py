"""Shadow mode (issue 27 item 1): a pending challenger answers live requests in the background,
never changing, slowing or showing up in the doctor's answer.

Real components: the web suite's MLflow server with real registered versions (the champion v1; a
challenger with the same network and threshold 0, so it answers PNEUMONIA for everything and its
logit must equal the champion's; a challenger with NaN weights, which cannot be put in service),
the real inference path, the Django test client, and gunicorn for the background thread."""
from __future__ import annotations

import time
from pathlib import Path

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


# --- the evidence and the page ---------------------------------------------------------------------
def record(owner, label, prob, threshold, truth=None, shadow=None, version="7", name="web-test-xray"):
    """A stored result (no image needed by the figures), its confirmation and its shadow answer."""
    from diagnosis.models import Confirmation, Diagnosis, ShadowAnswer

    d = Diagnosis.objects.create(owner=owner, file_format="PNG", size_bytes=1, sha256="0" * 64, width=1, height=1,
                                 image="x.png", label=label, probability=prob, threshold=threshold,
                                 model_name=name, model_version="1", logit=0.0)
    if truth:
        Confirmation.objects.create(diagnosis=d, label=truth, by=owner)
    if shadow is not None:
        s_label, s_prob = shadow
        ShadowAnswer.objects.create(diagnosis=d, model_name=name, model_version=version, label=s_label,
                                    probability=s_prob, threshold=None if s_prob is None else 0.4, logit=0.0,
                                    refusal="" if s_label else "not a chest X-ray")
    return d


def hand_ece(y, p):
    total = 0.0
    for b in range(10):
        members = [(yy, pp) for yy, pp in zip(y, p) if min(int(pp * 10), 9) == b]
        if members:
            total += len(members) / len(y) * abs(sum(m[0] for m in members) / len(members)
                                                 - sum(m[1] for m in members) / len(members))
    return total


def test_evidence_against_a_hand_computation(doctor):
    from diagnosis.models import ShadowTally
    from diagnosis.shadow import evidence

    P, N = "PNEUMONIA", "NORMAL"
    # (champion label, champion prob, truth, challenger label, challenger prob); thresholds 0.5 / 0.4
    # (no probability on a bin edge: calibration.ece's edges are linspace's floats, 0.30000000000000004)
    rows = [(P, 0.91, P, P, 0.85), (P, 0.62, P, P, 0.55), (N, 0.45, P, P, 0.47), (N, 0.21, P, N, 0.35),
            (N, 0.11, N, N, 0.05), (N, 0.31, N, N, 0.12), (P, 0.72, N, N, 0.38), (N, 0.41, N, P, 0.44),
            (N, 0.05, N, N, 0.02), (P, 0.95, P, P, 0.97)]
    for champ, cp, truth, chall, sp in rows:
        record(doctor, champ, cp, 0.5, truth, (chall, sp))
    record(doctor, N, 0.3, 0.5, "UNSURE", (P, 0.9))   # unsure: not a confirmed case
    record(doctor, P, 0.8, 0.5, None, (P, 0.9))        # not confirmed
    record(doctor, N, 0.2, 0.5, N, ("", None))        # its gate refused: answered, disagrees, not paired
    record(doctor, N, 0.2, 0.5, N, (N, 0.1), version="6")  # another version
    ShadowTally.objects.create(model_name="web-test-xray", model_version="7", dropped=3, failed=1)

    e = evidence("web-test-xray", 7)
    y = [int(r[2] == P) for r in rows]
    agreed = sum(r[0] == r[3] for r in rows) + 2   # + the unsure and the unconfirmed ones (P/P, N/P -> 1)
    agreed -= 1                                      # the unsure row: N vs P disagrees
    assert (e["version"], e["answered"], e["dropped"], e["failed"], e["confirmed"]) == (7, 13, 3, 1, 10)
    assert e["agreement"] == pytest.approx(agreed / 13) and e["page"] == "/staff/shadow/"
    assert e["since"] is not None and 0 <= e["days"] < 0.01
    for who, prob_of, thr in (("champion", lambda r: r[1], 0.5), ("challenger", lambda r: r[4], 0.4)):
        p = [prob_of(r) for r in rows]
        tp = sum(1 for yy, pp in zip(y, p) if yy and pp >= thr)
        tn = sum(1 for yy, pp in zip(y, p) if not yy and pp < thr)
        pos, neg = sum(y), len(y) - sum(y)
        sens, spec = e[who]["sensitivity"], e[who]["specificity"]
        assert sens["value"] == pytest.approx(tp / pos) and spec["value"] == pytest.approx(tn / neg)
        lo = beta.ppf(0.025, tp, pos - tp + 1) if tp else 0.0
        hi = beta.ppf(0.975, tp + 1, pos - tp) if tp < pos else 1.0
        assert (sens["low"], sens["high"]) == pytest.approx((lo, hi))
        assert e[who]["ece"]["value"] == pytest.approx(hand_ece(y, p))
        assert 0 <= e[who]["ece"]["low"] < e[who]["ece"]["high"] <= 1
    assert evidence("web-test-xray", 99)["challenger"] is None  # never shadowed: nothing to show


def test_staff_page(doctor_client, doctor, registry, challengers, champion, fullres_images, shadow_on):
    from django.test import Client

    from diagnosis import local_cases
    from diagnosis.models import ShadowAnswer

    for path in fullres_images[:4]:
        upload(doctor_client, path.read_bytes())
    shadow_on.drain()
    answers = list(ShadowAnswer.objects.select_related("diagnosis"))
    assert answers
    for s in answers:
        local_cases.confirm(s.diagnosis, doctor, s.diagnosis.label)
    staff = staff_client(make_user("qa_lead", staff=True))
    with override_settings(XRAY_MODEL_NAME=registry["name"], MLFLOW_TRACKING_URI=registry["uri"]):
        html = staff.get("/staff/shadow/").content.decode()
    version = challengers["good"]
    assert f"v{version} (pending)" in html and 'href="/staff/shadow/"' in html
    assert f'<dd id="answered">{len(answers)}</dd>' in html and 'id="paired"' in html
    disagree = [s for s in answers if s.label != s.diagnosis.label]
    for s in disagree:  # the gallery: the film and both heat maps, served to staff only
        assert f'id="s-{s.pk}"' in html
        for kind in ("display", "heatmap", "shadow"):
            r = staff.get(f"/staff/shadow/{s.pk}/{kind}")
            assert r.status_code == 200 and r["Content-Type"].startswith("image/")
            assert doctor_client.get(f"/staff/shadow/{s.pk}/{kind}").status_code == 302
    if not disagree:
        assert 'id="no-disagreements"' in html
    assert staff.get("/staff/shadow/?version=6").status_code == 200  # an unknown choice: the default
    assert doctor_client.get("/staff/shadow/").status_code == 302 and Client().get("/staff/shadow/").status_code == 302
    no_mfa = Client()
    no_mfa.force_login(make_user("new_staff", staff=True))
    assert no_mfa.get("/staff/shadow/").status_code == 302


# --- the real background thread, under gunicorn ----------------------------------------------------
def test_live_site_shadows_in_the_background(registry, challengers, tmp_path, xray_jpeg):
    """gunicorn as in production, shadow on: the API answers as the champion, and the worker thread
    of each process stores the challenger's answers afterwards."""
    point(registry, challengers["good"])
    port = free_port()
    # niceness 0: on a machine loaded by other work a niceness-19 thread may wait minutes for a core
    env = site_env(registry, tmp_path / "data", port, XRAY_SHADOW="on", WEB_WORKERS="1", XRAY_SHADOW_NICE="0")
    site = Site(env, port, tmp_path / "web.log").wait_ready()
    try:
        out = manage(env, "create_doctor", "api_client", "--password", "api-client-pass-77", "--token")
        site.token = out.stdout.split("API token (shown once): ")[1].split()[0]
        bodies = [predict(site, xray_jpeg, heatmap="1").json() for _ in range(3)]
        assert all(b["model_version"] == registry["v1"] and "shadow" not in str(b).lower() for b in bodies)
        count = "from diagnosis.models import ShadowAnswer as S; print(S.objects.filter(model_version=%r).count())"
        deadline, stored = time.time() + 90, 0
        while time.time() < deadline and stored < 3:
            stored = int(manage(env, "shell", "-c", count % challengers["good"]).stdout.strip().splitlines()[-1])
            time.sleep(1)
        assert stored == 3, (tmp_path / "web.log").read_text()[-3000:]
    finally:
        site.stop()
