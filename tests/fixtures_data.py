"""Tiny on-disk datasets in the EXACT original layouts, for the data tests (and anyone else's).

Every image is a small solid-colour JPEG or PNG whose colour encodes the image's global index
(``color_of(i)``), so a test can check that ``dataset[j]`` really loaded the file it claims.
Each ``make_*`` function writes into ``tmp`` (a folder, e.g. pytest's ``tmp_path``) and returns the
root to pass to ``build_dataset`` together with the ground truth it wrote.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR100_HIERARCHY = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}


def check_contract(ds, expected_raw):
    """Assert the dataset contract: ``labels`` (int64) == rank of the raw id among the sorted distinct ids."""
    order = sorted(set(expected_raw))
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [order.index(r) for r in expected_raw]
    assert ds.num_classes == len(order)
    assert set(ds.labels.tolist()) == set(range(ds.num_classes))


def color_of(index: int) -> tuple[int, int, int]:
    """The solid colour of fixture image ``index`` (distinct for index < 4096, 15 apart per channel)."""
    return (8 + 15 * (index % 16), 8 + 15 * ((index // 16) % 16), 8 + 15 * ((index // 256) % 16))


def index_of(image) -> int:
    """Invert ``color_of`` from a loaded PIL image or (3, H, W) / (H, W, 3) array (robust to JPEG noise)."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    r, g, b = (int(round((arr[..., c].mean() - 8) / 15)) for c in range(3))
    return r + 16 * g + 256 * b


