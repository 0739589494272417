"""Delete input-gate refusals older than the retention period (docs/operations.md, "Retention")."""
from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from diagnosis.models import Refusal


class Command(BaseCommand):
    help = "Delete refusals (reasons only, never an image) older than --days (default 730)."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=730)

    def handle(self, *args, days: int, **options):
        deleted, _ = Refusal.objects.filter(created__lt=timezone.now() - timedelta(days=days)).delete()
        self.stdout.write(f"{deleted} refusal(s) older than {days} days deleted")
