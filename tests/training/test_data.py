"""Dataset layouts, splits and unreadable files, on small generated photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import (
    DatasetError,
    ImageDataset,
    check_images,
    find_dataset,
    split_samples,
)
from training.presets import EvalPreset, TrainPreset, preprocess


def names(samples) -> set[str]:
    return {Path(p).name for p, _ in samples}


def test_imagefolder_with_val(synthetic_data):
    splits = find_dataset(synthetic_data)
    assert splits.layout == "imagefolder" and splits.val_source == "val/ folder"
    assert splits.labels == ["cat", "dog"]
    assert splits.counts("train") == {"cat": 24, "dog": 24}
    assert splits.counts("val") == {"cat": 12, "dog": 12}
    # Labels follow the folder each file sits in.
    assert all(Path(p).parent.name == splits.labels[y] for p, y in splits.train + splits.val)


def test_imagefolder_without_val_is_a_seeded_stratified_split(tmp_path, helpers):
    helpers.write_imagefolder(tmp_path / "train", 10)
    a = find_dataset(tmp_path, val_fraction=0.2, seed=1)
    b = find_dataset(tmp_path, val_fraction=0.2, seed=1)
    c = find_dataset(tmp_path, val_fraction=0.2, seed=2)
    assert a.counts("val") == {"cat": 2, "dog": 2} and a.counts("train") == {"cat": 8, "dog": 8}
    assert a.val == b.val and a.train == b.train, "same seed, same split"
    assert names(a.val) != names(c.val), "another seed, another split"
    assert not names(a.train) & names(a.val)
    assert "seeded" in a.val_source


def test_split_does_not_depend_on_listing_order():
    samples = [(f"x/{i}.jpg", i % 2) for i in range(20)]
    assert split_samples(samples, 0.3, 0) == split_samples(list(reversed(samples)), 0.3, 0)


def test_flat_class_folders(flat_root):
    splits = find_dataset(flat_root)
    assert splits.layout == "class-folders"
    assert splits.labels == ["cat", "dog"]
    assert len(splits.train) + len(splits.val) == 20 and splits.counts("val") == {"cat": 2, "dog": 2}


def test_petimages_labels_and_corrupt_files_are_skipped_and_counted(petimages_root):
    splits = find_dataset(petimages_root)  # the folder that holds PetImages/
    assert splits.layout == "petimages" and splits.labels == ["cat", "dog"]
    everything = splits.train + splits.val
    assert "Thumbs.db" not in names(everything)  # not an image extension: never listed
    assert len(everything) == 15  # 12 photos + 3 broken .jpg files
    good, bad = check_images(everything)
    assert len(good) == 12
    assert {Path(p).name for p, _ in bad} == {"666.jpg", "11702.jpg", "99.jpg"}
    reasons = dict((Path(p).name, why) for p, why in bad)
    assert "empty" in reasons["666.jpg"] and "not an image" in reasons["99.jpg"]
    cat, dog = splits.labels.index("cat"), splits.labels.index("dog")
    assert all((y == cat) == ("/Cat/" in p.replace("\\", "/")) for p, y in good)
    assert {y for _, y in good} == {cat, dog}


def test_oxford_labels_from_file_names(oxford_root):
    splits = find_dataset(oxford_root, seed=0)
    assert splits.layout == "oxford-iiit-pet"
    assert splits.labels == ["Abyssinian", "American Bulldog", "Bengal"]  # torchvision's spelling
    everything = splits.train + splits.val
    assert len(everything) == 15  # the .mat file is ignored
    for path, y in everything:
        assert Path(path).stem.rsplit("_", 1)[0].replace("_", " ").title() == splits.labels[y]
    # torchvision's download root (the folder that holds oxford-iiit-pet/) works too.
    assert find_dataset(oxford_root.parent, seed=0).train == splits.train


def test_oxford_official_split_when_annotations_exist(oxford_root):
    ann = oxford_root / "annotations"
    ann.mkdir()
    (ann / "trainval.txt").write_text("Abyssinian_1 1 1 1\nBengal_1 6 2 2\namerican_bulldog_1 2 2 1\n"
                                      "Abyssinian_2 1 1 1\nBengal_2 6 2 2\namerican_bulldog_2 2 2 1\n")
    (ann / "test.txt").write_text("Abyssinian_3 1 1 1\nBengal_3 6 2 2\namerican_bulldog_3 2 2 1\n")
    splits = find_dataset(oxford_root)
    assert "official" in splits.val_source
    assert names(splits.val) == {"Abyssinian_3.jpg", "Bengal_3.jpg", "american_bulldog_3.jpg"}
    assert len(splits.train) == 6


def test_datasets_decode_through_the_one_preprocessing(synthetic_data):
    splits = find_dataset(synthetic_data)
    x, y = ImageDataset(splits.val, EvalPreset())[0]
    path = splits.val[0][0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == splits.val[0][1]
    np.testing.assert_array_equal(x.numpy(), preprocess(Image.open(path).convert("RGB")))
    torch.manual_seed(0)
    xt, _ = ImageDataset(splits.train, TrainPreset())[0]
    assert xt.shape == (3, 224, 224) and 0.0 <= xt.min() and xt.max() <= 1.0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: None, "not found"),
        (lambda root: root.mkdir(), "no images found"),
        (lambda root: (root / "train" / "cat").mkdir(parents=True), "holds no images"),
        (lambda root: (root / "notes.txt").parent.mkdir() or (root / "notes.txt").write_text("hi"), "no images found"),
    ],
    ids=["missing", "empty", "empty-class-folder", "no-images"],
)
def test_unusable_folders_say_why(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DatasetError, match=message):
        find_dataset(root)


def test_one_class_only_is_refused(tmp_path, helpers):
    helpers.write_imagefolder(tmp_path / "train", 3, labels=["cat"])
    with pytest.raises(DatasetError, match="at least 2 classes.*'cat'"):
        find_dataset(tmp_path)


def test_val_class_unknown_to_train_is_refused(synthetic_data, tmp_path, helpers):
    helpers.write_imagefolder(tmp_path / "train", 3)
    helpers.write_imagefolder(tmp_path / "val", 2, labels=["cat", "hamster"])
    with pytest.raises(DatasetError, match="hamster"):
        find_dataset(tmp_path)
