"""Data versioning with DVC: which dataset version is checked out, fetching it, publishing a new one.

The dataset lives in the DVC workspace ``data/chest_xray`` of a git + DVC repository; git holds
only the pointer ``data/chest_xray.dvc``, whose md5 (the hash of the directory listing) *is* the
data version. A data engineer publishes a version (``dvc add`` + ``git commit`` + ``dvc push`` +
``git push``, see ``scripts/import_data.sh`` / ``publish``); the retraining DAG fetches the newest
one (``update``: ``git pull`` where the repository has an upstream, then ``dvc pull``).

Everything here runs the ``dvc`` and ``git`` command lines (the same commands a person would type,
logged as they run), so this module imports nothing heavy.

Environment (all optional):
  XRAY_REPO               the git + DVC repository to work in (default: this repository)
  XRAY_DVC_REMOTE         URL of the DVC remote to use instead of the configured default
                          (a local directory, or s3://bucket/prefix for MinIO / S3)
  XRAY_DVC_REMOTE_NAME    which configured remote to use (default: the repository's `core.remote`)
  XRAY_DVC_S3_ENDPOINT    S3 endpoint for an s3:// remote (MinIO: http://minio:9000); credentials
                          come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as usual
  XRAY_GIT_PUSH           0 to never `git push` after publishing (default: push when the branch
                          has an upstream)
  XRAY_GIT_PULL           0 to never `git pull` before `dvc pull` (default: pull when the branch
                          has an upstream)

CLI: ``python -m pipeline.data.versioning {status,update,pull,publish} [--repo PATH]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from pipeline.settings.config import DATA_ASSET_URI, REPO_ROOT

log = logging.getLogger(__name__)

DATA_DIR = "data/chest_xray"          # the DVC-tracked dataset, relative to the repository root
ENV_REMOTE_NAME = "env"               # name of the remote built from XRAY_DVC_REMOTE (in config.local)


class VersioningError(RuntimeError):
    """A git or dvc command failed, or the repository has no data version."""


class NoDataVersion(VersioningError):
    """The repository tracks no dataset yet (no data/chest_xray.dvc): a retry cannot help."""


@dataclass
class DataVersion:
    hash: str                 # DVC md5 of the directory (without the ".dir" suffix): THE data version
    nfiles: int | None
    size: int | None          # bytes
    path: str                 # workspace path relative to the repository root
    git_commit: str | None    # commit of the repository when read (None outside git)

    @property
    def short(self) -> str:
        return self.hash[:8]

    def to_dict(self) -> dict:
        return asdict(self)


def repo_root(repo: str | Path | None = None) -> Path:
    if repo is not None:
        return Path(repo).resolve()
    return Path(os.environ.get("XRAY_REPO") or REPO_ROOT).expanduser().resolve()


def data_root(repo: str | Path | None = None) -> Path:
    """The dataset folder the DAG trains on: ``<repo>/data/chest_xray``."""
    return repo_root(repo) / DATA_DIR


# ---------------------------------------------------------------------------- command runners
def _run(cmd: list[str], cwd: Path, what: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_TERMINAL_PROMPT="0")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    shown = " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd)
    log.info("$ %s  (%.1fs, rc=%d)", shown, took, proc.returncode)
    for line in (proc.stdout + proc.stderr).strip().splitlines()[-15:]:
        log.info("  %s", line)
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise VersioningError(f"{what} failed in {cwd} (rc={proc.returncode}): {tail}")
    return proc


def dvc(*args: str, repo: str | Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the dvc CLI of this Python environment inside the repository."""
    return _run([sys.executable, "-m", "dvc", *args], repo_root(repo), f"dvc {args[0]}", check)


