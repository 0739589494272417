"""Preprocessing cache: every image is decoded and resized once, then reused by every epoch and run.

Layout: `<cache_dir>/<key>/images.u8` holds uint8 [S, S] rows back to back (a memory-mapped
array), and `index.json` maps a file's content hash (BLAKE2b of its bytes) to its row or, for a
file that failed validation, to the reason. `<key>` names the preprocessing parameters and the
code version, so changing a parameter starts a separate cache and changing an image's bytes only
adds a row for the new content: exactly the affected entries are recomputed.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.data import preprocess

CACHE_VERSION = 3  # bump when preprocess.py or shift.py change what they produce (2: one intensity rule, dicom.py; 3: PNG sBIT)


def content_hash(path: str | Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(image_size: int, limits: dict) -> str:
    spec = json.dumps({"v": CACHE_VERSION, "size": image_size, **limits}, sort_keys=True)
    return f"s{image_size}-" + hashlib.sha1(spec.encode()).hexdigest()[:10]


class PreprocessCache:
    def __init__(self, root: str | Path, image_size: int, limits: dict | None = None):
        self.image_size = image_size
        self.limits = dict(limits or {})
        self.dir = Path(root) / cache_key(image_size, self.limits)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_file = self.dir / "images.u8"
        self.index_file = self.dir / "index.json"
        self.decoded = 0  # images decoded by this instance (tests and logs read it)

    @property
    def row_bytes(self) -> int:
        return self.image_size * self.image_size

    def _read_index(self) -> dict:
        if not self.index_file.exists():
            return {}
        return json.loads(self.index_file.read_text())

    @contextmanager
    def _locked(self):
        # One writer at a time: the DAG and a manual CLI run may share the cache.
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def lookup(self, paths: Iterable[str | Path]) -> tuple[list[str], dict]:
        """Content hashes of `paths`, and {hash: row int | "error: reason"} for all of them.

        Missing entries are decoded now and appended under the lock.
        """
        paths = [Path(p) for p in paths]
        digests = [content_hash(p) for p in paths]
        index = self._read_index()
        missing = {d: p for d, p in zip(digests, paths) if d not in index}
        if missing:
            with self._locked():
                index = self._read_index()  # another process may have added them meanwhile
                todo = {d: p for d, p in missing.items() if d not in index}
                if todo:
                    index.update(self._append(todo, next_row=self._rows()))
                    tmp = self.index_file.with_suffix(".tmp")
                    tmp.write_text(json.dumps(index))
                    os.replace(tmp, self.index_file)
        return digests, index

    def _rows(self) -> int:
        return self.data_file.stat().st_size // self.row_bytes if self.data_file.exists() else 0

    def _decode(self, path: Path) -> np.ndarray | preprocess.InvalidImage:
        try:
            return preprocess.load_array(path, self.image_size, **self.limits)
        except preprocess.InvalidImage as exc:
            return exc

    def _append(self, todo: dict[str, Path], next_row: int) -> dict:
        entries = {}
        # Pillow releases the GIL while it decodes and resizes: one thread per core, rows in order.
        with open(self.data_file, "ab") as out, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            out.truncate(next_row * self.row_bytes)  # drop a partial row left by a crash
            for digest, arr in zip(todo, pool.map(self._decode, todo.values())):
                if isinstance(arr, preprocess.InvalidImage):
                    entries[digest] = "error: " + arr.reason
                    continue
                out.write(arr.tobytes())
                entries[digest] = next_row
                next_row += 1
                self.decoded += 1
        return entries

    def arrays(self, rows: list[int]) -> np.ndarray:
        """uint8 [N, S, S] copy of the given rows (the whole split fits in memory as uint8)."""
        if not rows:
            return np.zeros((0, self.image_size, self.image_size), np.uint8)
        data = np.memmap(self.data_file, dtype=np.uint8, mode="r").reshape(
            -1, self.image_size, self.image_size
        )
        return np.asarray(data[np.asarray(rows)])
