"""Loading registered versions: download (cached, versions are immutable), the checkpoint of a
`models:/` URI, a version as the float32 torch reference (evaluation, the DAG) or as the site
serves it (its ONNX file, no torch: `serve_version`), and the serving check."""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.inference.served import NotServable, ServedModel
from pipeline.model.artifacts import checkpoint_in
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


def load_version(version: int, name: str | None = None, device=None, tracking_uri: str | None = None):
    """(Predictor, ModelVersion) of one registered version: the float32 torch reference that
    evaluation measures (needs the train install)."""
    from pipeline.inference.predict import Predictor

    client = connect(tracking_uri)
    name = model_name(name=name)
    mv = client.get_model_version(name, str(version))
    local = download_version(int(mv.version), name, client)
    return Predictor.from_checkpoint(checkpoint_in(local), device=device), mv


def serve_version(version: int, name: str | None = None, tracking_uri: str | None = None, fast: bool = True,
                  threads: int = 0):
    """(ServedModel, ModelVersion): the version as the site answers with it, from its ONNX file
    (no torch). fast: at the precision its fast-path check passed (int8, bf16), else the float32
    file in float32. Raises NotServable (with the command that fixes it) for a version registered
    before the serving tier."""
    client = connect(tracking_uri)
    name = model_name(name=name)
    mv = client.get_model_version(name, str(version))
    local = download_version(int(mv.version), name, client)
    tags = mv.tags or {}
    precision = tags.get(f"{FAST_PATH_TAG}.precision") if fast and tags.get(FAST_PATH_TAG) == "on" else None
    try:
        return ServedModel.from_dir(local, precision or "f32", threads), mv
    except NotServable as exc:
        raise NotServable(f"v{mv.version} cannot be served: {exc.reason}. Re-export it where the training tools are "
                          f"installed: `xray reexport --version {mv.version} --promote` (the same weights, "
                          f"registered as a new version with the serving files)") from None


def load_champion(name: str | None = None, device=None, alias: str = CHAMPION, tracking_uri: str | None = None):
    """(Predictor, ModelVersion) of the version holding `alias` (default champion; raises NoChampion),
    the float32 torch reference. The files are downloaded once per version into
    $XRAY_MODEL_CACHE_DIR; later calls only ask the server which version holds the alias."""
    client = connect(tracking_uri)
    name = model_name(name=name)
    return load_version(_holder_of(client, name, alias), name, device=device, tracking_uri=client.tracking_uri)


def serve_alias(alias: str = CHAMPION, name: str | None = None, tracking_uri: str | None = None, fast: bool = True,
                threads: int = 0):
    """serve_version() of the version holding `alias` (raises NoChampion): what the site loads."""
    client = connect(tracking_uri)
    name = model_name(name=name)
    return serve_version(_holder_of(client, name, alias), name, client.tracking_uri, fast=fast, threads=threads)


def _holder_of(client, name: str, alias: str) -> int:
    version = alias_version(client, name, alias)
    if version is None:
        raise NoChampion(f"registered model '{name}' has no '{alias}' alias at {client.tracking_uri}; "
                         f"train one (`python -m pipeline train --mlflow`) and promote it")
    return version


def champion_version(name: str | None = None, tracking_uri: str | None = None) -> int | None:
    """Version number holding `champion` (None when there is none)."""
    return alias_version(connect(tracking_uri), model_name(name=name), CHAMPION)


def serving_check(version: int, name: str | None = None) -> list[str]:
    """What would stop `version` from serving, checked on what the site runs (its ONNX file at the
    precision the site would use, no torch): it must load, and answer a finite probability in
    [0, 1] and a finite heat map on warm-up images (the web app refuses the same). [] = fine."""
    import numpy as np
    from PIL import Image

    try:
        served, _ = serve_version(int(version), model_name(name=name))
        size = int(served.image_size)
        ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
        probs = served.probabilities(np.stack([np.zeros((size, size), np.uint8), ramp]))
    except NotServable as exc:
        return [str(exc)[:500]]
    except Exception as exc:  # noqa: BLE001 - any failure to load or run is the answer
        return [f"v{version} does not load or run: {type(exc).__name__}: {exc}"[:500]]
    values = [float(p) for p in probs]
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in values):
        return [f"v{version} answers non-finite or out-of-range probabilities {values}"]
    try:
        prediction, cam = served.gradcam(Image.fromarray(ramp))
    except Exception as exc:  # noqa: BLE001
        return [f"v{version} fails to draw a heat map: {type(exc).__name__}: {exc}"[:500]]
    if not np.isfinite(np.asarray(cam, dtype=np.float64)).all():
        return [f"v{version} gives a non-finite heat map"]
    return []
