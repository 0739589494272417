#!/usr/bin/env python3
"""The compose stack's PACS intake, end to end; scripts/stack_test.sh runs it inside the pacs-worker
container (the web image's packages; the PACS's address, AE title and login from its environment):

    docker compose exec -T pacs-worker python scripts/stack_pacs_check.py < film.jpeg

The film on stdin, wrapped as a frontal chest DX (a made-up child: the test data are paediatric), is
sent to Orthanc by DICOM C-STORE as a modality sends it; the PACS worker must answer in the same
study with a Comprehensive 3D SR and a Secondary Capture within PACS_WAIT_S (240) seconds. Prints
the SR's answer in one line; exits non-zero with the reason otherwise.
"""
from __future__ import annotations

import io
import os
import sys
import time
from urllib.parse import urlparse

import numpy as np
import pydicom
import requests
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"          # Digital X-Ray Image Storage - For Presentation
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"        # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"            # Secondary Capture


def film(data: bytes) -> pydicom.Dataset:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.uint8)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = DX_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientAge, ds.PatientSex = "STACK^TEST", "STACK-1", "004Y", "F"
    ds.AccessionNumber, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "STACK1", "1", 1, 1
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = time.strftime("%Y%m%d"), "120000", ""
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined, ds.PatientOrientation = "DX", "PA", "CHEST", ["L", "F"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def send(ds: pydicom.Dataset, url: str) -> None:
    ae = AE(ae_title="STACKTEST")
    ae.add_requested_context(DX_CLASS, ExplicitVRLittleEndian)
    assoc = ae.associate(urlparse(url).hostname, int(os.environ.get("XRAY_PACS_DICOM_PORT", "4242")),
                         ae_title=os.environ.get("XRAY_PACS_AET", "XRAYPACS"))
    if not assoc.is_established:
        sys.exit("stack_pacs_check: no DICOM association with the PACS")
    try:
        status = assoc.send_c_store(ds).Status
    finally:
        assoc.release()
    if status != 0:
        sys.exit(f"stack_pacs_check: C-STORE refused, status 0x{status:04x}")


def answer_in_study(study: str, url: str, auth) -> dict[str, str]:
    """SOP class -> SOP instance UID of what the study holds now (QIDO-RS)."""
    r = requests.get(f"{url}/dicom-web/studies/{study}/instances", auth=auth, timeout=30)
    r.raise_for_status()
    return {i["00080016"]["Value"][0]: i["00080018"]["Value"][0] for i in (r.json() if r.content else [])}


def sr_text(sop: str, url: str, auth) -> str:
    """The SR's coded answers and numbers, flattened: what a PACS viewer shows."""
    ids = requests.post(f"{url}/tools/lookup", data=sop, auth=auth, timeout=30).json()
    data = requests.get(f"{url}/instances/{ids[0]['ID']}/file", auth=auth, timeout=30).content
    found = []

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if "ConceptCodeSequence" in item:
                found.append(f"{name}: {item.ConceptCodeSequence[0].CodeMeaning}")
            elif "MeasuredValueSequence" in item:
                found.append(f"{name}: {item.MeasuredValueSequence[0].NumericValue}")
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(io.BytesIO(data)).get("ContentSequence", []))
    return "; ".join(found)


def main() -> None:
    url = os.environ["XRAY_PACS_URL"].rstrip("/")
    auth = (os.environ.get("XRAY_PACS_USER", "pacs"), os.environ["XRAY_PACS_PASSWORD"])
    ds = film(sys.stdin.buffer.read())
    started = time.monotonic()
    send(ds, url)
    deadline = started + float(os.environ.get("PACS_WAIT_S", "240"))
    while True:
        held = answer_in_study(ds.StudyInstanceUID, url, auth)
        if {SR_CLASS, SC_CLASS} <= set(held):
            break
        if time.monotonic() > deadline:
            sys.exit(f"stack_pacs_check: no SR and Secondary Capture in the study after the wait (it holds {sorted(held)})")
        time.sleep(2)
    print(f"answered in the same study in {time.monotonic() - started:.0f} s (SR + Secondary Capture): "
          f"{sr_text(held[SR_CLASS], url, auth)}")


if __name__ == "__main__":
    main()
