"""Refuse oversized request bodies before any other middleware touches them (issue 11, item 5).

Django's CsrfViewMiddleware reads request.POST - the whole multipart body, spooled to /tmp - as
soon as a csrftoken cookie is present, before authentication and before the upload view can
check sizes. This middleware comes first and answers 413 from the Content-Length header alone,
so an anonymous client cannot make a worker read (and store) a huge body. A body without a
Content-Length (chunked) is refused with 411: browsers and HTTP clients send the length for
uploads, and a length is what makes the early refusal possible. The nginx proxy of the compose
stack applies the same limit one hop earlier.
"""
from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse


class RequestSizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        meta = request.META
        limit = settings.XRAY_MAX_BODY_BYTES
        if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
            return JsonResponse({"error": "length_required",
                                 "detail": "send the body with a Content-Length"}, status=411)
        try:
            length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"error": "bad_request", "detail": "invalid Content-Length"}, status=400)
        if length > limit:
            return JsonResponse({"error": "too_large",
                                 "detail": f"request body over {limit // (1024 * 1024)} MB"}, status=413)
        return self.get_response(request)
