"""What goes back into the study: DICOM objects any PACS viewer reads (highdicom).

- `finding_sr`: a Comprehensive 3D SR, TID1500 "Imaging Measurement Report", one TID1501 group for
  the analysed image: the finding coded SNOMED CT Pneumonia (233604007) = Present (52101004) or
  Absent (2667000), the probability and the threshold (unitless), the algorithm (model name and
  version), the source image referenced (its SOP Class and Instance UIDs).
- `refusal_sr`: the same template with no finding: "not analysed" and the reason, as text.
- `heatmap_capture`: a Secondary Capture, the heat map over the film, with a banner burned in
  ("AI result, not for diagnosis") so that no one reads it as an acquired image.
Each goes into a new series of the source's study (same Study Instance UID, patient copied from it).
"""
from __future__ import annotations

import numpy as np
import highdicom as hd
from highdicom.sr import CodedConcept
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

MANUFACTURER = "xray-pneumonia platform"  # our objects are known by it, and never analysed again
BANNER = "AI result, not for diagnosis"
PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("2667000", "SCT", "Absent")
CHEST_XRAY = CodedConcept("43468-8", "LN", "XR Chest 2 Views")  # procedure reported (LOINC)
# our own concepts, in a private coding scheme ("99" prefix: private by the standard's rule)
PROBABILITY = CodedConcept("PROB", "99XRAY", "Probability of pneumonia")
THRESHOLD = CodedConcept("THRESH", "99XRAY", "Decision threshold")
STATUS = CodedConcept("STATUS", "99XRAY", "AI analysis status")
NOT_ANALYSED = CodedConcept("NOTANALYSED", "99XRAY", "Image not analysed")
REASON = CodedConcept("121106", "DCM", "Comment")
NO_UNIT = CodedConcept("1", "UCUM", "no units")
SR_SERIES, SC_SERIES = 9901, 9902


def series_of(uid: str) -> str:
    """The series UID of an object, derived from its SOP Instance UID: a resend after a fault
    stores the very same object (same series), not a copy in a new series."""
    return generate_uid(entropy_srcs=[uid, "series"])


# type 2 attributes (present, may be empty) that the SR and capture copy from the source: a
# modality may leave them out, and the objects sent back must still be valid
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")


def complete(source: Dataset) -> Dataset:
    ds = source.copy()
    for key in TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    return ds


def _observation(model: str) -> hd.sr.ObservationContext:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=model[:64], manufacturer_name=MANUFACTURER))
    return hd.sr.ObservationContext(observer_device_context=device)


def _document(source: Dataset, group, model: str, sr_uid: str, description: str) -> hd.sr.Comprehensive3DSR:
    report = hd.sr.MeasurementReport(observation_context=_observation(model), procedure_reported=CHEST_XRAY,
                                     imaging_measurements=[group], title=codes.DCM.ImagingMeasurementReport)
    return hd.sr.Comprehensive3DSR(
        evidence=[complete(source)], content=report, series_number=SR_SERIES, series_instance_uid=series_of(sr_uid),
        sop_instance_uid=sr_uid, instance_number=1, manufacturer=MANUFACTURER,
        series_description=description[:64], is_complete=True, is_final=False, is_verified=False)


def _group(source: Dataset, **kwargs) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="AI pneumonia", uid=hd.UID()),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)], **kwargs)


def finding_sr(source: Dataset, *, present: bool, probability: float, threshold: float, model_name: str,
               model_version: str, sr_uid: str, warning: str = "") -> hd.sr.Comprehensive3DSR:
    """The answer for one image, as TID1500 (source: the analysed instance's header)."""
    algorithm = hd.sr.AlgorithmIdentification(name=model_name[:64], version=str(model_version)[:64])
    group = _group(
        source, finding_type=PNEUMONIA, algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(PNEUMONIA, PRESENT if present else ABSENT)],
        measurements=[hd.sr.Measurement(name=PROBABILITY, value=round(float(probability), 6), unit=NO_UNIT,
                                        algorithm_id=algorithm),
                      hd.sr.Measurement(name=THRESHOLD, value=round(float(threshold), 6), unit=NO_UNIT,
                                        algorithm_id=algorithm)])
    if warning:
        _comment(group, f"caution: {warning}")
    label = "PNEUMONIA" if present else "NORMAL"
    return _document(source, group, f"{model_name} v{model_version}", sr_uid,
                     f"AI pneumonia: {label} {probability:.0%} (not for diagnosis)")


def refusal_sr(source: Dataset, *, reason: str, model: str, sr_uid: str) -> hd.sr.Comprehensive3DSR:
    """The image was not analysed, and why; no finding."""
    group = _group(source, qualitative_evaluations=[hd.sr.QualitativeEvaluation(STATUS, NOT_ANALYSED)])
    _comment(group, reason)
    return _document(source, group, model, sr_uid, "AI pneumonia: NOT ANALYSED")


def _comment(group, text: str) -> None:
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=REASON, value=text[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))


# --- the heat map over the film -------------------------------------------------------------------
def overlay(film: Image.Image, heat: Image.Image | None, caption: str, side: int = 1024) -> np.ndarray:
    """RGB uint8: the film (grey), the heat map stretched over it, a banner on top (burned in)."""
    film = film.convert("L")
    film.thumbnail((side, side), Image.Resampling.LANCZOS)
    rgb = film.convert("RGBA")
    if heat is not None:
        rgb = Image.alpha_composite(rgb, heat.convert("RGBA").resize(rgb.size, Image.Resampling.BICUBIC))
    rgb = rgb.convert("RGB")
    size = max(14, rgb.height // 28)
    font = _font(size)
    bar = size * 2 + 12
    canvas = Image.new("RGB", (rgb.width, rgb.height + bar), (0, 0, 0))
    canvas.paste(rgb, (0, bar))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), BANNER, fill=(255, 210, 0), font=font)
    draw.text((8, 8 + size), caption, fill=(255, 255, 255), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def heatmap_capture(source: Dataset, pixels: np.ndarray, sc_uid: str) -> hd.sc.SCImage:
    orientation = source.get("PatientOrientation")
    orientation = tuple(orientation) if orientation is not None and len(orientation) == 2 else ("L", "F")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=complete(source), pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=orientation, series_instance_uid=series_of(sc_uid),
        series_number=SC_SERIES, sop_instance_uid=sc_uid, instance_number=1, manufacturer=MANUFACTURER,
        series_description="AI pneumonia heat map (not for diagnosis)")
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = BANNER
    return sc
