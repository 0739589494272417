"""A deleted result takes its files with it (issue 11 item 15).

Deleting a Diagnosis row (one by one, from the admin; a doctor's account cannot be deleted while it
has results: Diagnosis.owner is PROTECT, issue 25 item 8) removes its folder xrays/<owner>/<id>/ (the upload, the heat map and the cached display
and thumbnail renderings), once the deletion has committed: a rolled-back deletion keeps them.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import ApiToken, Diagnosis

log = logging.getLogger(__name__)


def _folder(diagnosis: Diagnosis) -> Path | None:
    """xrays/<owner>/<id>/ under MEDIA_ROOT, or None if the stored names point anywhere else."""
    root = (Path(settings.MEDIA_ROOT) / "xrays").resolve()
    expected = root / str(diagnosis.owner_id) / str(diagnosis.id)
    for field in (diagnosis.image, diagnosis.heatmap):
        if field and field.name:
            folder = (Path(settings.MEDIA_ROOT) / field.name).resolve().parent
            if folder != expected:
                log.warning("diagnosis %s: file %s is outside its folder; left in place", diagnosis.id, field.name)
                return None
    return expected


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # the owner's folder, once it is empty (account deleted)
    except OSError:
        pass


@receiver(post_delete, sender=Diagnosis, dispatch_uid="diagnosis-delete-files")
def delete_files(sender, instance: Diagnosis, **kwargs) -> None:
    folder = _folder(instance)
    if folder is not None:
        transaction.on_commit(lambda: _remove(folder), using=kwargs.get("using"))


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="password-change-revokes-tokens")
def revoke_tokens_on_password_change(sender, instance, created: bool, **kwargs) -> None:
    """A new password ends every API token of the account (issue 25 item 15): whoever changed it
    because it leaked must not be left with keys issued to the intruder. set_password() keeps the
    raw password in `_password` until save() has run, which is how a change is told apart."""
    if not created and getattr(instance, "_password", None) is not None:
        ApiToken.objects.filter(user=instance).delete()
