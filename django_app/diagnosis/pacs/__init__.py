"""The PACS gateway: studies from the hospital's archive analysed as they arrive, answered in the
same study as DICOM (docs/pacs.md).

- `client`: the PACS over HTTP only (Orthanc's REST changes feed, DICOMweb STOW-RS), with retries;
- `intake`: the changes feed -> a claim per SOP instance -> the one inference path -> results back;
- `report`: the DICOM objects sent back (TID1500 SR, refusal SR, Secondary Capture with the heat map).
The loop is `manage.py pacs_worker`.
"""
