"""From the PACS's changes feed to a result back in the study, each SOP instance once.

1. feed: every NewInstance change after the cursor becomes a PacsInstance row (unique per PACS id:
   a change read twice, or a second worker reading it, adds nothing);
2. claim: a conditional UPDATE (pending -> claimed) that one worker wins; a claim whose worker died
   is taken back (same host: its pid is gone; elsewhere: after XRAY_PACS_CLAIM_SECONDS);
3. analyse: the one inference path (diagnosis.analysis.diagnose: limits, decoder process, input
   gate, champion), owned by the PACS account; the result is stored before anything is sent;
4. send: SR (+ Secondary Capture) by STOW-RS into the same study, then the row is finished;
5. cursor: moves to just before the oldest unfinished row, so a restart re-reads, never skips.
Faults: PACS down -> PacsUnavailable, the claim is released and the worker backs off; no model ->
ModelUnavailable, the instance goes back to pending and waits.
"""
from __future__ import annotations

import io
import logging
import os
import socket
from datetime import timedelta

import pydicom
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import F, Q
from django.utils import timezone
from PIL import Image
from pydicom.uid import generate_uid

from .. import analysis
from ..champion import holder
from ..local_cases import patient_key
from ..models import PacsCursor, PacsInstance
from . import report
from .client import PacsClient

log = logging.getLogger(__name__)

ACCEPTED_MODALITIES = ("CR", "DX")
# not images: SR documents (and key objects), presentation states, encapsulated documents
NON_IMAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.104.")
HEADER_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
               "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "StudyDate", "StudyTime", "StudyID",
               "AccessionNumber", "ReferringPhysicianName", "Modality", "ViewPosition", "Manufacturer")


class ModelUnavailable(RuntimeError):
    """No champion is loaded: the instance waits in the queue."""


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def account():
    """The account that owns PACS results; it cannot sign in (no usable password, inactive)."""
    user, created = get_user_model().objects.get_or_create(
        username=settings.XRAY_PACS_ACCOUNT, defaults={"is_active": False, "first_name": "PACS"})
    if created:
        user.set_unusable_password()
        user.save()
    return user


# --- 1. the feed, 5. the cursor -------------------------------------------------------------------
def take_feed(client: PacsClient, name: str) -> int:
    """Rows for every new instance after the cursor; returns the last change seen."""
    since = PacsCursor.objects.get_or_create(name=name)[0].last_seq
    while True:
        page = client.changes(since, limit=200)
        for change in page.get("Changes", []):
            if change.get("ChangeType") == "NewInstance":
                PacsInstance.objects.get_or_create(pacs_id=change["ID"], defaults={"seq": change["Seq"]})
        since = max(since, int(page.get("Last", since)))
        if page.get("Done", True):
            return since


def advance_cursor(name: str, last_seen: int) -> int:
    oldest = PacsInstance.objects.exclude(state__in=PacsInstance.FINISHED).order_by("seq") \
        .values_list("seq", flat=True).first()
    target = last_seen if oldest is None else min(last_seen, oldest - 1)
    PacsCursor.objects.filter(name=name, last_seq__lt=target).update(last_seq=target)
    return target


# --- 2. claims ------------------------------------------------------------------------------------
def _claimable() -> Q:
    stale = timezone.now() - timedelta(seconds=settings.XRAY_PACS_CLAIM_SECONDS)
    return Q(state=PacsInstance.PENDING) | Q(state=PacsInstance.CLAIMED, claimed_at__lt=stale)


def claim(me: str) -> PacsInstance | None:
    """The oldest claimable instance, claimed for `me`; None when there is none."""
    for pk in PacsInstance.objects.filter(_claimable()).order_by("seq").values_list("pk", flat=True)[:20]:
        won = PacsInstance.objects.filter(_claimable(), pk=pk).update(
            state=PacsInstance.CLAIMED, claimed_by=me, claimed_at=timezone.now(), attempts=F("attempts") + 1)
        if won:
            return PacsInstance.objects.get(pk=pk)
    return None


def release(inst: PacsInstance) -> None:
    PacsInstance.objects.filter(pk=inst.pk, state=PacsInstance.CLAIMED).update(
        state=PacsInstance.PENDING, claimed_by="", claimed_at=None)


