"""The site's local evidence: diagnoses confirmed by doctors or imported, and what is fitted on them.

- `confirm`: a doctor records the known diagnosis of one of their own results (page and API).
- `adjudicate`: staff rule on a confirmation that disagrees with the model.
- `import_folder`: `python -m pipeline site import --data DIR`, a folder NORMAL/ PNEUMONIA/ of
  confirmed films; each goes through the same path as an upload (limits, decoding process, input
  gate, champion) and is recorded with its confirmation; refused films are listed, not counted.
- `cases`: the confirmed NORMAL / PNEUMONIA cases with the model's raw output, for
  pipeline.evaluation.site (the site's operating point).
- `realised`: what the served answers achieved on those cases, per model version and month (the
  staff performance page; the same dicts for the pipeline to log to MLflow).

Patients are grouped by a salted hash of their id (`patient_key`), never the id itself.
"""
from __future__ import annotations

import hashlib
import math
import os
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from pipeline.data import dataset, dicom

from . import analysis
from .models import Confirmation, Diagnosis

CLASS_DIRS = (Diagnosis.NORMAL, Diagnosis.PNEUMONIA)
IMPORT_ACCOUNT = "site-import"  # owner of imported films: no password, cannot log in


def _salt() -> bytes:
    """$XRAY_PATIENT_SALT, else a random salt made once in .local/secrets/patient_salt: the same
    patient gets the same key on this site (web, import, export), and a key cannot be turned back
    into an id without the salt."""
    if os.environ.get("XRAY_PATIENT_SALT"):
        return os.environ["XRAY_PATIENT_SALT"].encode()
    path = Path(settings.XRAY_SECRETS_DIR) / "patient_salt"
    if not path.is_file() or path.stat().st_size == 0:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    return path.read_text().strip().encode()


def patient_key(raw_id: str | None) -> str:
    """Salted hash of a patient id ("" when there is none: the film is its own patient)."""
    if not raw_id:
        return ""
    return hashlib.sha256(_salt() + raw_id.strip().encode()).hexdigest()[:32]


def confirm(diagnosis: Diagnosis, user, label: str, note: str = "") -> Confirmation:
    """Record (or correct) the confirmed diagnosis of a result. Only the doctor whose result it is
    may; a ruling by staff is kept (a doctor's correction clears it only when it changes the label)."""
    if diagnosis.owner_id != user.pk:
        raise PermissionDenied("only the doctor who asked for this result can confirm it")
    label = _label(label)
    with transaction.atomic():
        current = Confirmation.objects.select_for_update().filter(diagnosis=diagnosis).first()
        if current is None:
            return Confirmation.objects.create(diagnosis=diagnosis, label=label, by=user, note=note[:500])
        if current.label != label:
            current.adjudicated_label, current.adjudicated_by, current.adjudicated_at = "", None, None
        current.label, current.by, current.note = label, user, note[:500]
        current.save()
        return current


def adjudicate(confirmation: Confirmation, user, label: str, note: str = "") -> Confirmation:
    """Staff's ruling on a confirmation: it becomes the case's truth."""
    if not user.is_staff:
        raise PermissionDenied("only staff adjudicate confirmations")
    confirmation.adjudicated_label = _label(label)
    confirmation.adjudicated_by, confirmation.adjudicated_at = user, timezone.now()
    confirmation.adjudication_note = note[:500]
    confirmation.save()
    return confirmation


def _label(label: str) -> str:
    label = (label or "").strip().upper()
    if label not in dict(Confirmation.LABELS):
        raise ValidationError(f"label must be one of {', '.join(dict(Confirmation.LABELS))}, not {label!r}")
    return label


def disagreements(open_only: bool = True):
    """Confirmations (not unsure) that disagree with the model's answer: the adjudication queue."""
    from django.db.models import F

    qs = (Confirmation.objects.select_related("diagnosis", "by", "adjudicated_by")
          .exclude(label=Confirmation.UNSURE).exclude(label=F("diagnosis__label")))
    if open_only:
        qs = qs.filter(adjudicated_label="")
    return qs.order_by("updated")


