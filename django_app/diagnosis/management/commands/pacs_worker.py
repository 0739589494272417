"""python django_app/manage.py pacs_worker [--once]: analyse what arrives on the PACS (docs/pacs.md).

A long-running loop: reads the PACS's changes feed, claims each new instance, answers it with the
champion (the same path as uploads) and sends a DICOM SR and heat-map capture into its study.
`--once`: one pass over what is there, then exit (tests; a cron job)."""
from __future__ import annotations

import signal

from django.conf import settings
from django.core.management.base import BaseCommand

from diagnosis.pacs import worker
from diagnosis.pacs.client import PacsUnavailable


class Command(BaseCommand):
    help = "Analyse new CR/DX instances from the PACS and send the results back into their studies."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one pass over the feed, then exit")

    def handle(self, *args, once: bool = False, **options):
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))  # finish the instance in hand, then stop
        self.stdout.write(f"pacs_worker: {settings.XRAY_PACS_URL} (AE {settings.XRAY_PACS_AET}), "
                          f"{'one pass' if once else 'until stopped'}")
        try:
            tally = worker.run(once=once, stop=lambda: bool(stopping))
        except PacsUnavailable as exc:
            self.stderr.write(f"PACS unavailable: {exc}")
            raise SystemExit(2) from None
        self.stdout.write(f"pacs_worker: {tally.states} (faults {tally.faults})")
