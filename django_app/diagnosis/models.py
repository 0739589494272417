"""What the site remembers: every answer the model gave (with its image and raw output), the
diagnoses doctors confirmed, and API tokens."""
from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import connections, models
from django.urls import reverse
from django.utils import timezone


def upload_path(instance: "Diagnosis", filename: str) -> str:
    # No patient-identifying file name on disk: <owner>/<id>/<kind>.<ext>
    return f"xrays/{instance.owner_id}/{instance.id}/{filename}"


class Diagnosis(models.Model):
    NORMAL, PNEUMONIA = "NORMAL", "PNEUMONIA"
    LABELS = [(NORMAL, "Normal"), (PNEUMONIA, "Pneumonia")]
    SOURCES = [("web", "Web page"), ("api", "API"), ("import", "Confirmed-film import"), ("pacs", "PACS")]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)  # unguessable
    # PROTECT: a doctor's account going must not take the medical record with it (issue 25 item 8);
    # accounts are deactivated instead (diagnosis.admin), results are kept as docs/operations.md says
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="diagnoses")
    created = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=8, choices=SOURCES, default="web")
    original_name = models.CharField(max_length=255, blank=True)
    file_format = models.CharField(max_length=16)  # JPEG | PNG | DICOM
    size_bytes = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    image = models.FileField(upload_to=upload_path, max_length=255)  # as uploaded (DICOM: rendered PNG)
    heatmap = models.FileField(upload_to=upload_path, max_length=255, blank=True)  # RGBA PNG, model geometry
    heatmap_empty = models.BooleanField(default=False)  # no region argued for pneumonia
    label = models.CharField(max_length=16, choices=LABELS)
    probability = models.FloatField()  # P(pneumonia)
    threshold = models.FloatField()
    model_name = models.CharField(max_length=200)
    model_version = models.CharField(max_length=32)
    model_run_id = models.CharField(max_length=64, blank=True)
    inference_ms = models.FloatField(null=True, blank=True)
    # the input gate (pipeline.inference.gate): feature distance to the training X-rays (drift), and a caution
    gate_score = models.FloatField(null=True, blank=True)
    warning = models.CharField(max_length=500, blank=True)
    # the network's raw output: the site's calibration and threshold are refitted from it without
    # reading the image again (pipeline.evaluation.site); null for results recorded before it was kept
    logit = models.FloatField(null=True, blank=True)
    # salted hash of the patient's id (DICOM PatientID, or an imported film's name): groups a patient's
    # films when cases are cross-fitted or exported; never the id itself (diagnosis.local_cases)
    patient_key = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["owner", "-created"], name="diagnosis_owner_recent"),
                   models.Index(fields=["created"], name="diagnosis_created")]
        verbose_name_plural = "diagnoses"

    def __str__(self) -> str:
        return f"{self.label} {self.probability:.1%} ({self.model_name} v{self.model_version})"

    def get_absolute_url(self) -> str:
        return reverse("result", args=[self.id])

    @property
    def percent(self) -> float:
        return round(self.probability * 100, 1)

    @property
    def threshold_percent(self) -> float:
        return round(self.threshold * 100, 1)

    @property
    def is_pneumonia(self) -> bool:
        return self.label == self.PNEUMONIA

    def to_api(self, request=None) -> dict:
        def url(name, *args):
            path = reverse(name, args=args)
            return request.build_absolute_uri(path) if request is not None else path

        data = {
            "id": str(self.id),
            "label": self.label,
            "probability": round(self.probability, 6),
            "threshold": round(self.threshold, 6),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "created": self.created.isoformat(timespec="seconds"),
            "image": {"format": self.file_format, "width": self.width, "height": self.height,
                      "name": self.original_name},
            "result_url": url("result", self.id),
            "heatmap_url": url("image", self.id, "heatmap") if self.heatmap else None,
            "heatmap_empty": self.heatmap_empty if self.heatmap else None,
        }
        if self.inference_ms is not None:
            data["inference_ms"] = round(self.inference_ms, 1)
        data["warning"] = self.warning
        data["gate_score"] = round(self.gate_score, 3) if self.gate_score is not None else None
        confirmation = getattr(self, "confirmation", None)
        data["confirmation"] = confirmation.to_api() if confirmation else None
        data["confirmation_url"] = url("api_confirmation", self.id)
        return data


