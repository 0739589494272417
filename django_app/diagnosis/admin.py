from django.contrib import admin

from .models import ApiToken, Diagnosis


@admin.register(Diagnosis)
class DiagnosisAdmin(admin.ModelAdmin):
    list_display = ("created", "owner", "label", "probability", "model_name", "model_version", "source")
    list_filter = ("label", "model_version", "source")
    search_fields = ("owner__username", "original_name", "sha256")
    date_hierarchy = "created"
    readonly_fields = [f.name for f in Diagnosis._meta.fields]

    def has_add_permission(self, request):  # answers come from the model, never typed in
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("user", "name", "prefix", "created", "last_used")
    readonly_fields = ("prefix", "key_hash", "created", "last_used")
    search_fields = ("user__username", "name", "prefix")
