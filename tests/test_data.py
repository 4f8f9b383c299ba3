from pathlib import Path

import pytest
import torch

from helpers import data as hdata
from helpers.data import (CLASSES, DataNotFoundError, TensorData, augment, dirichlet_split, iid_split,
                          iterate_batches, load_cifar10, normalize, synthetic_cifar, train_val_split)


def test_synthetic_shapes_and_determinism():
    a = synthetic_cifar(200, 100, seed=3)
    b = synthetic_cifar(200, 100, seed=3)
    assert a.train.images.shape == (200, 3, 32, 32) and a.train.images.dtype == torch.uint8
    assert a.test.labels.shape == (100,) and set(a.train.labels.tolist()) == set(range(10))
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, synthetic_cifar(200, 100, seed=4).train.images)


def test_batches_cover_data_once_and_are_normalised(tiny_data):
    g = torch.Generator().manual_seed(0)
    seen = []
    for x, y in iterate_batches(tiny_data.train, 100, shuffle=True, generator=g):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert x.is_contiguous(memory_format=torch.channels_last)
        seen.append(y)
    assert sorted(torch.cat(seen).tolist()) == sorted(tiny_data.train.labels.tolist())
    x, _ = next(iterate_batches(tiny_data.train, 512))
    assert torch.allclose(x, normalize(tiny_data.train.images))


def test_batch_slices_are_the_full_streams_batches(tiny_data):
    def stream(**kw):
        g = torch.Generator().manual_seed(3)
        return list(iterate_batches(tiny_data.train, 100, shuffle=True, augment_images=True, generator=g,
                                    drop_last=True, **kw))
    full = stream()
    parts = stream(stop_batch=2) + stream(start_batch=2, stop_batch=3) + stream(start_batch=3)
    assert len(parts) == len(full) == 5
    for (xa, ya), (xb, yb) in zip(parts, full):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_batches_drop_last_and_need_generator(tiny_data):
    assert len(list(iterate_batches(tiny_data.train, 100, drop_last=True))) == 5
    with pytest.raises(ValueError, match="generator"):
        next(iterate_batches(tiny_data.train, 100, shuffle=True))


def test_augment_crops_and_flips_real_pixels():
    torch.manual_seed(0)
    images = torch.randn(64, 3, 32, 32)
    out = augment(images, torch.Generator().manual_seed(1), pad=0)  # no padding: only flips
    for i in range(64):
        assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(-1))
    flipped = sum(not torch.equal(out[i], images[i]) for i in range(64))
    assert 10 < flipped < 54  # about half
    out = augment(images, torch.Generator().manual_seed(2), pad=4)
    assert out.shape == images.shape
    assert not torch.equal(out, images)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4), mode="reflect")
    for i in range(64):  # every output is a 32x32 window of the padded image, possibly mirrored
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert torch.equal(out, augment(images, torch.Generator().manual_seed(2), pad=4))  # seeded


def test_iid_split_partitions_exactly(tiny_data):
    parts = iid_split(tiny_data.train, 3, seed=0)
    assert [len(p) for p in parts] in ([171, 171, 170], [170, 171, 171], [171, 170, 171])
    merged = torch.cat([p.images.flatten(1) for p in parts])
    assert len(merged) == len(tiny_data.train)
    assert sorted(map(bytes, merged.numpy())) == sorted(map(bytes, tiny_data.train.images.flatten(1).numpy()))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_split_partitions_exactly(alpha):
    data = synthetic_cifar(1000, 10, seed=1).train
    parts = dirichlet_split(data, 4, dirichlet_alpha=alpha, seed=0)
    assert sum(len(p) for p in parts) == len(data)
    counts = torch.tensor([p.class_counts() for p in parts])
    assert counts.sum(0).tolist() == data.class_counts()


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_not():
    data = synthetic_cifar(2000, 10, seed=1).train
    def skew(alpha):
        counts = torch.tensor([p.class_counts() for p in dirichlet_split(data, 2, dirichlet_alpha=alpha, seed=0)]).float()
        share = counts[0] / counts.sum(0)  # fraction of each class in part 0
        return float((share - 0.5).abs().mean())
    assert skew(0.1) > 0.3
    assert skew(1000.0) < 0.05
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_split(data, 2, dirichlet_alpha=0)


def test_train_val_split_is_stratified_and_disjoint():
    data = synthetic_cifar(1000, 10, seed=1).train
    train, val = train_val_split(data, 0.2, seed=0)
    assert len(train) + len(val) == 1000
    assert val.class_counts() == [20] * 10
    with pytest.raises(ValueError):
        train_val_split(data, 1.5)


def _write_folder(root: Path, per_class: int = 2, classes=CLASSES) -> None:
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{i:04d}.png")


