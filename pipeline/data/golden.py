"""The golden evaluation set: a fixed folder of labelled X-rays that no data version can shape.

The held-out and stress sets are carved from each data version, so whoever can push a data pointer
chooses both what a model learns and what it is tested on. The golden set is owned by the quality
team instead (its own `.dvc` pointer, its own DVC remote, read-only for the DAG; see
docs/data-and-dag.md, "The golden evaluation set"), and:

- its content is pinned: `evaluate.golden_fingerprint` in params.yaml (reviewed in git) must equal
  `fingerprint(folder)`, or nothing runs (GoldenSetError): the set cannot be edited silently;
- it is discovered and validated by the same code as the training data (pipeline.data.dataset), laid out
  `<golden>/NORMAL|PNEUMONIA/*` (JPEG, PNG, DICOM; patient ids as for the data, patients.csv included);
- its patients, and any byte-identical copy of its images under another name, are dropped from
  every data version before the split (`exclude`): a pushed pointer cannot put golden patients into
  training, validation or the held-out set; the report counts them;
- challenger and champion are scored on it by pipeline.evaluation.quality.score (`golden_*` figures), and
  the promotion policy may gate on it (promotion.golden_floors, promotion.golden_no_worse).

CLI: ``python -m pipeline.data.golden fingerprint DIR`` prints the value to pin;
``python -m pipeline.data.golden check`` verifies the configured set against the pin.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.settings import config
from pipeline.data.cache import content_hash
from pipeline.data.dataset import DatasetError, Sample, ValidationReport
from pipeline.settings.params import Params
from pipeline.data import dataset


class GoldenSetError(DatasetError):
    """The golden set is missing, not pinned, changed since it was pinned, or unusable."""


@dataclass
class GoldenSet:
    root: Path
    fingerprint: str
    nfiles: int
    samples: list[Sample]                       # validated (digest and cache row set)
    report: ValidationReport
    patients: set[str] = field(default_factory=set)   # known patient ids (unknown ones never match)
    digests: set[str] = field(default_factory=set)    # content hashes of its images

    def summary(self) -> dict:
        return {"root": str(self.root), "fingerprint": self.fingerprint, "files": self.nfiles,
                "images": len(self.samples), "patients": len({s.patient for s in self.samples}),
                "counts": self.report.counts}


def golden_root(params: Params) -> Path | None:
    """The configured folder (relative paths: to the repository, $XRAY_REPO as the DAG uses), or None."""
    setting = params.evaluate.golden_dir.strip()
    if not setting:
        return None
    path = Path(setting).expanduser()
    if path.is_absolute():
        return path
    return Path(os.environ.get("XRAY_REPO") or config.REPO_ROOT).expanduser().resolve() / path


def fingerprint(root: str | Path) -> tuple[str, int]:
    """(sha256 hex, number of files) over every file under root (links followed): relative path and
    content hash of each, in path order. Adding, removing, renaming, relabelling (moving between
    NORMAL/ and PNEUMONIA/) or editing any file, patients.csv included, changes it."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.relative_to(root).as_posix()}\t{content_hash(path)}\n".encode())
    return h.hexdigest(), len(files)


def verify(params: Params) -> tuple[Path, str, int] | None:
    """(root, fingerprint, files) of the configured golden set once it matches its pin; None when no
    golden set is configured. Raises GoldenSetError otherwise, saying what to do."""
    root = golden_root(params)
    if root is None:
        return None
    setting = params.evaluate.golden_dir
    if not root.is_dir():
        raise GoldenSetError(
            f"golden set not found at {root} (evaluate.golden_dir={setting!r}): fetch it with "
            f"`dvc pull {setting}.dvc` (its own remote, see docs/data-and-dag.md), or set "
            f"evaluate.golden_dir to \"\" in params.yaml to run without one")
    pinned = params.evaluate.golden_fingerprint.strip().lower()
    found, nfiles = fingerprint(root)
    if not pinned:
        raise GoldenSetError(
            f"golden set {root} has no pinned fingerprint: set evaluate.golden_fingerprint in params.yaml "
            f"to the reviewed value (`python -m pipeline.data.golden fingerprint {setting}` prints {found})")
    if found != pinned:
        raise GoldenSetError(
            f"golden set {root} changed since it was pinned: its content fingerprint is {found} "
            f"({nfiles} files), params.yaml evaluate.golden_fingerprint is {pinned}. Refusing to run: "
            f"the golden set may not be edited silently. Restore it (`dvc checkout {setting}.dvc` or "
            f"`dvc pull`), or, for a change the quality team made on purpose, pin the new value in a "
            f"reviewed commit of params.yaml")
    return root, found, nfiles


def load(params: Params, cache=None) -> GoldenSet | None:
    """The configured golden set, verified against its pin and validated like the training data
    (same decoder, limits, patient ids); None when evaluate.golden_dir is empty.

    Unlike a data version, no file of a pinned golden set may be rejected or found under both
    labels: that would silently shrink the set (a file the decoder no longer accepts, say)."""
    checked = verify(params)
    if checked is None:
        return None
    root, found, nfiles = checked
    try:
        samples = dataset.discover(root)
        usable, report = dataset.validate(samples, params, cache, root)
    except GoldenSetError:
        raise
    except DatasetError as exc:
        raise GoldenSetError(f"golden set {root} is unusable: {exc}") from exc
    if report.rejected or report.conflicts:
        bad = [f"{r['path']}: {r['reason']}" for r in report.rejected[:5]]
        bad += [f"{c['path']}: under both labels" for c in report.conflicts[:5]]
        raise GoldenSetError(f"golden set {root}: {len(report.rejected)} files rejected, "
                             f"{len(report.conflicts)} under both labels: " + "; ".join(bad))
    return GoldenSet(root, found, nfiles, usable, report,
                     patients={s.patient for s in usable if s.patient_known},
                     digests={s.digest for s in usable})


def exclude(samples: list[Sample], golden: GoldenSet | None) -> tuple[list[Sample], list[dict]]:
    """(samples kept, what was dropped): images of a golden patient, and (for validated samples,
    whose content hash is known) byte-identical copies of a golden image under any name."""
    if golden is None:
        return samples, []
    kept, dropped = [], []
    for s in samples:
        if s.patient_known and s.patient in golden.patients:
            dropped.append({"path": str(s.path), "patient": s.patient, "why": "golden patient"})
        elif s.digest and s.digest in golden.digests:
            dropped.append({"path": str(s.path), "patient": s.patient, "why": "golden image"})
        else:
            kept.append(s)
    return kept, dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data.golden", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fingerprint", help="print the content fingerprint of a folder (the value to pin)")
    p.add_argument("folder")
    c = sub.add_parser("check", help="verify and validate the configured golden set against its pin")
    c.add_argument("--params", help="params file (default: $XRAY_PARAMS or params.yaml)")
    args = parser.parse_args(argv)
    if args.cmd == "fingerprint":
        if not Path(args.folder).is_dir():
            print(f"error: {args.folder} is not a folder", file=sys.stderr)
            return 1
        found, nfiles = fingerprint(args.folder)
        print(found)
        print(f"{nfiles} files; pin it as evaluate.golden_fingerprint in params.yaml", file=sys.stderr)
        return 0
    params = config.load_params(args.params or os.environ.get("XRAY_PARAMS") or None)
    try:
        golden = load(params)
    except GoldenSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("no golden set configured (evaluate.golden_dir is empty)" if golden is None else golden.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
