"""Discovery, validation, patient-grouped splitting and the preprocessing cache."""
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.settings import config
from pipeline.data import dataset
from pipeline.data.cache import PreprocessCache
from pipeline.data.dataset import DatasetError


def png(value: int, size=(96, 96)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, np.uint8) + np.arange(size[0], dtype=np.uint8)[None, :], "L").save(buf, "PNG")
    return buf.getvalue()


def noisy_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def write(path, payload: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


@pytest.fixture
def params(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_CACHE_DIR", str(tmp_path / "cache"))
    return config.apply_overrides(config.load_params(), {"preprocess.image_size": 32, "data.min_side": 32,
                                                         "data.min_images_per_class": 1})


def test_patient_ids_from_kermany_names():
    assert dataset.patient_id("person1000_bacteria_2931.jpeg") == "PERSON1000"
    assert dataset.patient_id("person1000_virus_1681.jpeg") == "PERSON1000"
    assert dataset.patient_id("IM-0115-0001.jpeg") == "IM-0115"
    assert dataset.patient_id("NORMAL2-IM-0115-0002.jpeg") == "NORMAL2-IM-0115"
    assert dataset.patient_id("scan_42.png") is None  # no pattern: no id (never the file name)


def test_discover_case_insensitive_with_and_without_splits(tmp_path):
    write(tmp_path / "a" / "Train" / "normal" / "IM-0001-0001.png", png(1))
    write(tmp_path / "a" / "train" / "Pneumonia" / "person1_virus_1.png", png(2))
    write(tmp_path / "a" / "VAL" / "NORMAL" / "IM-0002-0001.png", png(3))
    write(tmp_path / "a" / "train" / "NORMAL" / ".DS_Store", b"junk")
    write(tmp_path / "a" / "notes" / "NORMAL" / "x.png", png(4))  # not a split: ignored
    found = dataset.discover(tmp_path / "a")
    assert sorted((s.path.name, s.label, s.split_hint) for s in found) == [
        ("IM-0001-0001.png", 0, "train"), ("IM-0002-0001.png", 0, "val"), ("person1_virus_1.png", 1, "train")]
    write(tmp_path / "b" / "NORMAL" / "n.png", png(5))
    write(tmp_path / "b" / "pneumonia" / "p.png", png(6))
    assert {(s.label, s.split_hint) for s in dataset.discover(tmp_path / "b")} == {(0, None), (1, None)}


def test_missing_and_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        dataset.discover(tmp_path / "nope")
    (tmp_path / "empty" / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        dataset.discover(tmp_path / "empty")


def test_validation_reports_and_excludes_every_bad_file(tmp_path, params):
    root = tmp_path / "ds"
    good = [write(root / "NORMAL" / f"IM-000{i}-0001.png", png(i)) for i in range(4)]
    good += [write(root / "PNEUMONIA" / f"person{i}_virus_{i}.png", png(50 + i)) for i in range(4)]
    bad = {
        write(root / "NORMAL" / "empty.png", b""): "empty file",
        write(root / "NORMAL" / "notes.png", b"hello, not a picture" * 20): "not an image",
        write(root / "PNEUMONIA" / "trunc.png", noisy_png()[:3000]): "corrupt or truncated",
        write(root / "PNEUMONIA" / "tiny.png", png(7, (10, 10))): "too small",
    }
    write(root / "PNEUMONIA" / "person3_virus_3_copy.png", good[-1].read_bytes())  # exact duplicate
    params = config.apply_overrides(params, {"data.max_rejected_fraction": 0.5})
    usable, report = dataset.validate(dataset.discover(root), params, root=root)
    # the duplicate pair keeps exactly one member: usable content is exactly the good files
    assert sorted(s.path.read_bytes() for s in usable) == sorted(p.read_bytes() for p in good)
    reasons = {r["path"]: r["reason"] for r in report.rejected}
    assert set(reasons) == {str(p) for p in bad}
    for path, expected in bad.items():
        assert expected in reasons[str(path)]
    assert len(report.duplicates) == 1
    assert {report.duplicates[0]["path"], report.duplicates[0]["same_as"]} == {
        str(root / "PNEUMONIA" / "person3_virus_3_copy.png"), str(good[-1])}
    assert report.counts == {"NORMAL": 4, "PNEUMONIA": 4} and report.checked == 13
    report.save(tmp_path / "report.json")
    assert "too small" in (tmp_path / "report.json").read_text()


def test_too_many_rejected_and_empty_class_fail_clearly(tmp_path, params):
    root = tmp_path / "ds"
    write(root / "NORMAL" / "IM-0001-0001.png", png(1))
    write(root / "PNEUMONIA" / "person1_virus_1.png", b"garbage" * 50)
    with pytest.raises(DatasetError, match=r"too few usable images of class PNEUMONIA \(0\)"):
        dataset.validate(dataset.discover(root), params, root=root)
    write(root / "PNEUMONIA" / "person2_virus_2.png", png(3))
    with pytest.raises(DatasetError, match="max_rejected_fraction"):
        dataset.validate(dataset.discover(root), params, root=root)


def test_grouped_split_never_puts_a_patient_on_two_sides(shared_datasets):
    params = config.load_params()
    samples = dataset.discover(shared_datasets / "chest_xray")
    splits = dataset.split(samples, params)
    sides = {}
    for name, part in splits.items():
        for s in part:
            assert sides.setdefault(s.patient, name) == name, f"{s.patient} leaks into {name}"
    # the 16-image Kaggle val/ is too small to be honoured: its images went back into the pool
    assert not any(s.split_hint == "val" for s in splits.val) or len(splits.val) >= 200
    counts = splits.counts()
    total = sum(sum(c.values()) for c in counts.values())
    assert total == len(samples)
    for name, frac in (("test", 0.15), ("val", 0.15)):
        for cls in config.CLASSES:
            share = counts[name][cls] / sum(counts[n][cls] for n in counts)
            assert abs(share - frac) < 0.04, (name, cls, share)  # stratified in proportion
    # seeded and stable: the same patients land on the same side when data is added or removed
    again = dataset.split(samples[::2], params)
    assert {s.patient for s in again.test} <= {s.patient for s in splits.test}
    other_seed = dataset.split(samples, config.apply_overrides(params, {"data.seed": 7}))
    assert {s.path for s in other_seed.test} != {s.path for s in splits.test}


def test_large_provided_val_folder_is_honoured(tmp_path, params):
    root = tmp_path / "ds"
    for i in range(30):
        write(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.png", png(i))
        write(root / "train" / "PNEUMONIA" / f"person{i}_virus_1.png", png(100 + i))
    for i in range(3):
        write(root / "val" / "NORMAL" / f"IM-{900 + i}-0001.png", png(200 + i))
        write(root / "val" / "PNEUMONIA" / f"person{900 + i}_virus_1.png", png(210 + i))
    samples = dataset.discover(root)
    small = dataset.split(samples, config.apply_overrides(params, {"data.min_provided_split": 10}))
    assert not all(s.split_hint == "val" for s in small.val)  # 6 < 10: pooled and re-split
    big = dataset.split(samples, config.apply_overrides(params, {"data.min_provided_split": 6}))
    assert sorted(s.path.name for s in big.val) == sorted(s.path.name for s in samples if s.split_hint == "val")


def test_provided_test_folder_is_the_external_set_and_held_out_is_still_carved(tmp_path, params):
    root = tmp_path / "ds"
    for i in range(30):
        write(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.png", png(i))
        write(root / "train" / "PNEUMONIA" / f"person{i}_virus_1.png", png(100 + i))
    for i in range(4):
        write(root / "test" / "NORMAL" / f"IM-{900 + i}-0001.png", png(200 + i))
        write(root / "test" / "PNEUMONIA" / f"person{900 + i}_virus_1.png", png(210 + i))
    samples = dataset.discover(root)
    splits = dataset.split(samples, config.apply_overrides(params, {"data.min_provided_split": 8}))
    provided = sorted(s.path.name for s in samples if s.split_hint == "test")
    assert sorted(s.path.name for s in splits.external) == provided
    assert splits.test and not any(s.split_hint == "test" for s in splits.test)   # carved from train/ patients
    assert "external" in splits.counts() and sum(splits.counts()["external"].values()) == 8
    # too small to be an external set: pooled like any other image
    pooled = dataset.split(samples, config.apply_overrides(params, {"data.min_provided_split": 9}))
    assert not pooled.external and "external" not in pooled.counts()


def test_cache_reuses_and_invalidates_exactly_the_changed_entries(tmp_path):
    root = tmp_path / "imgs"
    paths = [write(root / f"{i}.png", png(10 * i)) for i in range(5)]
    cache = PreprocessCache(tmp_path / "c", 32)
    digests, index = cache.lookup(paths)
    assert cache.decoded == 5
    first = cache.arrays([index[d] for d in digests])
    assert first.shape == (5, 32, 32) and first.dtype == np.uint8

    again = PreprocessCache(tmp_path / "c", 32)  # a later run: nothing decoded
    digests2, index2 = again.lookup(paths)
    assert again.decoded == 0 and np.array_equal(again.arrays([index2[d] for d in digests2]), first)

    paths[2].write_bytes(png(200))  # one image changes: exactly one decode
    changed = PreprocessCache(tmp_path / "c", 32)
    digests3, index3 = changed.lookup(paths)
    assert changed.decoded == 1
    arrays3 = changed.arrays([index3[d] for d in digests3])
    assert np.array_equal(arrays3[[0, 1, 3, 4]], first[[0, 1, 3, 4]])
    assert not np.array_equal(arrays3[2], first[2])

    other = PreprocessCache(tmp_path / "c", 48)  # a parameter changes: its own entries
    other.lookup(paths)
    assert other.decoded == 5 and other.dir != cache.dir


def test_cache_rows_belong_to_their_own_files_when_decoded_in_parallel(tmp_path):
    """The cache decodes on several threads: every row must still be its own file's image, and a
    bad file's reason must stay with that file."""
    from pipeline.data import preprocess

    paths = [write(tmp_path / f"{i}.png", png(7 * i, size=(96 + 8 * i, 80))) for i in range(12)]
    paths.insert(5, write(tmp_path / "broken.png", b"\x89PNG not really"))
    cache = PreprocessCache(tmp_path / "c", 32)
    digests, index = cache.lookup(paths)
    assert cache.decoded == 12 and index[digests[5]].startswith("error: ")
    for path, digest in zip(paths, digests):
        if path.name != "broken.png":
            assert np.array_equal(cache.arrays([index[digest]])[0], preprocess.load_array(path, 32)), path.name


def test_cache_survives_a_partial_row_from_a_crash(tmp_path):
    paths = [write(tmp_path / f"{i}.png", png(i)) for i in range(2)]
    cache = PreprocessCache(tmp_path / "c", 32)
    cache.lookup(paths[:1])
    with open(cache.data_file, "ab") as f:
        f.write(b"\x01" * 100)  # a write interrupted mid-row
    digests, index = cache.lookup(paths)
    assert index[digests[1]] == 1
    assert cache.arrays([1]).shape == (1, 32, 32)


def test_a_class_under_the_minimum_fails(tmp_path, params):
    root = tmp_path / "ds"
    for i in range(5):
        write(root / "NORMAL" / f"IM-{i:04d}-0001.png", png(i))
    for i in range(2):
        write(root / "PNEUMONIA" / f"person{i}_virus_1.png", png(100 + i))
    samples = dataset.discover(root)
    with pytest.raises(DatasetError, match=r"too few usable images of class PNEUMONIA \(2\).*is 3"):
        dataset.validate(samples, config.apply_overrides(params, {"data.min_images_per_class": 3}), root=root)
    usable, _ = dataset.validate(samples, config.apply_overrides(params, {"data.min_images_per_class": 2}), root=root)
    assert len(usable) == 7


def test_same_file_under_both_labels_is_reported_and_dropped(tmp_path, params):
    root = tmp_path / "ds"
    for i in range(3):
        write(root / "NORMAL" / f"IM-{i:04d}-0001.png", png(i))
        write(root / "PNEUMONIA" / f"person{i}_virus_1.png", png(100 + i))
    both = png(200)
    write(root / "NORMAL" / "IM-0900-0001.png", both)
    write(root / "PNEUMONIA" / "person900_bacteria_1.png", both)
    usable, report = dataset.validate(dataset.discover(root), params, root=root)
    assert {c["path"] for c in report.conflicts} == {str(root / "NORMAL" / "IM-0900-0001.png"),
                                                    str(root / "PNEUMONIA" / "person900_bacteria_1.png")}
    assert all(c["labels"] == ["NORMAL", "PNEUMONIA"] for c in report.conflicts)
    assert both not in {s.path.read_bytes() for s in usable} and len(usable) == 6
    assert "same file under both labels dropped 2" in report.summary()


def test_images_without_patient_id_are_counted_and_fail_by_default(tmp_path, params):
    root = tmp_path / "ds"
    for i in range(3):
        write(root / "NORMAL" / f"IM-{i:04d}-0001.png", png(i))
        write(root / "PNEUMONIA" / f"person{i}_virus_1.png", png(100 + i))
    write(root / "NORMAL" / "1.2.840.113619.2.55.png", png(50))   # a PACS-style name
    write(root / "PNEUMONIA" / "1.2.840.113619.2.55.png", png(150))  # same name, other file
    samples = dataset.discover(root)
    unknown = [s for s in samples if not s.patient_known]
    # never the file name: two same-named files are two separate groups
    assert len(unknown) == 2 and len({s.patient for s in unknown}) == 2
    with pytest.raises(DatasetError, match="2 of 8 usable images have no patient id"):
        dataset.validate(samples, params, root=root)
    _, report = dataset.validate(samples, config.apply_overrides(params, {"data.max_unknown_patient_fraction": 0.5}),
                              root=root)
    assert report.no_patient_id == 2 and "without a patient id 2" in report.summary()
    # patients.csv names them: both films are one patient, so the split keeps them together
    (root / "patients.csv").write_text("file,patient\nNORMAL/1.2.840.113619.2.55.png,P77\n"
                                       "PNEUMONIA/1.2.840.113619.2.55.png,P77\n")
    listed = dataset.discover(root)
    assert all(s.patient_known for s in listed)
    assert {s.patient for s in listed if s.path.name.startswith("1.2.")} == {"P77"}
    _, report = dataset.validate(listed, params, root=root)
    assert report.no_patient_id == 0


def test_dicom_patient_id_groups_films(tmp_path, params):
    from tests.pipeline import dicom_samples

    root = tmp_path / "ds"
    for i in range(3):
        write(root / "NORMAL" / f"IM-{i:04d}-0001.png", png(i))
        write(root / "PNEUMONIA" / f"person{i}_virus_1.png", png(100 + i))
    pixels = (dicom_samples.picture(96) * 4000).astype(np.uint16)
    write(root / "PNEUMONIA" / "img_a.dcm", dicom_samples.encode("explicit", pixels))
    write(root / "PNEUMONIA" / "img_b.dcm", dicom_samples.encode("rle", pixels[::-1].copy()))
    found = {s.path.name: s for s in dataset.discover(root)}
    assert found["img_a.dcm"].patient == found["img_b.dcm"].patient == "DICOM:P-0001"
    usable, report = dataset.validate(list(found.values()), params, root=root)
    assert report.no_patient_id == 0 and len(usable) == 8