class Confirmation(models.Model):
    """The diagnosis confirmed for a result once it is known (from the report or follow-up), by the
    doctor who asked for it or from a confirmed-film import; staff adjudicate those that disagree
    with the model. Confirmed NORMAL / PNEUMONIA cases are the site's local evidence."""

    NORMAL, PNEUMONIA, UNSURE = "NORMAL", "PNEUMONIA", "UNSURE"
    LABELS = [(NORMAL, "Normal"), (PNEUMONIA, "Pneumonia"), (UNSURE, "Unsure")]

    diagnosis = models.OneToOneField(Diagnosis, on_delete=models.CASCADE, related_name="confirmation")
    label = models.CharField(max_length=16, choices=LABELS)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="confirmations")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    note = models.CharField(max_length=500, blank=True)
    # staff's ruling on a disagreement: it replaces `label` as the case's truth
    adjudicated_label = models.CharField(max_length=16, choices=LABELS, blank=True)
    adjudicated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                       related_name="adjudications")
    adjudicated_at = models.DateTimeField(null=True, blank=True)
    adjudication_note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-updated"]
        indexes = [models.Index(fields=["updated"], name="confirmation_updated")]

    def __str__(self) -> str:
        return f"{self.final_label} for {self.diagnosis_id} (by {self.by})"

    @property
    def final_label(self) -> str:
        return self.adjudicated_label or self.label

    @property
    def disagrees(self) -> bool:
        """A confirmed diagnosis (not unsure) other than the model's answer."""
        return self.final_label != self.UNSURE and self.final_label != self.diagnosis.label

    def to_api(self) -> dict:
        return {"label": self.final_label, "confirmed_label": self.label, "by": self.by.get_username(),
                "at": self.updated.isoformat(timespec="seconds"), "note": self.note,
                "adjudicated": bool(self.adjudicated_label),
                "adjudicated_by": self.adjudicated_by.get_username() if self.adjudicated_by else None,
                "adjudicated_at": self.adjudicated_at.isoformat(timespec="seconds") if self.adjudicated_at else None}


class PacsCursor(models.Model):
    """How far the PACS feed has been taken in (Orthanc's change sequence): it moves past a change only
    once every instance at or before it is finished, so a restart re-reads, never skips."""

    name = models.CharField(max_length=200, unique=True)  # the PACS's URL: one cursor per PACS
    last_seq = models.BigIntegerField(default=0)
    updated = models.DateTimeField(auto_now=True)


class PacsInstance(models.Model):
    """One SOP instance seen on the PACS: the claim (unique per instance, so two workers or a
    redelivery never analyse it twice) and what came of it. Never the patient's name."""

    PENDING, CLAIMED, DONE, REFUSED, SKIPPED = "pending", "claimed", "done", "refused", "skipped"
    STATES = [(s, s) for s in (PENDING, CLAIMED, DONE, REFUSED, SKIPPED)]
    FINISHED = (DONE, REFUSED, SKIPPED)

    pacs_id = models.CharField(max_length=64, unique=True)  # the PACS's id of the instance (Orthanc's)
    seq = models.BigIntegerField(db_index=True)  # the feed's change that announced it
    received = models.DateTimeField(auto_now_add=True)  # arrival order on the worklist
    state = models.CharField(max_length=8, choices=STATES, default=PENDING)
    claimed_by = models.CharField(max_length=100, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    study_uid = models.CharField(max_length=64, blank=True, db_index=True)
    series_uid = models.CharField(max_length=64, blank=True)
    sop_uid = models.CharField(max_length=64, blank=True, db_index=True)
    accession_number = models.CharField(max_length=64, blank=True)
    patient_age = models.CharField(max_length=8, blank=True)  # as the header says it: 045Y, 006M
    patient_sex = models.CharField(max_length=16, blank=True)
    patient_key = models.CharField(max_length=32, blank=True)  # salted hash of PatientID (local_cases)
    modality = models.CharField(max_length=16, blank=True)
    view_position = models.CharField(max_length=16, blank=True)
    diagnosis = models.OneToOneField(Diagnosis, on_delete=models.PROTECT, null=True, blank=True,
                                     related_name="pacs")
    reason = models.CharField(max_length=500, blank=True)  # refusal, skip, or the last error
    warning = models.CharField(max_length=500, blank=True)
    # the UIDs of what goes back, fixed before sending: a resend after a fault stores the same objects
    sr_uid = models.CharField(max_length=64, blank=True)
    sc_uid = models.CharField(max_length=64, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["received"]
        indexes = [models.Index(fields=["state", "seq"], name="pacs_state_seq")]

    def __str__(self) -> str:
        return f"{self.sop_uid or self.pacs_id} ({self.state})"


class Refusal(models.Model):
    """An upload the input gate refused: why, when and by which model; never the image itself."""

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="refusals")
    source = models.CharField(max_length=8, choices=Diagnosis.SOURCES, default="web")
    file_format = models.CharField(max_length=16, blank=True)
    size_bytes = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=500)
    gate_score = models.FloatField(null=True, blank=True)  # None: refused before the model ran
    model_name = models.CharField(max_length=200)
    model_version = models.CharField(max_length=32)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"refused {self.created:%Y-%m-%d %H:%M}: {self.reason[:80]}"


