from django.contrib import admin

from .models import ApiToken, Diagnosis, Refusal, StaffTotp

FILE_FIELDS = ("image", "heatmap")


@admin.register(Diagnosis)
class DiagnosisAdmin(admin.ModelAdmin):
    list_display = ("created", "owner", "original_name", "label", "probability", "model_name", "model_version", "source")
    list_filter = ("label", "model_version", "source")
    search_fields = ("owner__username", "original_name", "sha256")
    date_hierarchy = "created"
    # Files are shown as their storage path: uploads have no public URL, and the image view
    # serves them to their owner only.
    exclude = FILE_FIELDS
    readonly_fields = [f.name for f in Diagnosis._meta.fields if f.name not in FILE_FIELDS] + ["stored_files"]

    @admin.display(description="stored files")
    def stored_files(self, obj):
        return ", ".join(f.name for f in (obj.image, obj.heatmap) if f) or "-"

    def has_add_permission(self, request):  # answers come from the model, never typed in
        return False

    def has_change_permission(self, request, obj=None):  # a record of what the model said: view only
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("user", "name", "prefix", "created", "last_used")
    readonly_fields = ("prefix", "key_hash", "created", "last_used")
    search_fields = ("user__username", "name", "prefix")


@admin.register(Refusal)
class RefusalAdmin(admin.ModelAdmin):
    """What the input gate refused, and why (the image itself is never kept)."""
    list_display = ("created", "owner", "source", "file_format", "reason", "gate_score", "model_version")
    list_filter = ("source", "file_format", "model_version")
    search_fields = ("owner__username", "reason")
    date_hierarchy = "created"
    readonly_fields = [f.name for f in Refusal._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- accounts: deactivated, never deleted (issue 25 item 8) -------------------------------------------
# A doctor's results are medical records (Diagnosis.owner is PROTECT): an account that leaves is
# switched off, which ends its sessions (inactive users are not loaded) and its API tokens.
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.admin import UserAdmin  # noqa: E402

User = get_user_model()


def deactivate(modeladmin, request, queryset):
    users = list(queryset.exclude(pk=request.user.pk))  # not oneself: the admin would lock itself out
    ApiToken.objects.filter(user__in=users).delete()
    count = queryset.filter(pk__in=[u.pk for u in users]).update(is_active=False)
    modeladmin.message_user(request, f"{count} account(s) deactivated; their results are kept.")


deactivate.short_description = "Deactivate the selected accounts (results are kept)"


class AccountAdmin(UserAdmin):
    actions = [deactivate]
    list_filter = ("is_active", "is_staff", "is_superuser")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_delete_permission(self, request, obj=None):
        return False


admin.site.unregister(User)
admin.site.register(User, AccountAdmin)


@admin.register(StaffTotp)
class StaffTotpAdmin(admin.ModelAdmin):
    """Deleting a staff member's authenticator makes them enrol a new one at the next sign-in."""
    list_display = ("user", "confirmed", "created")
    fields = ("user", "confirmed", "created")
    readonly_fields = fields  # the secret is never shown

    def has_add_permission(self, request):
        return False
