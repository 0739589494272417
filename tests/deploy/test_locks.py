"""The locks in requirements/ (scripts/lock.sh) against pyproject.toml, and their installer.

- every lock pins every package to one version with at least one sha256 hash;
- each lock covers what it is compiled from (pyproject's core and extras: a dependency edited there
  without `make lock` fails here), and one package has one version in every lock;
- the web lock holds no torch and no training or orchestration stack; torch lives in torch.txt only;
- scripts/install_locked.sh refuses a file whose hash is not the lock's, and a lock that misses a
  dependency (real pip, offline, into a fresh venv).
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
TORCH_FAMILY = re.compile(r"^(torch|torchvision|triton|nvidia-.+|cuda-.+)$")

# lock -> what scripts/lock.sh compiles it from (None: the project's core dependencies)
SOURCES = {
    "dev.txt": [None, *EXTRAS],
    "web.txt": [None, "serve"],
    "airflow.txt": [None, "serve", "train", "orchestrate"],
    "mlflow.txt": ["mlflow-server"],
}


def pins(lock: str) -> dict[str, str]:
    """name -> version; asserts every entry is `name==version` followed by its hashes."""
    out, current = {}, None
    for line in (LOCKS / lock).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isalnum():
            m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)( ; [^\\]+)? \\", line)   # marker: where it applies
            assert m, f"{lock}: not an exact pin with hashes: {line!r}"
            name = canonicalize_name(m.group(1))
            assert name not in out, f"{lock}: {name} twice"
            out[name], current = m.group(2), name
        else:
            assert re.fullmatch(r"\s+--hash=sha256:[0-9a-f]{64}( \\)?", line), f"{lock}: {line!r}"
            assert current, f"{lock}: a hash before any package"
    return out


def direct(source: str | None) -> list[Requirement]:
    return [Requirement(r) for r in (PROJECT["dependencies"] if source is None else EXTRAS[source])]


@pytest.mark.parametrize("lock", [*SOURCES, "torch.txt"])
def test_every_package_is_pinned_with_hashes(lock):
    found = pins(lock)
    assert found
    text = (LOCKS / lock).read_text()
    assert text.count("==") <= text.count("--hash=sha256:"), f"{lock}: a package without a hash"


@pytest.mark.parametrize("lock", SOURCES)
def test_each_lock_covers_its_sources(lock):
    locked = pins(lock) | pins("torch.txt")
    for source in SOURCES[lock]:
        for req in direct(source):
            name = canonicalize_name(req.name)
            assert name in locked, f"{lock}: {req} ({source or 'core'}) is not locked: run `make lock`"
            assert req.specifier.contains(locked[name], prereleases=True), \
                f"{lock}: {name}=={locked[name]} does not satisfy {req}: run `make lock`"
    if lock != "mlflow.txt":  # the editable install builds with the venv's own setuptools
        for req in map(Requirement, PYPROJECT["build-system"]["requires"]):
            assert req.specifier.contains(locked[canonicalize_name(req.name)])


def test_one_version_per_package_across_locks():
    seen: dict[str, tuple[str, str]] = {}
    for lock in [*SOURCES, "torch.txt"]:
        for name, version in pins(lock).items():
            first = seen.setdefault(name, (version, lock))
            assert first[0] == version, f"{name}: {version} in {lock}, {first[0]} in {first[1]}"


def test_torch_is_locked_apart():
    torch = pins("torch.txt")
    assert {"torch", "torchvision"} <= set(torch)
    assert all(TORCH_FAMILY.match(name) for name in torch), "torch.txt holds torch's own wheels only"
    for lock in SOURCES:
        family = {name for name in pins(lock) if TORCH_FAMILY.match(name)}
        assert not family, f"{lock} holds {family}: they belong in torch.txt (TORCH_INDEX_URL)"


def test_the_web_lock_is_the_serving_tier_without_torch():
    web = set(pins("web.txt"))
    for absent in ("torch", "torchvision", "onnxscript", "nncf", "onnxruntime", "scikit-learn", "matplotlib",
                   "pandas", "mlflow", "apache-airflow", "celery", "dvc", "pytest"):
        assert absent not in web, f"web.txt holds {absent}"
    for needed in ("django", "gunicorn", "openvino", "mlflow-skinny", "highdicom", "pynetdicom", "scipy"):
        assert needed in web


# the client library each URL scheme that compose hands a service needs, in that service's image
DRIVERS = {"postgres": "psycopg2-binary", "postgresql": "psycopg2-binary", "postgresql+psycopg2": "psycopg2-binary",
           "redis": "redis", "s3": "boto3", "http": "requests"}


def test_each_image_lock_has_the_drivers_of_the_urls_compose_gives_its_services():
    """A URL in a service's environment (DATABASE_URL, XRAY_CACHE_URL, ...) is only usable when its
    image installs the client: the web image once lacked redis, and every production upload was a 500."""
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    checked = set()
    for name, svc in compose["services"].items():
        image = re.search(r"-(web|mlflow|airflow)(?:-gpu)?:", svc.get("image", ""))
        env = svc.get("environment") or {}
        if not image or not isinstance(env, dict):
            continue
        have = set(pins(f"{image.group(1)}.txt")) | ({"torch"} if image.group(1) == "airflow" else set())
        for key, value in env.items():
            scheme = re.match(r"([a-z0-9+]+)://", str(value))
            if scheme and scheme.group(1) in DRIVERS:
                assert DRIVERS[scheme.group(1)] in have, f"{name}: {key} is {scheme.group(1)}:// but " \
                                                          f"{image.group(1)}.txt has no {DRIVERS[scheme.group(1)]}"
                checked.add((image.group(1), scheme.group(1)))
    assert {("web", "postgres"), ("web", "redis")} <= checked


def test_requires_python_is_what_was_checked():
    """CI runs 3.11; 3.12 and 3.13 were checked (README, "Python versions"); the universal locks
    carry the markers of those versions (pyyaml-ft: libcst's YAML on 3.13 only)."""
    spec = Requirement(f"python{PROJECT['requires-python']}").specifier
    assert [v for v in ("3.10", "3.11", "3.12", "3.13", "3.14") if spec.contains(f"{v}.0")] == ["3.11", "3.12", "3.13"]
    assert "3.12 and 3.13" in (REPO / "README.md").read_text()
    dev = (LOCKS / "dev.txt").read_text()
    assert re.search(r"^pyyaml-ft==\S+ ; python_full_version == '3\.13\.\*'", dev, re.M), "locks are not universal"


def fake_wheel(folder: Path, name: str, version: str, requires: str = "") -> str:
    """A minimal valid wheel (one module), made here: no index is reached. Returns its sha256."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + (f"Requires-Dist: {requires}\n" if requires else "")
    files = {f"{name}.py": b"VALUE = 1\n", f"{dist}/METADATA": meta.encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\n"
                     for p, d in files.items()) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for p, d in files.items():
            zf.writestr(p, d)
        zf.writestr(f"{dist}/RECORD", record)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(180)
def test_installer_checks_hashes_and_completeness(tmp_path):
    """Real pip, offline, into a fresh venv: a file whose hash is not the lock's is refused; a lock
    that misses a dependency fails at `pip check` (the lock is installed with --no-deps)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    top = fake_wheel(wheels, "xraylocktop", "1.0", requires="xraylockdep==2.0")
    dep = fake_wheel(wheels, "xraylockdep", "2.0")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_CONSTRAINT": "",
           "PIP_CONFIG_FILE": os.devnull}

    def install(*entries: tuple[str, str, str]) -> subprocess.CompletedProcess:
        lock = tmp_path / "lock.txt"
        lock.write_text("".join(f"{n}=={v} \\\n    --hash=sha256:{h}\n" for n, v, h in entries))
        return subprocess.run([str(REPO / "scripts/install_locked.sh"), str(py), str(lock)],
                              env=env, capture_output=True, text=True, timeout=120)

    def installed(name: str) -> bool:
        return subprocess.run([str(py), "-c", f"import {name}"], capture_output=True).returncode == 0

    bad = install(("xraylockdep", "2.0", "0" * 64))
    assert bad.returncode != 0 and "DO NOT MATCH THE HASHES" in bad.stderr, bad.stderr
    assert not installed("xraylockdep")
    missing = install(("xraylocktop", "1.0", top))
    assert missing.returncode != 0, "a lock without xraylockdep passed"
    assert "xraylockdep" in missing.stdout + missing.stderr
    ok = install(("xraylocktop", "1.0", top), ("xraylockdep", "2.0", dep))
    assert ok.returncode == 0, ok.stderr
    assert installed("xraylocktop") and installed("xraylockdep")


def test_every_package_directory_is_listed():
    """A package missing from [tool.setuptools] packages imports in the editable install but is left
    out of a built wheel."""
    tool = PYPROJECT["tool"]["setuptools"]
    found = set()
    for top, folder in tool["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((top, *rel)))
    assert found == set(tool["packages"]), f"missing: {found - set(tool['packages'])}, stale: {set(tool['packages']) - found}"
