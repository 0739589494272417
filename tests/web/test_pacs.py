"""The PACS gateway against a real Orthanc (Debian's package, started here; no mock): intake by
C-STORE and STOW-RS, the SR and Secondary Capture read back from the PACS, a refusal SR for a CT,
redelivery, a PACS restart and worker restarts mid-stream, two workers without double work.

The worker runs in-process here (`worker.run(once=True)`, the real champion of the web suite);
tests/web/test_pacs_workers.py runs it as processes."""
from __future__ import annotations

import io

import pydicom
import pytest
import requests
from pacsutil import Orthanc, c_store, film_dicom, installed

PNEUMONIA = ("233604007", "SCT")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not installed():
        pytest.skip("Debian's orthanc / orthanc-dicomweb are not installed (scripts/system_deps.sh)")
    o = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield o
    o.stop()


@pytest.fixture
def pacs(orthanc, champion, settings_pacs):
    from diagnosis.pacs.client import PacsClient

    return PacsClient(orthanc.url, orthanc.url + "/dicom-web", "pacs", "test-pacs-password", tries=2, pause=0.2)


@pytest.fixture
def settings_pacs(orthanc, db):
    from django.conf import settings

    from diagnosis.models import PacsCursor

    old = {k: getattr(settings, k) for k in ("XRAY_PACS_URL", "XRAY_PACS_DICOMWEB")}
    settings.XRAY_PACS_URL, settings.XRAY_PACS_DICOMWEB = orthanc.url, orthanc.url + "/dicom-web"
    # each test's rows are rolled back, Orthanc's are not: start after what earlier tests stored
    last = requests.get(orthanc.url + "/changes?last", auth=("pacs", "test-pacs-password"), timeout=5).json()
    PacsCursor.objects.create(name=orthanc.url, last_seq=last["Last"])
    yield
    for k, v in old.items():
        setattr(settings, k, v)


def run_once(pacs):
    from diagnosis.pacs import worker

    return worker.run(once=True, client=pacs)


def series_of_study(pacs, study_uid):
    out = {}
    for item in pacs.study_instances(study_uid):
        sop_class, sop, series = (item[t]["Value"][0] for t in ("00080016", "00080018", "0020000E"))
        out.setdefault(sop_class, []).append((series, sop))
    return out


def read_back(pacs, study_uid, series, sop) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(pacs.retrieve(study_uid, series, sop)))