def write_image(path: str | os.PathLike, index: int, size: int = 12) -> None:
    """Write a solid ``color_of(index)`` image; format from the extension (jpg or png)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), color_of(index))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95)
    else:
        image.save(path)


def write_corrupt(path: str | os.PathLike) -> None:
    """Overwrite ``path`` with bytes that are not an image."""
    Path(path).write_bytes(b"this is not an image\x00\x01\x02")


def make_cub(tmp, num_classes: int = 4, per_class: int = 3) -> dict:
    """CUB_200_2011 layout with class ids 1..num_classes; images.txt order shuffled by class.

    Returns dict(root, base, paths {image_id: abs path}, labels {image_id: class id}).
    """
    base = Path(tmp) / "CUB_200_2011"
    (base / "images").mkdir(parents=True)
    classes, images, labels, paths = [], [], [], {}
    image_id = 0
    for c in range(1, num_classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {folder}")
        for j in range(per_class):
            image_id += 1
            rel = f"{folder}/Bird_{c}_{j:04d}_{1000 + image_id}.jpg"
            write_image(base / "images" / rel, image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            paths[image_id] = str(base / "images" / rel)
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text("\n".join(classes) + "\n")
    return {"root": str(tmp), "base": str(base), "paths": paths,
            "labels": {i: int(l.split()[1]) for i, l in zip(paths, labels)}}


def make_cars(tmp, num_classes: int = 4, per_class: int = 3) -> dict:
    """Cars196 layout: car_ims/NNNNNN.jpg and cars_annos.mat in the original struct layout.

    Images are listed in interleaved class order (as the real file mixes classes).
    Returns dict(root, classes (1-based class per annotation), paths).
    """
    import scipy.io

    root = Path(tmp)
    (root / "car_ims").mkdir(parents=True)
    n = num_classes * per_class
    classes = [(i % num_classes) + 1 for i in range(n)]
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    ann = np.zeros((1, n), dtype=[(f, "O") for f in fields])
    paths = []
    for i, c in enumerate(classes):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_image(root / rel, i)
        paths.append(str(root / rel))
        ann[0, i] = (np.array([rel]), np.array([[3]], dtype=np.uint8), np.array([[4]], dtype=np.uint8),
                     np.array([[10]], dtype=np.uint16), np.array([[11]], dtype=np.uint16),
                     np.array([[c]], dtype=np.uint8), np.array([[i % 2]], dtype=np.uint8))
    class_names = np.empty((1, num_classes), dtype=object)
    for c in range(num_classes):
        class_names[0, c] = np.array([f"Maker Model {c + 1} 2012"])
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": ann, "class_names": class_names})
    return {"root": str(root), "classes": classes, "paths": paths}


def make_sop(tmp, train_classes: int = 3, test_classes: int = 3, per_class: int = 2) -> dict:
    """Stanford_Online_Products layout with Ebay_train.txt / Ebay_test.txt (class ids 1-based, SOP style).

    Returns dict(root, base, train [(path, class, super)], test [...]).
    """
    base = Path(tmp) / "Stanford_Online_Products"
    supers = ["bicycle", "chair"]
    out = {"root": str(tmp), "base": str(base)}
    image_id, idx = 0, 0
    class_id = 0
    for split, count in (("train", train_classes), ("test", test_classes)):
        rows, truth = ["image_id class_id super_class_id path"], []
        for _ in range(count):
            class_id += 1
            s = class_id % 2
            for j in range(per_class):
                image_id += 1
                rel = f"{supers[s]}_final/{100000 + class_id}_{j}.JPG"
                write_image(base / rel, idx)
                idx += 1
                rows.append(f"{image_id} {class_id} {s + 1} {rel}")
                truth.append((str(base / rel), class_id, s + 1))
        (base / f"Ebay_{split}.txt").write_text("\n".join(rows) + "\n")
        out[split] = truth
    return out


def make_inshop(tmp, train_items: int = 3, test_items: int = 3) -> dict:
    """In-shop layout: img/... and Eval/list_eval_partition.txt (2 header lines).

    Each test item has 1 query and 2 gallery images. Returns dict(root, rows [(rel, item, status)]).
    """
    root = Path(tmp)
    rows = []
    idx = 0
    for k in range(train_items + test_items):
        item = f"id_{k * 7 + 1:08d}"
        statuses = ["train", "train"] if k < train_items else ["query", "gallery", "gallery"]
        for j, status in enumerate(statuses):
            rel = f"img/WOMEN/Dresses/{item}/{j + 1:02d}_{j + 1}_front.jpg"
            write_image(root / rel, idx)
            idx += 1
            rows.append((rel, item, status))
    (root / "Eval").mkdir(parents=True)
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    lines += [f"{rel}{' ' * 20}{item}{' ' * 7}{status}" for rel, item, status in rows]
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return {"root": str(root), "rows": rows}


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump({k.encode(): v for k, v in obj.items()}, f, protocol=2)


def _cifar_pixels(indices: np.ndarray) -> np.ndarray:
    """Rows of 3072 uint8 values: solid colour ``color_of(index)`` per image, channel-major."""
    colors = np.asarray([color_of(int(i)) for i in indices], dtype=np.uint8)
    return np.repeat(colors, 1024, axis=1)


def make_cifar10(tmp, per_batch: int = 4) -> dict:
    """cifar-10-batches-py with 5 data batches and a test batch of ``per_batch`` images each."""
    base = Path(tmp) / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _pickle(base / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072})
    start, truth = 0, {}
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        idx = np.arange(start, start + per_batch)
        labels = [int(i % 10) for i in idx]
        _pickle(base / fname, {"batch_label": fname.encode(), "labels": labels, "data": _cifar_pixels(idx),
                               "filenames": [f"img_{i}.png".encode() for i in idx]})
        truth[fname] = (idx, labels)
        start += per_batch
    return {"root": str(tmp), "truth": truth}


def make_cifar100(tmp, train_per_fine: int = 2, test_per_fine: int = 1) -> dict:
    """cifar-100-python with train/test/meta pickles: real fine/coarse names and hierarchy.

    Image ``i`` of a file has colour ``color_of(offset + i)`` (offset 0 for train, 1000 for test).
    Returns dict(root, fine_names, coarse_names, train (fine, coarse), test (fine, coarse)).
    """
    base = Path(tmp) / "cifar-100-python"
    base.mkdir(parents=True)
    coarse_names = sorted(CIFAR100_HIERARCHY)
    fine_names = sorted(f for fs in CIFAR100_HIERARCHY.values() for f in fs)
    coarse_of = {f: coarse_names.index(c) for c, fs in CIFAR100_HIERARCHY.items() for f in fs}
    _pickle(base / "meta", {"fine_label_names": [n.encode() for n in fine_names],
                            "coarse_label_names": [n.encode() for n in coarse_names]})
    out = {"root": str(tmp), "fine_names": fine_names, "coarse_names": coarse_names}
    for split, per, offset in (("train", train_per_fine, 0), ("test", test_per_fine, 1000)):
        fine = np.tile(np.arange(100), per)
        coarse = np.asarray([coarse_of[fine_names[f]] for f in fine])
        idx = offset + np.arange(len(fine))
        _pickle(base / split, {"filenames": [f"x_{i}.png".encode() for i in idx], "batch_label": split.encode(),
                               "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist(), "data": _cifar_pixels(idx)})
        out[split] = (fine, coarse)
    return out


def make_csv(tmp, with_flags: bool = True) -> dict:
    """A CSV file list (paths relative to the CSV) over images/<label>_<j>.png.

    train: labels 'cat', 'dog'; test: labels '10', '2' with is_query/is_gallery flags.
    """
    root = Path(tmp)
    rows = []
    idx = 0
    for label, split, flags in (("cat", "train", None), ("dog", "train", None), ("10", "test", (1, 1)),
                                ("2", "test", (1, 0)), ("2", "test", (0, 1))):
        for j in range(2):
            rel = f"images/{split}_{label}_{idx}.png"
            write_image(root / rel, idx)
            rows.append((rel, label, split, flags))
            idx += 1
    header = "path,label,split" + (",is_query,is_gallery" if with_flags else "")
    lines = [header]
    for rel, label, split, flags in rows:
        extra = "" if not with_flags else "," + ",".join(str(v) for v in (flags or (0, 0)))
        lines.append(f"{rel},{label},{split}{extra}")
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")
    return {"root": str(root), "csv": str(root / "dataset.csv"), "rows": rows}


def make_folder(tmp, splits=("train", "test"), classes=("apple", "pear", "plum"), per_class: int = 2) -> dict:
    """An ImageFolder-style tree root/<split>/<class>/<j>.jpg."""
    root = Path(tmp) / "folder"
    idx = 0
    truth = {}
    for split in splits:
        truth[split] = []
        for c in classes:
            for j in range(per_class):
                p = root / split / c / f"{j}.jpg"
                write_image(p, idx)
                truth[split].append((str(p), c, idx))
                idx += 1
    return {"root": str(root), "truth": truth}
