from django.apps import AppConfig


class DiagnosisConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "diagnosis"
    verbose_name = "Diagnoses"

    def ready(self) -> None:
        from . import signals  # noqa: F401 - connects the file clean-up on delete
        from .analysis import answered
        from .shadow import runner

        answered.connect(runner.on_answered, dispatch_uid="shadow")  # live answers to the pending challenger