@dataclass
class Case:
    """One confirmed local case as the fit needs it."""
    id: str
    label: int                 # 1 PNEUMONIA, 0 NORMAL
    logit: float | None        # None: recorded before logits were kept
    model_version: str
    group: str                 # patient key, else the result's id
    image: str                 # path of the stored image (to score another model on it)
    created: object
    answered: str              # the label the site answered


# The columns the DAG's site tasks read (site_adapt, realised_performance, the shadow wait), and no
# more: in the compose stack they read as a role granted exactly these (docker/web/grant_reader.py).
CASE_COLUMNS = ("label", "adjudicated_label", "diagnosis", "diagnosis__id", "diagnosis__created", "diagnosis__label",
                "diagnosis__logit", "diagnosis__probability", "diagnosis__threshold", "diagnosis__model_name",
                "diagnosis__model_version", "diagnosis__patient_key")


def _confirmed(images: bool = False):
    columns = CASE_COLUMNS + (("diagnosis__image",) if images else ())
    return Confirmation.objects.select_related("diagnosis").only(*columns).order_by("diagnosis__created")


def cases(model_name: str | None = None, share: str | None = "local", images: bool = False) -> list[Case]:
    """Confirmed NORMAL / PNEUMONIA cases (adjudication wins; unsure is left out), oldest first.
    share="local": only the patients that fit and judge operating points (params site.train_share
    sends the others to training, `export`); None: all. images=True: with the stored image's path
    (to rescore or export; the site's own processes only)."""
    from pipeline.evaluation.site import share_of

    train_share = settings.XRAY_PIPELINE_PARAMS.site.train_share
    qs = _confirmed(images)
    if model_name:
        qs = qs.filter(diagnosis__model_name=model_name)
    out = []
    for c in qs:
        truth, d = c.final_label, c.diagnosis
        if truth == Confirmation.UNSURE or (share and share_of(d.patient_key or str(d.id), train_share) != share):
            continue
        out.append(Case(str(d.id), int(truth == Diagnosis.PNEUMONIA), d.logit, d.model_version,
                        d.patient_key or str(d.id), d.image.path if images and d.image else "", d.created, d.label))
    return out


def realised() -> list[dict]:
    """Realised performance of the answers given: per served model (name, version) and calendar
    month of the result (site time zone), sensitivity and specificity (95 % Clopper-Pearson),
    AUC, ECE and counts on the confirmed NORMAL / PNEUMONIA cases (adjudication wins, unsure left
    out). Each case is scored with its stored probability against the threshold it was answered
    with, so a month served by a refitted operating point is judged by what doctors were told.
    A figure that needs a class the group lacks is None. Newest month first."""
    from pipeline.evaluation.site import answers

    groups: dict[tuple, list] = defaultdict(list)
    for c in _confirmed():
        truth, d = c.final_label, c.diagnosis
        if truth == Confirmation.UNSURE:
            continue
        month = timezone.localtime(d.created).strftime("%Y-%m")
        groups[(month, d.model_name, d.model_version)].append(
            (int(truth == Diagnosis.PNEUMONIA), d.probability, d.threshold))
    out = []
    for (month, name, version), rows in groups.items():
        y, prob, threshold = zip(*rows)
        figures = answers(y, prob, threshold).to_dict()
        if not figures["positives"]:
            figures["sensitivity"] = figures["sensitivity_ci"] = None
        if not figures["negatives"]:
            figures["specificity"] = figures["specificity_ci"] = None
        figures = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in figures.items()}
        out.append({"month": month, "model_name": name, "model_version": version, **figures})
    # newest month first; within it, by model and newest version (versions are registry numbers)
    out.sort(key=lambda g: (g["model_name"], -int(g["model_version"]) if g["model_version"].isdigit() else 0))
    out.sort(key=lambda g: g["month"], reverse=True)
    return out


@dataclass
class ImportReport:
    recorded: list[tuple[str, str, str]] = field(default_factory=list)   # (file, confirmed label, result id)
    refused: list[tuple[str, str]] = field(default_factory=list)         # (file, reason)
    already: list[str] = field(default_factory=list)                     # imported before (same bytes)

    def to_dict(self) -> dict:
        return {"recorded": len(self.recorded), "refused": [{"file": f, "reason": r} for f, r in self.refused],
                "already_imported": len(self.already)}


