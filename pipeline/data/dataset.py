"""Dataset discovery, validation and patient-grouped splitting.

Layout: `<root>/<split>/<CLASS>/*` or `<root>/<CLASS>/*`; split and class folder names are
matched case-insensitively. Validation decodes every file once through the preprocessing cache,
so a corrupt file is found before training and never costs a second decode.

Patients (the split groups by patient, so that no patient is on both sides): the id comes from,
in order, `<root>/patients.csv` (columns `file,patient`, file relative to root), the Kermany file
name patterns, or a DICOM file's PatientID. An image with none of these has *no* patient id: it
is its own group (keyed by its path, never merged with a same-named file), it is counted in the
report, and validation fails when more than data.max_unknown_patient_fraction of the usable
images are such (default 0): PACS-style names would otherwise put one patient's films on both
sides of the split without anyone knowing.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.settings import config
from pipeline.data.cache import PreprocessCache
from pipeline.settings.params import Params
from pipeline.data import dicom

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test",
                  "local": "local"}  # the site's confirmed evaluation cases (`site export`): never trained on
_PATIENT_PATTERNS = (
    re.compile(r"^(site-[0-9a-f]{16})-", re.IGNORECASE),          # site-<salted patient hash>-<case> (`site export`)
    re.compile(r"^(person\d+)_(?:bacteria|virus)", re.IGNORECASE),  # person123_bacteria_456
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE),        # IM-0115-0001, NORMAL2-IM-...
)


class DatasetError(RuntimeError):
    """The dataset as a whole cannot be used (missing, empty class, too much rejected)."""


@dataclass
class Sample:
    path: Path
    label: int                 # index in config.CLASSES: 0 NORMAL, 1 PNEUMONIA
    patient: str
    split_hint: str | None = None
    patient_known: bool = True  # False: no id from patients.csv, the name or DICOM (own group)
    digest: str = ""           # content hash, filled in by validate()
    row: int = -1              # row in the preprocessing cache, filled in by validate()


@dataclass
class ValidationReport:
    root: str
    checked: int = 0
    rejected: list[dict] = field(default_factory=list)     # {"path", "reason"}
    duplicates: list[dict] = field(default_factory=list)   # {"path", "same_as"}
    conflicts: list[dict] = field(default_factory=list)    # same bytes under both labels: all dropped
    no_patient_id: int = 0                                 # usable images without a patient id
    counts: dict = field(default_factory=dict)             # usable images per class
    golden_excluded: list[dict] = field(default_factory=list)  # dropped: golden patients / images
    golden: dict = field(default_factory=dict)             # the golden set checked (pipeline.data.golden)

    @property
    def rejected_fraction(self) -> float:
        return len(self.rejected) / self.checked if self.checked else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "rejected_fraction": round(self.rejected_fraction, 5)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def summary(self) -> str:
        lines = [f"checked {self.checked} files under {self.root}: usable {self.counts}, "
                 f"rejected {len(self.rejected)}, exact duplicates dropped {len(self.duplicates)}, "
                 f"same file under both labels dropped {len(self.conflicts)}, "
                 f"without a patient id {self.no_patient_id} (each its own patient)"]
        if self.golden:
            patients = len({g["patient"] for g in self.golden_excluded})
            lines.append(f"golden set {self.golden.get('root')} (fingerprint {str(self.golden.get('fingerprint'))[:12]}, "
                         f"{self.golden.get('images')} images) verified; dropped from this data version: "
                         f"{len(self.golden_excluded)} images of {patients} golden patients")
            lines += [f"  golden {g['why']} {g['path']}" for g in self.golden_excluded[:20]]
        lines += [f"  label conflict {c['path']}: {', '.join(c['labels'])}" for c in self.conflicts[:20]]
        lines += [f"  rejected {r['path']}: {r['reason']}" for r in self.rejected[:50]]
        if len(self.rejected) > 50:
            lines.append(f"  ... and {len(self.rejected) - 50} more (see the JSON report)")
        return "\n".join(lines)


@dataclass
class Splits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    external: list[Sample] = field(default_factory=list)   # a provided test/ folder, scored apart
    golden: list[Sample] = field(default_factory=list)     # the fixed golden set (pipeline.data.golden), scored apart
    local: list[Sample] = field(default_factory=list)      # the site's confirmed cases (local/), scored apart

    def items(self):
        parts = (("train", self.train), ("val", self.val), ("test", self.test))
        return (parts + tuple((name, part) for name, part in (("external", self.external), ("golden", self.golden),
                                                              ("local", self.local)) if part))

    def counts(self) -> dict:
        return {name: {c: sum(s.label == i for s in part) for i, c in enumerate(config.CLASSES)}
                for name, part in self.items()}

    def to_dict(self, root: Path) -> dict:
        return {name: [str(s.path.relative_to(root)) if s.path.is_relative_to(root) else str(s.path)
                       for s in part] for name, part in self.items()} | {"counts": self.counts()}


def patient_id(filename: str) -> str | None:
    """Patient of a Kermany file name; None for any other name (see the module docstring)."""
    stem = Path(filename).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1).upper()
    return None


def _patients_csv(root: Path) -> dict[str, str]:
    path = root / "patients.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["file"].strip(): row["patient"].strip() for row in csv.DictReader(f)
                if row.get("file") and row.get("patient", "").strip()}


def _dicom_patient(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(132)
    if not dicom.is_dicom(head + b"\0"):
        return None
    try:
        pid = dicom.read_header(path.read_bytes()).patient_id
    except dicom.DicomError:
        return None  # validation rejects the file anyway
    return f"DICOM:{pid}" if pid else None


def _patient(path: Path, root: Path, listed: dict[str, str]) -> tuple[str, bool]:
    rel = path.relative_to(root).as_posix()
    pid = listed.get(rel) or patient_id(path.name) or _dicom_patient(path)
    return (pid, True) if pid else (f"unknown:{rel}", False)


def _class_index(name: str) -> int | None:
    upper = name.upper()
    return config.CLASSES.index(upper) if upper in config.CLASSES else None


def discover(root: str | Path) -> list[Sample]:
    """Every file under `<root>/[<split>/]<CLASS>/`, with its label, patient and split folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    samples: list[Sample] = []
    listed = _patients_csv(root)
    for top in sorted(p for p in root.iterdir() if p.is_dir()):
        if _class_index(top.name) is not None:
            class_dirs = [(top, None)]
        elif top.name.lower() in _SPLIT_ALIASES:
            class_dirs = [(d, _SPLIT_ALIASES[top.name.lower()]) for d in sorted(top.iterdir())
                          if d.is_dir() and _class_index(d.name) is not None]
        else:
            continue
        for class_dir, split in class_dirs:
            label = _class_index(class_dir.name)
            for path in sorted(class_dir.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    patient, known = _patient(path, root, listed)
                    samples.append(Sample(path, label, patient, split, known))
    if not samples:
        raise DatasetError(
            f"no images found under {root}: expected <root>/[train|val|test/]"
            f"{'|'.join(config.CLASSES)}/<images>"
        )
    return samples


def open_cache(params: Params) -> PreprocessCache:
    d = params.data
    limits = {"max_bytes": int(d.max_file_mb * 2**20), "max_pixels": d.max_pixels,
              "min_side": d.min_side}
    return PreprocessCache(config.cache_dir(), params.preprocess.image_size, limits)


def validate(samples: list[Sample], params: Params, cache: PreprocessCache | None = None,
             root: str | Path = "") -> tuple[list[Sample], ValidationReport]:
    """Decode every file once (through the cache); drop bad files, exact duplicates and files
    found under both labels.

    Returns the usable samples (with digest and cache row set) and the report. Raises DatasetError
    when a class has fewer than data.min_images_per_class usable images, too large a fraction was
    rejected, or too many images have no patient id.
    """
    cache = cache or open_cache(params)
    digests, index = cache.lookup(s.path for s in samples)
    report = ValidationReport(root=str(root), checked=len(samples))
    labels_of: dict[str, set[int]] = {}
    for sample, digest in zip(samples, digests):
        labels_of.setdefault(digest, set()).add(sample.label)
    usable, first_seen = [], {}
    for sample, digest in zip(samples, digests):
        entry = index[digest]
        if isinstance(entry, str):
            report.rejected.append({"path": str(sample.path), "reason": entry.removeprefix("error: ")})
            continue
        if len(labels_of[digest]) > 1:  # the same film called NORMAL and PNEUMONIA: no true label
            report.conflicts.append({"path": str(sample.path), "labels": sorted(
                config.CLASSES[i] for i in labels_of[digest])})
            continue
        if digest in first_seen:  # byte-identical copy: keeping both could leak across splits
            report.duplicates.append({"path": str(sample.path), "same_as": str(first_seen[digest])})
            continue
        first_seen[digest] = sample.path
        sample.digest, sample.row = digest, entry
        usable.append(sample)
    report.counts = {c: sum(s.label == i for s in usable) for i, c in enumerate(config.CLASSES)}
    report.no_patient_id = sum(not s.patient_known for s in usable)
    d = params.data
    minimum = d.min_images_per_class
    few = [f"{c} ({n})" for c, n in report.counts.items() if n < minimum]
    if few:
        raise DatasetError(f"too few usable images of class {', '.join(few)} under {root or 'dataset'}: "
                           f"data.min_images_per_class is {minimum} ({len(report.rejected)} files rejected, "
                           f"{len(report.conflicts)} under both labels)")
    limit = d.max_rejected_fraction
    if report.rejected_fraction > limit:
        raise DatasetError(f"{len(report.rejected)} of {report.checked} files rejected "
                           f"({report.rejected_fraction:.1%} > data.max_rejected_fraction {limit:.1%})"
                           f"\n{report.summary()}")
    unknown = report.no_patient_id / max(len(usable), 1)
    allowed = d.max_unknown_patient_fraction
    if unknown > allowed:
        raise DatasetError(
            f"{report.no_patient_id} of {len(usable)} usable images have no patient id ({unknown:.1%} > "
            f"data.max_unknown_patient_fraction {allowed:.1%}): the split could put one patient on both "
            f"sides. Add <root>/patients.csv (file,patient), use Kermany names or DICOM PatientID, "
            f"or raise the limit knowingly.")
    return usable, report


def _bucket(patient: str, seed: int) -> float:
    """Stable pseudo-random number in [0, 1) for a patient: the same patient always lands on the
    same side of a split, whatever images are added later (the champion's training patients never
    drift into a future held-out set)."""
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(samples: list[Sample], params: Params) -> Splits:
    """Patient-grouped, class-stratified, seeded split into train / val / held-out test.

    A provided val/ folder is used as is when it holds at least data.min_provided_split images;
    a smaller one (the 16-image Kaggle val/) goes back into the pool. A provided test/ folder of that
    size is the *external* set (e.g. a frozen set of another period that data engineers version):
    A local/ folder holds the site's confirmed evaluation cases (`python -m pipeline site export`):
    always kept apart, scored at each model's own site operating point (pipeline.evaluation.quality).
    reported apart, never mixed into the held-out patients, which are always carved from the pool
    by patient, so held-out figures stay comparable from one data version to the next. Pool patients are
    assigned by a seeded hash of their id: each side gets its fraction of every class's patients
    in expectation (binomial spread, recorded in split.json), and the assignment never changes as
    data is added, so a model's training patients cannot reach a later held-out set.
    """
    d = params.data
    provided = {name: [s for s in samples if s.split_hint == name] for name in ("val", "test")}
    honoured = {name for name, part in provided.items() if len(part) >= d.min_provided_split}
    fixed_patients = {s.patient: name for name in honoured for s in provided[name]}
    fractions = {"test": d.test_fraction, "val": 0.0 if "val" in honoured else d.val_fraction}
    out = {"train": [], "val": [], "test": [], "external": [], "local": []}
    pool = [s for s in samples if s.split_hint not in honoured and s.split_hint != "local"]
    for s in pool:
        if s.patient not in fixed_patients:
            b = _bucket(s.patient, d.seed)
            fixed_patients[s.patient] = ("test" if b < fractions["test"] else
                                         "val" if b < fractions["test"] + fractions["val"] else "train")
    for s in samples:
        if s.split_hint == "local":
            out["local"].append(s)
        elif s.split_hint in honoured:
            out["external" if s.split_hint == "test" else s.split_hint].append(s)
        else:
            out[fixed_patients[s.patient]].append(s)
    splits = Splits(out["train"], out["val"], out["test"], out["external"], local=out["local"])
    for name, part in splits.items():
        if not part:
            raise DatasetError(f"the {name} split is empty: the dataset is too small to split")
    return splits


def dataset_fingerprint(samples: list[Sample]) -> str:
    """Hash of (class, content) of every usable image: the data version when DVC gives none."""
    h = hashlib.sha256()
    for digest, label in sorted((s.digest, s.label) for s in samples):
        h.update(f"{label}:{digest}\n".encode())
    return h.hexdigest()[:16]


def subset(samples: list[Sample], per_class: int, seed: int) -> list[Sample]:
    """Seeded per-class cap, keeping whole patients (quick mode and tests)."""
    if per_class <= 0:
        return samples
    keep: list[Sample] = []
    for label in range(len(config.CLASSES)):
        by_patient: dict[str, list[Sample]] = {}
        for s in samples:
            if s.label == label:
                by_patient.setdefault(s.patient, []).append(s)
        taken = 0
        for patient in sorted(by_patient, key=lambda p: _bucket(p, seed + 1)):
            if taken >= per_class:
                break
            keep.extend(by_patient[patient])
            taken += len(by_patient[patient])
    return keep


def link_subset(source: str | Path, dest: str | Path, per_class: int, seed: int = 0,
                split: str = "train") -> list[Path]:
    """Symlink a seeded, patient-preserving subset of `source` into `dest/<split>/<CLASS>/`.

    Quick mode, tests and benchmarks use it to get a small real dataset without copying images.
    Returns the links created now (existing ones are kept).
    """
    created = []
    for sample in subset(discover(source), per_class, seed):
        link = Path(dest) / split / sample.path.parent.name / sample.path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(sample.path.resolve())
            created.append(link)
    return created


def arrays(samples: list[Sample], cache: PreprocessCache) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, S, S] and labels [N] of validated samples."""
    return cache.arrays([s.row for s in samples]), np.array([s.label for s in samples], np.int64)
