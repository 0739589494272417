"""Joins the two 0002 branches (input gate + drift records; forgotten file names): independent changes."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("diagnosis", "0002_forget_original_names"), ("diagnosis", "0002_gate_drift")]
    operations = []
