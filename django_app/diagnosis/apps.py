from django.apps import AppConfig


class DiagnosisConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "diagnosis"
    verbose_name = "Diagnoses"

    def ready(self) -> None:
        from . import signals  # noqa: F401 - connects the file clean-up on delete
