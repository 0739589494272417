"""The PACS, over HTTP only: Orthanc's REST API for its changes feed and files, DICOMweb (STOW-RS)
to send results back. Nothing is loaded into the PACS: Orthanc's Python plugin is AGPL, and a
hospital's own PACS takes no plug-ins anyway.

Transient faults (connection refused, timeouts, 5xx, 429) are retried here a few times with a
growing pause; what still fails raises PacsUnavailable, and the worker backs off longer (intake).
"""
from __future__ import annotations

import io
import logging
import time
import uuid

import requests
from pydicom import Dataset
from pydicom.filewriter import dcmwrite

log = logging.getLogger(__name__)

RETRY_STATUS = {429, 500, 502, 503, 504}


class PacsUnavailable(RuntimeError):
    """The PACS did not answer (or answered 5xx) after the retries: try again later."""


class PacsClient:
    def __init__(self, url: str, dicomweb: str, user: str = "", password: str = "", timeout: float = 30.0,
                 tries: int = 3, pause: float = 0.5):
        self.url, self.dicomweb = url.rstrip("/"), dicomweb.rstrip("/")
        self.session = requests.Session()
        if user:
            self.session.auth = (user, password)
        self.timeout, self.tries, self.pause = timeout, tries, pause

    @classmethod
    def from_settings(cls) -> "PacsClient":
        from django.conf import settings

        return cls(settings.XRAY_PACS_URL, settings.XRAY_PACS_DICOMWEB, settings.XRAY_PACS_USER,
                   settings.XRAY_PACS_PASSWORD)

    def _call(self, method: str, url: str, **kwargs) -> requests.Response:
        delay = self.pause
        for attempt in range(1, self.tries + 1):
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
                if response.status_code not in RETRY_STATUS:
                    response.raise_for_status()  # 4xx: our mistake or a missing resource, not retried
                    return response
                problem = f"HTTP {response.status_code}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = type(exc).__name__
            if attempt < self.tries:
                time.sleep(delay)
                delay *= 2
        raise PacsUnavailable(f"{method} {url}: {problem} after {self.tries} tries")

    # --- Orthanc's REST API ------------------------------------------------------------------
    def changes(self, since: int, limit: int = 100) -> dict:
        """{"Changes": [{"Seq", "ChangeType", "ResourceType", "ID"}...], "Last": seq, "Done": bool}"""
        return self._call("GET", f"{self.url}/changes", params={"since": since, "limit": limit}).json()

    def instance_file(self, pacs_id: str) -> bytes:
        return self._call("GET", f"{self.url}/instances/{pacs_id}/file").content

    def instance_tags(self, pacs_id: str) -> dict:
        return self._call("GET", f"{self.url}/instances/{pacs_id}/simplified-tags").json()

    def alive(self) -> bool:
        try:
            return self.session.get(f"{self.url}/system", timeout=3).status_code == 200
        except requests.RequestException:
            return False

    # --- DICOMweb ----------------------------------------------------------------------------
    def stow(self, datasets: list[Dataset]) -> dict:
        """STOW-RS the datasets (one multipart request); the PACS files them under their study."""
        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        for ds in datasets:
            part = io.BytesIO()
            dcmwrite(part, ds, enforce_file_format=True)
            body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            body.write(part.getvalue())
            body.write(b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        answer = self._call("POST", f"{self.dicomweb}/studies", data=body.getvalue(), headers=headers)
        result = answer.json() if answer.content else {}
        failed = (result.get("00081198") or {}).get("Value") or []  # FailedSOPSequence
        if failed:
            raise PacsUnavailable(f"STOW-RS refused {len(failed)} object(s)")
        return result

    def study_instances(self, study_uid: str) -> list[dict]:
        """QIDO-RS: every instance of a study (tests, the benchmark, and checks by an administrator)."""
        return self._call("GET", f"{self.dicomweb}/studies/{study_uid}/instances",
                          headers={"Accept": "application/dicom+json"}).json()

    def retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """WADO-RS of one instance, as a DICOM file (multipart answer unwrapped)."""
        response = self._call("GET", f"{self.dicomweb}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
                              headers={"Accept": 'multipart/related; type="application/dicom"'})
        content = response.content
        start = content.find(b"\r\n\r\n") + 4
        end = content.rfind(b"\r\n--")
        return content[start:end]
