"""Forget the file names stored before the policy of analysis.stored_name (issue 11 item 15)."""
from django.db import migrations

GENERIC = {"JPEG": "upload.jpg", "PNG": "upload.png", "DICOM": "upload.dcm"}


def forget(apps, schema_editor):
    Diagnosis = apps.get_model("diagnosis", "Diagnosis")
    for fmt, name in GENERIC.items():
        Diagnosis.objects.filter(file_format=fmt).exclude(original_name=name).update(original_name=name)
    Diagnosis.objects.exclude(file_format__in=list(GENERIC)).update(original_name="upload.bin")


class Migration(migrations.Migration):
    dependencies = [("diagnosis", "0001_initial")]
    operations = [migrations.RunPython(forget, migrations.RunPython.noop)]
