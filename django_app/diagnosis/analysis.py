"""Upload -> answer -> record. The only place where views meet `pipeline` and the file store.

Decoding, validation, preprocessing, inference and Grad-CAM are `pipeline` code (the same
as training); this module adds the web's concerns: size limits before reading, storing the
image and heat map under MEDIA_ROOT, derived display images, and nothing stored on failure.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.dispatch import Signal
from PIL import Image

from pipeline.data import preprocess
from pipeline.inference import concurrency, gate
from pipeline.inference.answer import answer
from pipeline.inference.upload import Limits, png_bytes

from .models import Diagnosis, Refusal

log = logging.getLogger(__name__)

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "DICOM": "png"}  # DICOM is kept as the rendering the model saw
DISPLAY_MAX_SIDE = 1600
THUMB_MAX_SIDE = 320


# Sent once a live request's result is stored, with its bytes (diagnosis.shadow queues them for a
# pending challenger, never blocking); receivers' errors are logged, never the doctor's problem.
answered = Signal()


class UploadRejected(ValueError):
    """An upload that cannot be analysed; `reason` is shown to the doctor as is."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UploadRefused(UploadRejected):
    """A readable file that the input gate says is not a frontal chest X-ray (API: 422)."""


def mb(n: int | float) -> str:
    return f"{n / 2**20:.1f} MB"


def check_size(size: int | None) -> None:
    if not size:
        raise UploadRejected("empty file: nothing was uploaded")
    if size > settings.XRAY_MAX_UPLOAD_BYTES:
        raise UploadRejected(
            f"file too large: {mb(size)} (the limit is {settings.XRAY_MAX_UPLOAD_MB:g} MB per image)")


def read_upload(upload) -> bytes:
    """An UploadedFile -> bytes, refusing empty and oversized files before reading them."""
    check_size(upload.size)
    upload.seek(0)
    return upload.read()


def limits() -> Limits:
    """The site's upload limits (settings), for pipeline.inference.upload."""
    return Limits(max_bytes=settings.XRAY_MAX_UPLOAD_BYTES, max_pixels=settings.XRAY_MAX_PIXELS,
                  min_side=settings.XRAY_MIN_SIDE)


def stored_name(name: str | None, fmt: str) -> str:
    """What the site keeps of an upload's file name: nothing but a generic name of its format.
    PACS exports and scanners name files after the patient (DOE^JOHN_1975.dcm) or an accession
    number, and no rule tells those from a harmless name, so none is stored, shown or returned
    by the API; the doctor knows the file they chose, and the result page shows when it was."""
    return f"upload.{EXTENSIONS.get(fmt, 'bin') if fmt != 'DICOM' else 'dcm'}"


