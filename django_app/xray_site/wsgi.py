"""WSGI entry point (gunicorn xray_site.wsgi, see django_app/gunicorn.conf.py)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xray_site.settings")
application = get_wsgi_application()