def hash_token(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token for POST /api/predict. Only its SHA-256 is stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, default="API")
    prefix = models.CharField(max_length=8)  # to recognise a token in a list
    key_hash = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    # a leaked key stops working by itself (issue 25 item 15); null: issued before expiry existed,
    # counted from `created` (ApiToken.expires_at)
    expires = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.user} {self.name} ({self.prefix}...)"

    @property
    def expires_at(self):
        return self.expires or self.created + timedelta(days=settings.XRAY_API_TOKEN_DAYS)

    @property
    def expired(self) -> bool:
        return self.expires_at <= timezone.now()

    @classmethod
    def by_key(cls, key: str) -> "ApiToken | None":
        """The token of `key`, its user loaded, or None. Every API request asks this, so it is two
        raw queries (0.35 ms together, SQLite) rather than the ORM's select_related (0.81 ms, most of
        it compiling the SQL; docs/benchmarks.md); raw() still converts the columns to field values."""
        qn = connections[cls.objects.db].ops.quote_name
        token = next(iter(cls.objects.raw(
            f"SELECT * FROM {qn(cls._meta.db_table)} WHERE {qn('key_hash')} = %s", [hash_token(key)])), None)
        if token is None:
            return None
        meta = cls.user.field.related_model._meta
        user = next(iter(meta.model.objects.raw(
            f"SELECT * FROM {qn(meta.db_table)} WHERE {qn(meta.pk.column)} = %s", [token.user_id])), None)
        if user is None:
            return None
        token.user = user
        return token

    @classmethod
    def issue(cls, user, name: str = "API") -> tuple["ApiToken", str]:
        key = "xr_" + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, prefix=key[:8], key_hash=hash_token(key),
                                   expires=timezone.now() + timedelta(days=settings.XRAY_API_TOKEN_DAYS))
        return token, key


class StaffTotp(models.Model):
    """A staff account's authenticator (diagnosis.mfa): the TOTP secret, confirmed once a code from
    the app matched, and the last time step used (a code is accepted once)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="totp")
    secret = models.CharField(max_length=64)
    confirmed = models.BooleanField(default=False)
    last_step = models.BigIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"authenticator of {self.user} ({'confirmed' if self.confirmed else 'not confirmed'})"


def shadow_path(instance: "ShadowAnswer", filename: str) -> str:
    # next to the shadowed result's files: deleting the result removes its folder (diagnosis.signals)
    d = instance.diagnosis
    return f"xrays/{d.owner_id}/{d.id}/shadow-v{instance.model_version}-{filename}"


class ShadowAnswer(models.Model):
    """What a pending challenger answered for a live request (diagnosis.shadow): kept for staff to
    compare with the champion's answer, never shown to doctors nor returned by the API."""

    diagnosis = models.ForeignKey(Diagnosis, on_delete=models.CASCADE, related_name="shadow_answers")
    model_name = models.CharField(max_length=200)
    model_version = models.CharField(max_length=32)
    created = models.DateTimeField(auto_now_add=True)
    label = models.CharField(max_length=16, choices=Diagnosis.LABELS, blank=True)  # "": the gate refused
    probability = models.FloatField(null=True, blank=True)
    logit = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    heatmap = models.FileField(upload_to=shadow_path, max_length=255, blank=True)
    refusal = models.CharField(max_length=500, blank=True)  # the challenger's input gate refused it
    ms = models.FloatField(default=0.0)  # the challenger's decoding + inference time

    class Meta:
        ordering = ["-created"]
        constraints = [models.UniqueConstraint(fields=["diagnosis", "model_name", "model_version"],
                                               name="one_shadow_answer_per_version")]
        indexes = [models.Index(fields=["model_name", "model_version", "created"], name="shadow_version")]

    def __str__(self) -> str:
        return f"v{self.model_version} {self.label or 'refused'} for {self.diagnosis_id}"

    @property
    def percent(self) -> float | None:
        return None if self.probability is None else round(self.probability * 100, 1)

    @property
    def threshold_percent(self) -> float | None:
        return None if self.threshold is None else round(self.threshold * 100, 1)


class ShadowTally(models.Model):
    """Requests a shadowed version did not answer: dropped (queue full) or failed (it could not be
    loaded or raised); answered ones are its ShadowAnswer rows."""

    model_name = models.CharField(max_length=200)
    model_version = models.CharField(max_length=32)
    dropped = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    first_seen = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model_name", "model_version"], name="one_tally_per_version")]

    def __str__(self) -> str:
        return f"{self.model_name} v{self.model_version}: {self.dropped} dropped, {self.failed} failed"
