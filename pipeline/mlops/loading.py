"""Loading registered versions: download (cached, versions are immutable), the checkpoint of a
`models:/` URI, a version as a Predictor (float32 torch or the fast engine), and the serving check."""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.inference.engine import FastEngine
from pipeline.inference.predict import Predictor
from pipeline.model.artifacts import checkpoint_in, onnx_in
from pipeline.mlops.server import (CHAMPION, FAST_PATH_TAG, NoChampion, alias_version, connect, model_name)
from pipeline.settings import config
from pipeline.settings.params import Params

def _cache_root() -> Path:
    return config.env_path("XRAY_MODEL_CACHE_DIR", config.REPO_ROOT / ".cache" / "models")


def download_version(version: int, name: str | None = None, client=None) -> Path:
    """Local directory of a registered version's pyfunc model (cached: versions are immutable).

    The cache key includes the tracking URI and the version's source (a unique logged-model id), so
    two servers with the same model name and version numbers never share an entry.
    """
    import mlflow

    client = client or connect()
    name = model_name(name=name)
    mv = client.get_model_version(name, str(version))
    key = hashlib.sha1(f"{client.tracking_uri}|{mv.source}|{mv.run_id}".encode()).hexdigest()[:16]
    target = _cache_root() / f"{name}-v{mv.version}-{key}"
    if (target / "MLmodel").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}",
                                                         dst_path=str(tmp)))
        if not (local / "MLmodel").exists():
            found = next(local.rglob("MLmodel"), None)
            if found is None:
                raise FileNotFoundError(f"models:/{name}/{mv.version} has no MLmodel file")
            local = found.parent
        try:
            os.replace(local, target)          # atomic: concurrent loaders never see half a model
        except OSError:
            if not (target / "MLmodel").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def checkpoint_path(uri: str) -> Path:
    """model.pt of `models:/<name>@<alias>` or `models:/<name>/<version>`, through the same version
    cache as the site: the one way the CLI (--model), warm starts (model.init) and Django load a
    registered model."""
    rest = uri.removeprefix("models:/")
    client = connect()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = alias_version(client, name, alias)
        if version is None:
            raise NoChampion(f"{uri}: registered model '{name}' has no alias '{alias}' at {client.tracking_uri}")
    else:
        name, _, number = rest.rpartition("/")
        if not name or not number.isdigit():
            raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
        version = int(number)
    return checkpoint_in(download_version(version, name, client))


def resolve_model(model: str | Path) -> Path:
    """A model.pt path as given, or the model.pt of a registered `models:/...` URI (checkpoint_path)."""
    if str(model).startswith("models:/"):
        try:
            return checkpoint_path(str(model))
        except Exception as exc:
            raise RuntimeError(f"cannot load {model}: {exc}") from exc
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"{model!r} is neither an existing checkpoint file nor models:/...")
    return path


def warm_start(params: Params) -> Path | None:
    """The model.pt that params model.init names when it is a registered version (models:/...):
    training warm-starts from it. None for scratch, imagenet or a file path (used as they are)."""
    init = params.model.init
    return resolve_model(init) if init.startswith("models:/") else None


def load_version(version: int, name: str | None = None, device=None, tracking_uri: str | None = None,
                 fast: bool = False, threads: int = 0):
    """(Predictor, ModelVersion) of one registered version. fast: run it on the fast path
    (pipeline.inference.engine) when the version passed its agreement check; else float32 torch."""
    client = connect(tracking_uri)
    name = model_name(name=name)
    mv = client.get_model_version(name, str(version))
    local = download_version(int(mv.version), name, client)
    predictor = Predictor.from_checkpoint(checkpoint_in(local), device=device)
    tags = mv.tags or {}
    precision = tags.get(f"{FAST_PATH_TAG}.precision") or None
    onnx_file = onnx_in(local, int8=precision == "int8")
    if fast and tags.get(FAST_PATH_TAG) == "on" and onnx_file is not None:
        predictor.engine = FastEngine(onnx_file, predictor.intensity, precision=precision, threads=threads)
    return predictor, mv


def load_champion(name: str | None = None, device=None, alias: str = CHAMPION, tracking_uri: str | None = None,
                  fast: bool = False, threads: int = 0):
    """(Predictor, ModelVersion) of the version holding `alias` (default champion; raises NoChampion).

    The files are downloaded once per version into $XRAY_MODEL_CACHE_DIR; later calls only ask the
    server which version holds the alias.
    """
    client = connect(tracking_uri)
    name = model_name(name=name)
    version = alias_version(client, name, alias)
    if version is None:
        raise NoChampion(f"registered model '{name}' has no '{alias}' alias at {client.tracking_uri}; "
                         f"train one (`python -m pipeline train --mlflow`) and promote it")
    return load_version(version, name, device=device, tracking_uri=client.tracking_uri, fast=fast, threads=threads)


def champion_version(name: str | None = None, tracking_uri: str | None = None) -> int | None:
    """Version number holding `champion` (None when there is none)."""
    return alias_version(connect(tracking_uri), model_name(name=name), CHAMPION)


def serving_check(version: int, name: str | None = None) -> list[str]:
    """What would stop `version` from serving: it must load, and answer a finite probability in
    [0, 1] and a finite heat map on warm-up images (the web app refuses the same). [] = fine."""
    import numpy as np
    from PIL import Image

    try:
        predictor, _ = load_version(int(version), model_name(name=name), device="cpu")
        size = int(predictor.image_size)
        ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
        probs = predictor.probabilities(np.stack([np.zeros((size, size), np.uint8), ramp]))
    except Exception as exc:  # noqa: BLE001 - any failure to load or run is the answer
        return [f"v{version} does not load or run: {type(exc).__name__}: {exc}"[:500]]
    values = [float(p) for p in probs]
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in values):
        return [f"v{version} answers non-finite or out-of-range probabilities {values}"]
    try:
        prediction, cam = predictor.gradcam(Image.fromarray(ramp))
    except Exception as exc:  # noqa: BLE001
        return [f"v{version} fails to draw a heat map: {type(exc).__name__}: {exc}"[:500]]
    if not np.isfinite(np.asarray(cam, dtype=np.float64)).all():
        return [f"v{version} gives a non-finite heat map"]
    return []