def git(*args: str, repo: str | Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    verb = next((a for a in args if not a.startswith("-") and "=" not in a), args[0])
    return _run(["git", *args], repo_root(repo), f"git {verb}", check)


def _git_out(*args: str, repo: Path) -> str | None:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


# ---------------------------------------------------------------------------- reading the version
def data_version(repo: str | Path | None = None, target: str = DATA_DIR) -> DataVersion | None:
    """The data version the repository points at (read from ``<target>.dvc``), None if untracked."""
    root = repo_root(repo)
    pointer = root / f"{target}.dvc"
    if not pointer.exists():
        return None
    with open(pointer) as f:
        meta = yaml.safe_load(f) or {}
    outs = meta.get("outs") or []
    if not outs or not (outs[0].get("md5") or outs[0].get("hash")):
        raise VersioningError(f"{pointer} has no md5: was `dvc add` interrupted?")
    out = outs[0]
    md5 = str(out.get("md5") or out.get("hash"))
    return DataVersion(hash=md5.removesuffix(".dir"), nfiles=out.get("nfiles"), size=out.get("size"),
                       path=target, git_commit=_git_out("rev-parse", "HEAD", repo=root))


def dataset_hash(repo: str | Path | None = None) -> str | None:
    version = data_version(repo)
    return version.hash if version else None


# ---------------------------------------------------------------------------- remotes
def configure_remote(repo: str | Path | None = None) -> str | None:
    """Apply XRAY_DVC_* environment variables; return the remote name to pass to dvc (-r).

    XRAY_DVC_REMOTE writes a machine-local remote (``.dvc/config.local``, never committed), so the
    same committed repository works with a local folder on a laptop and MinIO in production.
    """
    root = repo_root(repo)
    name = os.environ.get("XRAY_DVC_REMOTE_NAME") or None
    url = os.environ.get("XRAY_DVC_REMOTE")
    if url:
        name = name or ENV_REMOTE_NAME
        if "://" not in url:
            url = str(Path(url).expanduser().resolve())
            Path(url).mkdir(parents=True, exist_ok=True)
        dvc("remote", "add", "--local", "--force", name, url, repo=root)
    endpoint = os.environ.get("XRAY_DVC_S3_ENDPOINT")
    if endpoint:
        target = name or _default_remote(root)
        if target:
            dvc("remote", "modify", "--local", target, "endpointurl", endpoint, repo=root)
    return name


def _default_remote(root: Path) -> str | None:
    proc = dvc("config", "core.remote", repo=root, check=False)
    return proc.stdout.strip() or None


def _remote_args(name: str | None) -> list[str]:
    return ["-r", name] if name else []


# ---------------------------------------------------------------------------- fetching
def git_pull(repo: str | Path | None = None) -> dict:
    """Fast-forward the repository from its upstream (when it has one); returns what happened."""
    root = repo_root(repo)
    before = _git_out("rev-parse", "HEAD", repo=root)
    upstream = _git_out("rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}", repo=root)
    if os.environ.get("XRAY_GIT_PULL", "1") == "0":
        log.info("git: XRAY_GIT_PULL=0: keeping the local data pointer")
        return {"pulled": False, "upstream": upstream, "before": before, "after": before}
    if not upstream:
        log.info("git: no upstream configured for %s: keeping the local data pointer", root)
        return {"pulled": False, "upstream": None, "before": before, "after": before}
    git("pull", "--ff-only", "--quiet", repo=root)
    after = _git_out("rev-parse", "HEAD", repo=root)
    return {"pulled": True, "upstream": upstream, "before": before, "after": after}


def pull(repo: str | Path | None = None, target: str = DATA_DIR) -> DataVersion:
    """``dvc pull`` the dataset the pointer names into the workspace (a no-op when up to date)."""
    root = repo_root(repo)
    version = data_version(root, target)
    if version is None:
        raise NoDataVersion(f"{root / target}.dvc does not exist: import a dataset first "
                              f"(make data DATA=<folder>)")
    remote = configure_remote(root)
    dvc("pull", *_remote_args(remote), f"{target}.dvc", repo=root)
    return version


def update(repo: str | Path | None = None, target: str = DATA_DIR) -> dict:
    """What the DAG's detect task does: git pull, dvc pull; returns small JSON for XCom."""
    root = repo_root(repo)
    started = time.perf_counter()
    git_info = git_pull(root)
    version = pull(root, target)
    return {**version.to_dict(), "git": git_info, "data_root": str(root / target),
            "repo": str(root), "seconds": round(time.perf_counter() - started, 2)}


def pull_golden(golden_dir: str, repo: str | Path | None = None) -> dict | None:
    """``dvc pull <golden_dir>.dvc`` when the golden evaluation set is configured and tracked by its own
    pointer (docs/data-and-dag.md, "The golden evaluation set"). No ``-r``: the pointer names its own
    remote (``remote: golden`` in the .dvc file), readable with the DAG's read-only credentials, so
    XRAY_DVC_REMOTE (the data engineers' remote) never applies to it. Returns the pointer's md5 and
    files, None when no golden set is configured or it is not DVC-tracked (a folder provided by the
    deployment, read-only). Whether the content is the pinned one is checked by pipeline.data.golden."""
    if not golden_dir.strip() or Path(golden_dir).is_absolute():
        return None
    root = repo_root(repo)
    target = golden_dir.strip().rstrip("/")
    if not (root / f"{target}.dvc").exists():
        return None
    dvc("pull", f"{target}.dvc", repo=root)
    version = data_version(root, target)
    return {"path": target, "md5": version.hash, "nfiles": version.nfiles} if version else None


# ---------------------------------------------------------------------------- publishing
def publish(repo: str | Path | None = None, target: str = DATA_DIR, message: str | None = None,
            push: bool = True) -> DataVersion:
    """``dvc add`` the workspace folder, commit the pointer, ``dvc push`` and ``git push``.

    Only the pointer files are committed (``git commit -- <paths>``), whatever else is staged.
    Publishing an unchanged folder creates no commit and returns the current version.
    """
    root = repo_root(repo)
    if not (root / target).is_dir():
        raise VersioningError(f"{root / target} is not a folder")
    previous = data_version(root, target)
    dvc("add", target, repo=root)
    version = data_version(root, target)
    assert version is not None
    pointer_files = [f"{target}.dvc"]
    gitignore = Path(target).parent / ".gitignore"
    if (root / gitignore).exists():
        pointer_files.append(str(gitignore))
    git("add", *pointer_files, repo=root)
    changed = git("diff", "--cached", "--quiet", "--", *pointer_files, repo=root, check=False).returncode
    if changed:
        msg = message or (f"data: {target} version {version.short} "
                          f"({version.nfiles} files{', was ' + previous.short if previous else ''})")
        identity = [] if _git_out("config", "user.email", repo=root) else [
            "-c", "user.name=xray-platform", "-c", "user.email=xray-platform@localhost"]  # a fresh machine
        git(*identity, "commit", "--quiet", "-m", msg, "--", *pointer_files, repo=root)
        version.git_commit = _git_out("rev-parse", "HEAD", repo=root)
    else:
        log.info("data version %s unchanged: nothing to commit", version.short)
    if push:
        remote = configure_remote(root)
        dvc("push", *_remote_args(remote), f"{target}.dvc", repo=root)
        upstream = _git_out("rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}", repo=root)
        if upstream and os.environ.get("XRAY_GIT_PUSH", "1") != "0":
            git("push", "--quiet", repo=root)
        elif not upstream:
            log.info("git: no upstream: the pointer commit stays local (push it to share it)")
    return version


# ---------------------------------------------------------------------------- Airflow
def announce(version: DataVersion, airflow_url: str | None = None) -> bool:
    """Tell Airflow that a new data version exists (an asset event on DATA_ASSET_URI), so that the
    retraining DAG runs now rather than at the next daily run. Needs $AIRFLOW_URL (with
    $AIRFLOW_USER / $AIRFLOW_PASSWORD); without it, or when Airflow does not answer, it says so and
    returns False: the daily schedule still picks the version up."""
    import urllib.error
    import urllib.parse
    import urllib.request

    url = (airflow_url or os.environ.get("AIRFLOW_URL", "")).rstrip("/")
    if not url:
        log.info("AIRFLOW_URL not set: the next daily run of the DAG will see data version %s", version.short)
        return False

    def call(method: str, path: str, payload: dict | None = None, token: str | None = None) -> dict:
        req = urllib.request.Request(url + path, data=json.dumps(payload).encode() if payload else None,
                                     method=method, headers={"Content-Type": "application/json",
                                                             **({"Authorization": f"Bearer {token}"} if token else {})})
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.load(resp)

    try:
        token = call("POST", "/auth/token", {"username": os.environ.get("AIRFLOW_USER", "admin"),
                                             "password": os.environ.get("AIRFLOW_PASSWORD", "")})["access_token"]
        found = call("GET", "/api/v2/assets?uri_pattern=" + urllib.parse.quote(DATA_ASSET_URI), token=token)
        ids = [a["id"] for a in found.get("assets", []) if a.get("uri") == DATA_ASSET_URI]
        if not ids:
            raise LookupError(f"Airflow knows no asset {DATA_ASSET_URI} (is the DAG parsed?)")
        call("POST", "/api/v2/assets/events", {"asset_id": ids[0], "extra": {
            "data_version": version.hash, "nfiles": version.nfiles, "git_commit": version.git_commit}}, token=token)
    except (OSError, ValueError, KeyError, LookupError, urllib.error.URLError) as exc:
        log.warning("could not tell Airflow at %s about data version %s (%s): the daily run will",
                    url, version.short, exc)
        return False
    log.info("Airflow told: asset %s updated (data version %s)", DATA_ASSET_URI, version.short)
    return True


# ---------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data.versioning", description=__doc__.split("\n")[0])
    parser.add_argument("--repo", help="git + DVC repository (default: $XRAY_REPO or this repository)")
    parser.add_argument("--target", default=DATA_DIR, help="DVC-tracked folder (default: %(default)s)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="print the data version the repository points at")
    sub.add_parser("pull", help="dvc pull the dataset")
    sub.add_parser("update", help="git pull (when an upstream exists) then dvc pull")
    p = sub.add_parser("publish", help="dvc add + git commit the pointer + dvc push (+ git push)")
    p.add_argument("-m", "--message")
    p.add_argument("--no-push", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "status":
            version = data_version(args.repo, args.target)
            out = version.to_dict() if version else None
        elif args.cmd == "pull":
            out = pull(args.repo, args.target).to_dict()
        elif args.cmd == "update":
            out = update(args.repo, args.target)
        else:
            previous = data_version(args.repo, args.target)
            version = publish(args.repo, args.target, args.message, push=not args.no_push)
            out = version.to_dict()
            if previous is None or previous.hash != version.hash:
                out["airflow_notified"] = announce(version)
    except VersioningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