def diagnose(owner, name: str, data: bytes, champion, source: str = "web", heatmap: bool = True,
             patient_key: str = "", warning: str = "") -> Diagnosis:
    """Analyse one image with the given champion and record it. Raises UploadRejected; stores
    nothing unless the whole analysis succeeded. The answer comes from pipeline.inference.answer,
    the one inference path (the file decoded in a process with hard limits, the input gate, the
    forward pass on the champion's batching thread); what is stored is the decoded file's pixels
    only (no EXIF, text chunks or DICOM header: they may name the patient). `warning`: the caller's
    own caution (the PACS worker's intended-use check), shown before the gate's."""
    check_size(len(data))
    try:
        with concurrency.answering():
            result = answer(data, champion.predictor, limits=limits(), heatmap=heatmap, keep=True,
                            network=champion.runner)
    except gate.NotAChestXray as exc:
        Refusal.objects.create(owner=owner, source=source, file_format=_sniff_format(data), size_bytes=len(data),
                               reason=exc.reason[:500], gate_score=exc.score, model_name=champion.name,
                               model_version=str(champion.version))
        raise UploadRefused(exc.reason) from None
    except preprocess.InvalidImage as exc:
        raise UploadRejected(exc.reason) from None
    started = time.perf_counter()
    prediction, cam, decoded = result.prediction, result.heatmap, result.file
    fmt = decoded.format
    width, height = decoded.size

    diagnosis = Diagnosis(
        owner=owner, source=source, original_name=stored_name(name, fmt), file_format=fmt,
        size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), width=width, height=height,
        label=prediction.label, probability=float(prediction.probability),
        threshold=float(prediction.threshold), model_name=champion.name,
        model_version=str(champion.version), model_run_id=champion.run_id or "",
        inference_ms=result.infer_ms, heatmap_empty=cam is not None and not float(np.max(cam)) > 0,
        gate_score=prediction.gate_score, warning="; ".join(filter(None, (warning, prediction.warning)))[:500],
        logit=prediction.logit,
        patient_key=patient_key,
    )
    stored = []
    try:
        diagnosis.image.save(f"image.{EXTENSIONS[decoded.stored_format]}", ContentFile(decoded.stored), save=False)
        stored.append(diagnosis.image)
        if cam is not None:
            diagnosis.heatmap.save("heatmap.png", ContentFile(heatmap_png(cam)), save=False)
            stored.append(diagnosis.heatmap)
        # one INSERT, in autocommit: SQLite's write lock is held for the statement only (an atomic
        # block holds it from BEGIN IMMEDIATE while Python builds the query, and a second worker's
        # write then sleeps in SQLite's busy handler)
        diagnosis.save()
    except Exception:
        for f in stored:
            f.storage.delete(f.name)
        raise
    # a new result has no confirmation: said here, so that its answer does not ask the database
    Diagnosis.confirmation.related.set_cached_value(diagnosis, None)
    # for the Server-Timing header: where a request's time went (ms)
    diagnosis.timings = {"decode": result.decode_ms, "infer": result.infer_ms,
                         "store": (time.perf_counter() - started) * 1000}
    for receiver, outcome in answered.send_robust(Diagnosis, diagnosis=diagnosis, data=data, heatmap=heatmap):
        if isinstance(outcome, Exception):
            log.error("after-answer hook %s failed: %s", getattr(receiver, "__qualname__", receiver), outcome)
    return diagnosis


def _sniff_format(data: bytes) -> str:
    """The format a refused file claims to be, from its first bytes (for the refusal record)."""
    if data[128:132] == b"DICM":
        return "DICOM"
    return {b"\xff\xd8": "JPEG", b"\x89P": "PNG"}.get(data[:2], "")


def colormap(x: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGBA uint8, a 'jet'-like ramp (blue -> cyan -> yellow -> red); faint = transparent."""
    x = np.clip(x, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    a = np.clip((x - 0.15) / 0.5, 0, 1) * 0.75
    return (np.stack([r, g, b, a], axis=-1) * 255 + 0.5).astype(np.uint8)


def heatmap_png(cam: np.ndarray, side: int = 512) -> bytes:
    """Grad-CAM [S, S] in [0, 1] -> smooth RGBA PNG (stretched over the X-ray, as the model squashed it)."""
    big = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8), mode="L").resize(
        (side, side), Image.Resampling.BICUBIC)
    rgba = colormap(np.asarray(big, dtype=np.float32) / 255.0)
    return png_bytes(Image.fromarray(rgba, mode="RGBA"))


# --- derived images, made on first request and cached next to the upload ------------------------
def derived_path(diagnosis: Diagnosis, kind: str) -> Path:
    """Path of image kind (image | display | thumb | heatmap) on disk, creating display/thumb."""
    if kind == "image":
        return Path(diagnosis.image.path)
    if kind == "heatmap":
        if not diagnosis.heatmap:
            raise FileNotFoundError("no heat map for this result")
        return Path(diagnosis.heatmap.path)
    source = Path(diagnosis.image.path)
    target = source.with_name(f"{kind}.jpg")
    if not target.exists():
        side = DISPLAY_MAX_SIDE if kind == "display" else THUMB_MAX_SIDE
        _render(source, target, side)
    return target


def _render(source: Path, target: Path, side: int) -> None:
    lim = limits()  # a file the site stored itself, metadata-free: decoded in process
    img = preprocess.load_image(source, draft_size=side, max_pixels=lim.max_pixels, max_bytes=lim.max_bytes,
                                min_side=lim.min_side)  # what the model saw, grey
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="JPEG", quality=88, optimize=True)
        os.replace(tmp, target)  # atomic: concurrent requests never read a half-written file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
