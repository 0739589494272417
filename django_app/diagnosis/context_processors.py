from django.conf import settings


def site(request):
    """Cheap facts every page shows (never loads a model)."""
    from .champion import holder

    champion = holder().peek()
    return {
        "champion": champion,
        "max_upload_mb": int(settings.XRAY_MAX_UPLOAD_MB),
        "max_files": settings.XRAY_MAX_FILES,
    }