def content_codes(ds) -> list[tuple]:
    """Every (concept name code, value code or number or text) in the SR tree."""
    found = []

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
            if "ConceptCodeSequence" in item:
                found.append((name, item.ConceptCodeSequence[0].CodeValue))
            if "MeasuredValueSequence" in item:
                found.append((name, float(item.MeasuredValueSequence[0].NumericValue)))
            if "TextValue" in item:
                found.append((name, item.TextValue))
            if "ReferencedSOPSequence" in item:
                found.append(("ref", item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


def test_stow_intake_answers_in_the_same_study(pacs, xray_jpeg, orthanc):
    from diagnosis.models import Diagnosis, PacsInstance

    ds = film_dicom(xray_jpeg, modality="DX", age="003Y", name="DOE^JANE")
    pacs.stow([ds])
    tally = run_once(pacs)
    assert tally.states == {"done": 1}, tally
    inst = PacsInstance.objects.get(sop_uid=ds.SOPInstanceUID)
    d = inst.diagnosis
    assert d.source == "pacs" and inst.accession_number == ds.AccessionNumber and inst.patient_age == "003Y"
    assert inst.study_uid == ds.StudyInstanceUID and inst.patient_sex == "F" and inst.patient_key
    assert "DOE" not in str(list(PacsInstance.objects.values())) + str(list(Diagnosis.objects.values()))
    found = series_of_study(pacs, ds.StudyInstanceUID)
    (sr_series, sr_sop), = found["1.2.840.10008.5.1.4.1.1.88.34"]  # Comprehensive 3D SR
    (sc_series, sc_sop), = found["1.2.840.10008.5.1.4.1.1.7"]  # Secondary Capture
    sr = read_back(pacs, ds.StudyInstanceUID, sr_series, sr_sop)
    assert sr.StudyInstanceUID == ds.StudyInstanceUID and sr.SeriesInstanceUID != ds.SeriesInstanceUID
    codes = content_codes(sr)
    value = "52101004" if d.is_pneumonia else "2667000"
    assert (PNEUMONIA[0], value) in codes
    assert ("PROB", pytest.approx(d.probability, abs=1e-5)) in codes
    assert ("THRESH", pytest.approx(d.threshold, abs=1e-5)) in codes
    assert ("ref", ds.SOPInstanceUID) in codes
    assert any(v == d.model_name for _, v in codes) and any(v == d.model_version for _, v in codes)
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == ds.StudyInstanceUID
    sc = read_back(pacs, ds.StudyInstanceUID, sc_series, sc_sop)
    assert sc.BurnedInAnnotation == "YES" and sc.StudyInstanceUID == ds.StudyInstanceUID
    assert sc.pixel_array.ndim == 3 and sc.pixel_array.shape[2] == 3
    # the banner: the top rows are not the film (black bar with yellow text)
    top = sc.pixel_array[:20]
    assert ((top[..., 0] > 200) & (top[..., 2] < 80)).any()


def test_c_store_intake_and_redelivery(pacs, xray_jpeg, orthanc):
    from diagnosis.models import Diagnosis, PacsCursor, PacsInstance

    start = PacsCursor.objects.get().last_seq
    ds = film_dicom(xray_jpeg, modality="CR", age="002Y")
    assert c_store(orthanc, ds) == 0
    assert run_once(pacs).states == {"done": 1}
    assert Diagnosis.objects.filter(pacs__sop_uid=ds.SOPInstanceUID).count() == 1
    # redelivery: the same instance stored again, and the feed read again from its start
    assert c_store(orthanc, ds) == 0
    pacs.stow([ds])
    PacsCursor.objects.update(last_seq=start)  # the feed read again from before this instance
    tally = run_once(pacs)
    assert set(tally.states) <= {"skipped"}, tally  # only our own SR and capture, seen again: skipped
    assert Diagnosis.objects.filter(pacs__sop_uid=ds.SOPInstanceUID).count() == 1
    assert PacsInstance.objects.filter(sop_uid=ds.SOPInstanceUID).count() == 1
    assert len(series_of_study(pacs, ds.StudyInstanceUID)["1.2.840.10008.5.1.4.1.1.88.34"]) == 1


def test_ct_gets_a_refusal_sr_and_adults_a_warning(pacs, xray_jpeg, orthanc):
    from diagnosis.models import PacsInstance

    ct = film_dicom(xray_jpeg, modality="CT")
    adult = film_dicom(xray_jpeg, modality="DX", age="054Y")
    pacs.stow([ct, adult])
    assert run_once(pacs).states == {"refused": 1, "done": 1}
    refused = PacsInstance.objects.get(sop_uid=ct.SOPInstanceUID)
    assert refused.diagnosis is None and "CT" in refused.reason
    found = series_of_study(pacs, ct.StudyInstanceUID)
    assert "1.2.840.10008.5.1.4.1.1.7" not in found  # no heat map for what was not analysed
    (series, sop), = found["1.2.840.10008.5.1.4.1.1.88.34"]
    codes = content_codes(read_back(pacs, ct.StudyInstanceUID, series, sop))
    assert ("STATUS", "NOTANALYSED") in codes and not any(n == PNEUMONIA[0] for n, _ in codes)
    assert any(isinstance(v, str) and "CT" in v for _, v in codes)
    assert "adult patient (54 years)" in PacsInstance.objects.get(sop_uid=adult.SOPInstanceUID).diagnosis.warning


def test_pacs_restart_mid_stream_loses_nothing(pacs, xray_jpeg, orthanc):
    from diagnosis.models import PacsInstance
    from diagnosis.pacs.client import PacsUnavailable

    first = [film_dicom(xray_jpeg) for _ in range(2)]
    pacs.stow(first)
    orthanc.stop()
    with pytest.raises(PacsUnavailable):
        run_once(pacs)
    orthanc.start()
    later = film_dicom(xray_jpeg)
    pacs.stow([later])
    assert run_once(pacs).states == {"done": 3}
    for ds in first + [later]:
        assert PacsInstance.objects.get(sop_uid=ds.SOPInstanceUID).state == "done"
        assert "1.2.840.10008.5.1.4.1.1.88.34" in series_of_study(pacs, ds.StudyInstanceUID)


def test_send_fault_after_analysis_resends_without_analysing_again(pacs, xray_jpeg, orthanc, monkeypatch):
    from diagnosis.models import Diagnosis, PacsInstance
    from diagnosis.pacs.client import PacsClient, PacsUnavailable

    ds = film_dicom(xray_jpeg)
    pacs.stow([ds])
    real = PacsClient.stow

    def down(self, datasets):
        raise PacsUnavailable("STOW-RS: connection refused")

    monkeypatch.setattr(PacsClient, "stow", down)  # the PACS goes down between analysis and sending
    with pytest.raises(PacsUnavailable):
        run_once(pacs)
    inst = PacsInstance.objects.get(sop_uid=ds.SOPInstanceUID)
    assert inst.state == "pending" and inst.diagnosis is not None
    monkeypatch.setattr(PacsClient, "stow", real)
    before = Diagnosis.objects.count()
    assert run_once(pacs).states == {"done": 1}
    assert Diagnosis.objects.count() == before


def test_no_model_the_study_waits(pacs, xray_jpeg, orthanc):
    from diagnosis import champion as mod
    from diagnosis.models import PacsInstance

    class Empty:
        def get(self, wait=True):
            return None

        def peek(self):
            return None

    ds = film_dicom(xray_jpeg)
    pacs.stow([ds])
    previous = mod.reset_holder(Empty())
    try:
        assert run_once(pacs).faults == 1
        assert PacsInstance.objects.get(sop_uid=ds.SOPInstanceUID).state == "pending"
    finally:
        mod.reset_holder(previous)
    assert run_once(pacs).states == {"done": 1}
