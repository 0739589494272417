"""A real Orthanc (Debian's package) for the PACS tests: own config, storage, ports; started and
stopped by the tests (restartable on the same storage)."""
from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import requests
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGINS = "/usr/share/orthanc/plugins"
USER, PASSWORD = "pacs", "test-pacs-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def installed() -> bool:
    return Path(ORTHANC).exists() and Path(PLUGINS, "libOrthancDicomWeb.so").exists()


class Orthanc:
    def __init__(self, root: Path):
        self.root, self.http, self.dicom = root, free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http}"
        self.aet, self.proc = "XRAYPACS", None
        root.mkdir(parents=True, exist_ok=True)
        (root / "orthanc.json").write_text(json.dumps({
            "Name": "xray-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
            "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": self.aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [PLUGINS],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 2, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "UnknownSqlite": False}))

    def start(self) -> "Orthanc":
        self.proc = subprocess.Popen([ORTHANC, str(self.root / "orthanc.json")], stdout=open(self.root / "log", "a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/system", auth=(USER, PASSWORD), timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("Orthanc did not start:\n" + (self.root / "log").read_text()[-3000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None

    def env(self) -> dict:
        return {"XRAY_PACS_URL": self.url, "XRAY_PACS_DICOMWEB": self.url + "/dicom-web", "XRAY_PACS_USER": USER,
                "XRAY_PACS_PASSWORD": PASSWORD, "XRAY_PACS_DICOM_PORT": str(self.dicom), "XRAY_PACS_AET": self.aet}


def film_dicom(jpeg: Path | bytes, modality: str = "DX", age: str = "004Y", view: str = "PA",
               name: str = "TEST^PATIENT", patient_id: str = "P1", study_uid: str | None = None) -> pydicom.Dataset:
    """A real film wrapped into a DICOM of `modality` (fake patient name: it must never be stored)."""
    data = jpeg.read_bytes() if isinstance(jpeg, Path) else jpeg
    img = Image.open(io.BytesIO(data)).convert("L")
    img.thumbnail((1024, 1024))
    pixels = np.asarray(img, dtype=np.uint8)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "CR": "1.2.840.10008.5.1.4.1.1.1"}.get(
        modality, "1.2.840.10008.5.1.4.1.1.1.1")
    ds.file_meta.MediaStorageSOPClassUID, ds.SOPClassUID = sop_class, sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientAge, ds.PatientSex = name, patient_id, age, "F"
    ds.AccessionNumber, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "ACC" + ds.SOPInstanceUID[-6:], "1", 1, 1
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20261206", "120000", ""
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = modality, view, "CHEST"
    ds.PatientOrientation = ["L", "F"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def c_store(orthanc: Orthanc, ds: pydicom.Dataset) -> int:
    """Send by DICOM C-STORE (pynetdicom), as a modality does; returns the status."""
    from pynetdicom import AE

    ae = AE(ae_title="XRAYTEST")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", orthanc.dicom, ae_title=orthanc.aet)
    assert assoc.is_established, "no association with Orthanc"
    try:
        return assoc.send_c_store(ds).Status
    finally:
        assoc.release()


# --- the worker as processes (tests/web/test_pacs_workers.py, benchmarks/bench_pacs.py) ------------
REPO = Path(__file__).resolve().parents[2]
SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


def start_worker(env: dict, log: Path) -> subprocess.Popen:
    import sys

    return subprocess.Popen([sys.executable, "manage.py", "pacs_worker"], cwd=REPO / "django_app", env=env,
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(proc: subprocess.Popen, kill: bool = False) -> None:
    import os
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        proc.wait(60)


def sr_count(orthanc: Orthanc, study_uid: str) -> tuple[int, int]:
    """(SR, Secondary Capture) instances in the study, by QIDO-RS."""
    r = requests.get(f"{orthanc.url}/dicom-web/studies/{study_uid}/instances", auth=(USER, PASSWORD), timeout=10)
    items = r.json() if r.status_code == 200 and r.content else []
    classes = [i["00080016"]["Value"][0] for i in items]
    return classes.count(SR_CLASS), classes.count(SC_CLASS)


def stow(orthanc: Orthanc, datasets) -> None:
    import uuid

    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dicom_bytes(ds) + b"\r\n"
                    for ds in datasets) + f"--{boundary}--\r\n".encode()
    r = requests.post(f"{orthanc.url}/dicom-web/studies", data=body, auth=(USER, PASSWORD), timeout=60,
                      headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    r.raise_for_status()
