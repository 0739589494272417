"""Helpers shared by the web tests (importable from test modules, unlike conftest.py)."""
from __future__ import annotations

import io
import socket
from pathlib import Path

from PIL import Image

MODEL_NAME = "web-test-xray"
PASSWORD = "correct-horse-battery-9"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_user(username: str, staff: bool = False):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username, password=PASSWORD, is_staff=staff)


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def bomb_png(side: int = 20000) -> bytes:
    """A tiny PNG file (a few kB) that claims 20000x20000 = 400 Mpx: a decompression bomb."""
    return png_bytes(Image.new("1", (side, side)), optimize=True)


def truncated_jpeg(data: bytes) -> bytes:
    return data[: len(data) // 2]


def threshold_variant(checkpoint: Path, threshold: float, dest: Path) -> Path:
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ckpt["threshold"] = threshold
    torch.save(ckpt, dest)
    return dest


def register_version(uri: str, name: str, checkpoint: Path) -> str:
    """Register the checkpoint as a new version, the way the platform does (pipeline.mlops.aliases)."""
    import os

    from pipeline.settings import config
    from pipeline.mlops import tracking

    assert os.environ.get("MLFLOW_TRACKING_URI") == uri
    params = config.apply_overrides(config.load_params(), {"registry.model_name": name,
                                                           "registry.experiment": "web-tests"})
    return str(tracking.register_checkpoint(checkpoint, params, tags={"trigger": "web-tests"})["version"])


def set_champion(uri: str, name: str, version: str | None) -> None:
    """Move the champion alias (a promotion by hand), or delete it (None: model withdrawn)."""
    from mlflow import MlflowClient

    from pipeline.mlops import aliases

    if version is None:
        MlflowClient(tracking_uri=uri).delete_registered_model_alias(name, "champion")
    else:
        aliases.promote(int(version), name=name, force=True)


def ensure_champion(uri: str, name: str, version: str) -> None:
    """Promote `version` unless it already is the champion (one cheap read in the usual case)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        current = MlflowClient(tracking_uri=uri).get_model_version_by_alias(name, "champion").version
    except MlflowException:
        current = None
    if str(current) != str(version):
        set_champion(uri, name, version)


def make_holder(uri: str, name: str, check_seconds: float = 3600, retry_seconds: float = 3600):
    from diagnosis.champion import ChampionHolder, MlflowRegistry
    from pipeline.mlops.server import CHAMPION

    return ChampionHolder(MlflowRegistry(uri, name, CHAMPION), check_seconds=check_seconds,
                          retry_seconds=retry_seconds, load_timeout=120)


def upload(client, data: bytes, name: str = "chest.jpeg", **extra):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post("/upload/", {"images": SimpleUploadedFile(name, data)}, **extra)


def api(client, data: bytes, name: str = "chest.jpeg", query: str = "", **extra):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post("/api/predict" + query, {"image": SimpleUploadedFile(name, data)}, **extra)


def staff_client(user):
    """A test client signed in as a staff `user` who has passed the second step (diagnosis.mfa)."""
    from django.test import Client

    from diagnosis import mfa

    client = Client()
    client.force_login(user)
    session = client.session
    session[mfa.SESSION_KEY] = user.pk
    session.save()
    return client