def test_image_folder_loads_in_torchvision_class_order_and_caches(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.setenv("HELPERS_DATA_DIR", str(tmp_path / "data"))
    _write_folder(tmp_path / "cifar")
    data = load_cifar10(tmp_path / "cifar")
    assert len(data.train) == 20 and len(data.test) == 20
    assert data.train.labels.tolist() == [c for c in range(10) for _ in range(2)]
    caches = list((tmp_path / "data" / "cache").glob("*.pt"))
    assert len(caches) == 1
    # Corrupt cache: detected, rebuilt, same data.
    caches[0].write_bytes(b"not a torch file")
    again = load_cifar10(tmp_path / "cifar")
    assert "rebuilding" in capsys.readouterr().out
    assert torch.equal(again.train.images, data.train.images)
    assert not list((tmp_path / "data" / "cache").glob("*.tmp"))


def test_replacing_an_image_in_place_rebuilds_the_cache(tmp_path, monkeypatch):
    import os
    from PIL import Image
    monkeypatch.setenv("HELPERS_DATA_DIR", str(tmp_path / "data"))
    _write_folder(tmp_path / "cifar")
    first = load_cifar10(tmp_path / "cifar")
    target = tmp_path / "cifar" / "train" / "airplane" / "0000.png"
    Image.fromarray(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()).save(target)
    os.utime(target, ns=(1, 1))  # a different modification time, as after any edit
    second = load_cifar10(tmp_path / "cifar")
    assert not torch.equal(first.train.images[0], second.train.images[0])
    assert int(second.train.images[0].sum()) == 0


def test_image_folder_with_wrong_layout_says_what_it_expected(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "img0.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"expected sub-folders 'train/' and 'test/'.*found \['img0.jpg'\]"):
        load_cifar10(tmp_path / "flat")
    _write_folder(tmp_path / "few", classes=CLASSES[:3])
    with pytest.raises(ValueError, match="should hold the 10 CIFAR-10 class folders"):
        load_cifar10(tmp_path / "few")


def test_missing_data_offline_names_both_remedies(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.setenv("HELPERS_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10(download=False)
    message = str(info.value)
    assert "download=True" in message and "CIFAR10_DIR" in message


def test_missing_data_command_prints_message_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.setenv("HELPERS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HELPERS_DOWNLOAD", "0")
    with pytest.raises(SystemExit) as info:
        hdata.main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "CIFAR10_DIR" in err and "Traceback" not in err


def test_tensordata_validates_shapes():
    with pytest.raises(ValueError, match="uint8 or floating"):
        TensorData(torch.zeros(2, 3, 32, 32, dtype=torch.int32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        TensorData(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the 10 classes"):
        TensorData(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 10]))


def test_augmented_batches_match_pad_then_crop_reference(tiny_data):
    """The one-gather pipeline (uint8 rows, reflect padding as an index map, normalise last) gives
    exactly the batches of the textbook order: normalise, pad, crop, flip."""
    from helpers.data import _augment_draws, normalize
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batches = list(iterate_batches(tiny_data.train, 64, shuffle=True, augment_images=True, generator=g1,
                                   drop_last=True))
    order = torch.randperm(len(tiny_data.train), generator=g2)
    for i, (x, _) in enumerate(batches):
        idx = order[i * 64:(i + 1) * 64]
        padded = torch.nn.functional.pad(normalize(tiny_data.train.images[idx]), (4, 4, 4, 4), mode="reflect")
        dy, dx, flip = _augment_draws(64, g2, 4)
        for j in range(64):
            window = padded[j, :, dy[j]:dy[j] + 32, dx[j]:dx[j] + 32]
            assert torch.equal(x[j], window.flip(-1) if flip[j] else window)
        assert x.is_contiguous(memory_format=torch.channels_last)


def test_fingerprint_depends_on_the_images_not_the_path(tmp_path, monkeypatch):
    import shutil
    from PIL import Image
    monkeypatch.setenv("HELPERS_DATA_DIR", str(tmp_path / "data"))
    _write_folder(tmp_path / "one" / "cifar")
    shutil.copytree(tmp_path / "one" / "cifar", tmp_path / "two" / "elsewhere")
    a, b = load_cifar10(tmp_path / "one" / "cifar"), load_cifar10(tmp_path / "two" / "elsewhere")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert str(tmp_path) not in a.source and str(tmp_path) not in a.fingerprint
    assert load_cifar10(tmp_path / "one" / "cifar").fingerprint == a.fingerprint   # from the cache: stored
    target = tmp_path / "two" / "elsewhere" / "test" / "truck" / "0001.png"
    Image.fromarray(torch.full((32, 32, 3), 7, dtype=torch.uint8).numpy()).save(target)
    assert load_cifar10(tmp_path / "two" / "elsewhere").fingerprint != a.fingerprint   # one changed image