def release_dead_claims() -> int:
    """Claims of workers of this host that are gone (a restart): back to pending at once."""
    host, freed = socket.gethostname(), 0
    for inst in PacsInstance.objects.filter(state=PacsInstance.CLAIMED, claimed_by__startswith=host + ":"):
        pid = inst.claimed_by.rsplit(":", 1)[1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            release(inst)
            freed += 1
    return freed


# --- 3. analyse, 4. send ----------------------------------------------------------------------------
def age_years(value: str) -> float | None:
    """DICOM AS ("045Y", "006M", "010W", "003D") -> years."""
    value = (value or "").strip().upper()
    if len(value) != 4 or not value[:3].isdigit() or value[3] not in "YMWD":
        return None
    return int(value[:3]) / {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}[value[3]]


def intended_use(source) -> tuple[str, str]:
    """(refusal, warning) from the header's age. The model card says children (1-5 years). Adults
    get a warning by default (XRAY_PACS_ADULTS=warn; =refuse refuses them): docs/pacs.md says why."""
    years = age_years(str(source.get("PatientAge", "")))
    if years is None or years < settings.XRAY_PACS_ADULT_AGE:
        return "", ""
    words = (f"adult patient ({years:.0f} years): the model was trained on children's films (1-5 years) "
             f"and its accuracy on adults is not established")
    if settings.XRAY_PACS_ADULTS == "refuse":
        return words, ""
    return "", words + "; read this answer with extra caution"


def _header(client: PacsClient, inst: PacsInstance, data: bytes):
    """The instance's header (pydicom), or for a file pydicom cannot read, the tags the PACS read
    (enough for a refusal SR in the right study); second value: why it is unreadable, or ""."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True), ""
    except Exception as exc:  # noqa: BLE001 - any unreadable file is answered with a refusal
        tags = client.instance_tags(inst.pacs_id)
        ds = pydicom.Dataset()
        for key in HEADER_KEYS:
            if tags.get(key):
                setattr(ds, key, tags[key])
        return ds, f"the DICOM file cannot be read ({type(exc).__name__})"


def _describe(inst: PacsInstance, source) -> None:
    """What the worklist shows and the site keeps: UIDs, accession, age, sex, a salted patient key;
    never the patient's name."""
    get = lambda key: str(source.get(key, "") or "").strip()  # noqa: E731
    inst.study_uid, inst.series_uid, inst.sop_uid = get("StudyInstanceUID"), get("SeriesInstanceUID"), \
        get("SOPInstanceUID")
    inst.accession_number, inst.patient_age, inst.patient_sex = get("AccessionNumber")[:64], \
        get("PatientAge")[:8], get("PatientSex")[:16]
    inst.modality, inst.view_position = get("Modality").upper()[:16], get("ViewPosition").upper()[:16]
    inst.patient_key = patient_key(get("PatientID"))


def _not_for_us(source) -> str:
    if str(source.get("Manufacturer", "")) == report.MANUFACTURER:
        return "a result of this platform"
    if str(source.get("SOPClassUID", "")).startswith(NON_IMAGE_CLASSES):
        return "not an image (SR, presentation state or document)"
    return ""


def process(client: PacsClient, inst: PacsInstance) -> str:
    """Analyse one claimed instance and send its results; returns the state it ends in."""
    data = client.instance_file(inst.pacs_id)
    source, unreadable = _header(client, inst, data)
    skip = _not_for_us(source)
    if skip:
        return _finish(inst, PacsInstance.SKIPPED, skip)
    _describe(inst, source)
    inst.save()  # the worklist shows it, waiting, while it is analysed (or while no model is loaded)
    if not inst.sr_uid:  # not analysed yet (a resend after a fault skips this)
        _analyse(inst, data, source, unreadable)
    client.stow(_objects(inst, source))
    return _finish(inst, PacsInstance.REFUSED if inst.diagnosis_id is None else PacsInstance.DONE, inst.reason)


def _analyse(inst: PacsInstance, data: bytes, source, unreadable: str) -> None:
    refusal, warning = intended_use(source)
    refusal = unreadable or refusal
    if not refusal:
        champion = holder().get()
        if champion is None:
            raise ModelUnavailable("no champion model is loaded")
        try:
            inst.diagnosis = analysis.diagnose(account(), "pacs.dcm", data, champion, source="pacs",
                                               patient_key=inst.patient_key, warning=warning)
            inst.warning = inst.diagnosis.warning
        except analysis.UploadRejected as exc:
            refusal = exc.reason
    inst.reason = refusal[:500]
    inst.sr_uid = generate_uid()
    inst.sc_uid = generate_uid() if inst.diagnosis_id else ""
    inst.save()  # the result is stored before anything is sent: a resend never analyses again


def _objects(inst: PacsInstance, source) -> list:
    d = inst.diagnosis
    if d is None:
        champion = holder().peek()
        model = f"{champion.name} v{champion.version}" if champion else "xray-pneumonia"
        return [report.refusal_sr(source, reason=inst.reason, model=model, sr_uid=inst.sr_uid)]
    sr = report.finding_sr(source, present=d.is_pneumonia, probability=d.probability, threshold=d.threshold,
                           model_name=d.model_name, model_version=d.model_version, sr_uid=inst.sr_uid,
                           warning=d.warning)
    with Image.open(d.image.path) as film:
        heat = Image.open(d.heatmap.path) if d.heatmap else None
        caption = f"{d.label} {d.percent:g}% (threshold {d.threshold_percent:g}%), {d.model_name} v{d.model_version}"
        pixels = report.overlay(film, heat, caption)
    return [sr, report.heatmap_capture(source, pixels, inst.sc_uid)]


def give_up(inst: PacsInstance, reason: str) -> str:
    """After repeated internal failures: finished as refused (no SR: what failed may be the sending)."""
    return _finish(inst, PacsInstance.REFUSED, reason)


def _finish(inst: PacsInstance, state: str, reason: str = "") -> str:
    inst.state, inst.reason, inst.finished = state, reason[:500], timezone.now()
    inst.claimed_by = ""
    inst.save()
    return state
