"""Back up the site's records and images: python django_app/manage.py backup_site DEST

Writes DEST/<UTC timestamp>/ (mode 700, files 600: it holds patient images):
- database.json: every row (dumpdata), readable by `loaddata` whatever the database engine;
- database.sqlite3: a consistent copy of a SQLite database (the online backup API), when SQLite;
- media.tar.gz: MEDIA_ROOT (uploads and heat maps) under media/;
- manifest.json: when, how many rows and files.
Run it daily (cron, a systemd timer) and copy DEST off the machine: docs/operations.md, "Retention".
"""
from __future__ import annotations

import datetime
import json
import os
import sqlite3
import tarfile
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connection

from diagnosis.models import Diagnosis, Refusal


def _private(path: Path):
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


class Command(BaseCommand):
    help = "Back up the database and MEDIA_ROOT into a new timestamped folder under DEST."

    def add_arguments(self, parser):
        parser.add_argument("dest")

    def handle(self, *args, dest: str, **options):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        folder = Path(dest).expanduser() / f"xray-site-{stamp}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700)

        with _private(folder / "database.json") as out:
            out.write(b"")  # created 0600 first; dumpdata then writes the rows into it
        call_command("dumpdata", "--natural-foreign", "--exclude", "contenttypes", "--exclude", "auth.permission",
                     "--exclude", "sessions", "--exclude", "axes", output=str(folder / "database.json"),
                     verbosity=0)
        if connection.vendor == "sqlite" and not connection.is_in_memory_db():
            # the online backup API from a connection of its own: in WAL mode it reads a consistent
            # snapshot while the site keeps writing (the site's own connection could be mid-transaction)
            with _private(folder / "database.sqlite3"):
                pass
            source = sqlite3.connect(f"file:{connection.settings_dict['NAME']}?mode=ro", uri=True, timeout=20)
            target = sqlite3.connect(folder / "database.sqlite3")
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()

        media, files = Path(settings.MEDIA_ROOT), 0
        with _private(folder / "media.tar.gz") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            if media.is_dir():
                for path in sorted(media.rglob("*")):
                    if path.is_file() and not path.is_symlink():
                        tar.add(path, arcname=f"media/{path.relative_to(media)}", recursive=False)
                        files += 1
        manifest = {"created": stamp, "database": connection.vendor, "files": files,
                    "diagnoses": Diagnosis.objects.count(), "refusals": Refusal.objects.count()}
        with _private(folder / "manifest.json") as out:
            out.write(json.dumps(manifest, indent=1).encode())
        self.stdout.write(f"backup written to {folder} ({files} files, {manifest['diagnoses']} results)")
