"""Stand-in for the site's diagnosis.shadow.evidence (contract 3 of issue 27): the figures come from the
JSON file $XRAY_TEST_SHADOW_FILE that the test writes; each call is appended to $XRAY_TEST_SHADOW_FILE.calls."""
from __future__ import annotations

import json
import os
from pathlib import Path


def evidence(model_name: str, version: int) -> dict:
    path = Path(os.environ["XRAY_TEST_SHADOW_FILE"])
    with open(f"{path}.calls", "a") as calls:
        calls.write(json.dumps({"model_name": model_name, "version": version}) + "\n")
    figures = json.loads(path.read_text())
    return {"version": version, "answered": 0, "dropped": 0, "failed": 0, "since": None, "days": 0.0,
            "agreement": None, "confirmed": 0, "challenger": None, "champion": None, "page": "/staff/shadow/",
            **figures}