def import_account():
    from django.contrib.auth import get_user_model

    user, made = get_user_model().objects.get_or_create(username=IMPORT_ACCOUNT, defaults={"is_active": False})
    if made:
        user.set_unusable_password()
        user.save()
    return user


def _patient_of(path: Path, data: bytes) -> str | None:
    """The patient id of an imported film: from its DICOM header, else from its file name
    (the dataset's naming rules, pipeline.data.dataset.patient_id)."""
    if data[128:132] == b"DICM":
        try:
            return dicom.read_header(data).patient_id or None
        except Exception:  # noqa: BLE001  (the film is refused by the decoding path with its reason)
            return None
    return dataset.patient_id(path.name)


def import_folder(root: Path, champion, owner=None, progress=None) -> ImportReport:
    """Record every film under root/NORMAL and root/PNEUMONIA as a confirmed local case."""
    root = Path(root)
    missing = [d for d in CLASS_DIRS if not (root / d).is_dir()]
    if len(missing) == len(CLASS_DIRS):
        raise FileNotFoundError(f"{root}: expected folders {' and '.join(CLASS_DIRS)} (of confirmed films)")
    owner = owner or import_account()
    report = ImportReport()
    for label in CLASS_DIRS:
        files = sorted(p for p in (root / label).rglob("*") if p.is_file() and not p.name.startswith("."))
        for path in files:
            _import_one(path, label, root, champion, owner, report)
            if progress:
                progress(report)
    return report


def _import_one(path: Path, label: str, root: Path, champion, owner, report: ImportReport) -> None:
    name = str(path.relative_to(root))
    try:
        size = path.stat().st_size
        analysis.check_size(size)
        data = path.read_bytes()
    except analysis.UploadRejected as exc:
        report.refused.append((name, exc.reason))
        return
    digest = hashlib.sha256(data).hexdigest()
    if Diagnosis.objects.filter(sha256=digest, source="import", confirmation__isnull=False).exists():
        report.already.append(name)
        return
    try:
        d = analysis.diagnose(owner, path.name, data, champion, source="import", heatmap=False,
                              patient_key=patient_key(_patient_of(path, data)))
    except analysis.UploadRejected as exc:
        report.refused.append((name, exc.reason))
        return
    Confirmation.objects.create(diagnosis=d, label=label, by=owner, note=f"imported from {label}/")
    report.recorded.append((name, label, str(d.id)))


def export(root: Path, train_share: float | None = None) -> dict:
    """Write the confirmed cases into a dataset folder for the next data version: patients of the
    training share under train/<CLASS>/, the others under local/<CLASS>/ (evaluation only, scored at
    each model's own site operating point). Files are named site-<patient hash>-<case>: no name, no
    patient id, the images as stored (metadata-free); files of cases no longer confirmed so (a
    label changed by adjudication) are removed. Returns the counts."""
    from pipeline.evaluation.site import share_of

    root = Path(root)
    train_share = settings.XRAY_PIPELINE_PARAMS.site.train_share if train_share is None else train_share
    wanted: dict[Path, Path] = {}
    for case in cases(share=None, images=True):
        if not case.image or not Path(case.image).is_file():
            continue
        share = share_of(case.group, train_share)
        label = Diagnosis.PNEUMONIA if case.label else Diagnosis.NORMAL
        patient = hashlib.sha256(case.group.encode()).hexdigest()[:16]
        name = f"site-{patient}-{case.id.replace('-', '')[:12]}{Path(case.image).suffix.lower()}"
        wanted[root / ("train" if share == "train" else "local") / label / name] = Path(case.image)
    removed = 0
    for old in list(root.glob("train/*/site-*")) + list(root.glob("local/*/site-*")):
        if old not in wanted:
            old.unlink()
            removed += 1
    for dest, source in wanted.items():
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(source.read_bytes())
    counts = {share: {label: sum(1 for d in wanted if d.parts[-3] == share and d.parts[-2] == label)
                      for label in CLASS_DIRS} for share in ("train", "local")}
    return {"root": str(root), "written": counts, "removed": removed, "train_share": train_share}
