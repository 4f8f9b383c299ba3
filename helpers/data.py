"""CIFAR-10 as tensors in memory, fast augmented batches, and the splits the course uses.

Introduced in notebook 01. Images are kept as one uint8 tensor `(N, 3, 32, 32)`; batches are
cut from it, augmented (random crop + horizontal flip) and normalised in a few tensor ops, so
the training loop never touches PIL or a DataLoader worker.

Where the real data comes from, in order (see `load_cifar10`):
1. `image_folder=` or the `CIFAR10_DIR` environment variable: an ImageFolder copy
   (`train/<class>/*.jpg|png`, `test/<class>/*`);
2. torchvision's `CIFAR10` under `data/` (downloaded when `download=True` and online).
Decoded tensors are cached under `data/cache/`.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from helpers._paths import atomic_write, project_root, resolve_user_path

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel mean and std of the CIFAR-10 training images (0-255 scale).
MEAN = (125.31, 122.95, 113.87)
STD = (62.99, 62.09, 66.70)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CACHE_FORMAT = 3  # 3: the stored content fingerprint is also the integrity check (no separate checksum)


class DataNotFoundError(RuntimeError):
    """Real CIFAR-10 could not be found or fetched; the message says how to get it."""


@dataclass
class TensorData:
    """A labelled set held as tensors: the course's CIFAR-10, or anyone's data.

    images: (N, ...) — the course's are (N, 3, 32, 32) uint8; yours may be any uint8 or float tensor
        whose first dimension is N (images (N, C, H, W), or features (N, D) for an MLP).
    labels: (N,) int64 class indices in [0, len(classes)).
    classes: the class names (default CIFAR-10's).
    mean, std: per-channel statistics that batches are standardised with, `(x - mean) / std`, on the
        images' own scale (0-255 for uint8). Default: CIFAR-10's for uint8 (N, 3, 32, 32) images with
        CIFAR-10's classes; none for float images (used as given: normalisation belongs to the data);
        uint8 images of any other shape or classes must say theirs, so another dataset is never
        standardised with CIFAR-10's statistics by accident."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...] = CLASSES
    source: str = "unknown"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or not isinstance(self.labels, torch.Tensor):
            raise TypeError(f"images and labels must be tensors, got {type(self.images).__name__} and "
                            f"{type(self.labels).__name__}")
        if self.images.ndim < 2:
            raise ValueError(f"images must be (N, ...) with one row per example, got {tuple(self.images.shape)}")
        if self.images.dtype != torch.uint8 and not self.images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating point, got {self.images.dtype}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be ({len(self.images)},) to match {len(self.images)} images, "
                             f"got {tuple(self.labels.shape)}")
        if self.labels.dtype != torch.long:
            raise ValueError(f"labels must be int64 class indices, got {self.labels.dtype}")
        self.classes = tuple(self.classes)
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels run from {int(self.labels.min())} to {int(self.labels.max())}, outside the "
                             f"{len(self.classes)} classes 0..{len(self.classes) - 1}: pass classes= with one name "
                             "per class")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean= and std=, or neither")
        if self.mean is None and self.images.dtype == torch.uint8:
            if tuple(self.images.shape[1:]) == (3, 32, 32) and self.classes == CLASSES:
                self.mean, self.std = MEAN, STD
            else:
                raise ValueError(
                    f"uint8 images of shape {tuple(self.images.shape[1:])} (classes: {len(self.classes)}) need their "
                    "own statistics: pass mean= and std= (one value per channel, 0-255 scale), e.g. "
                    "mean=tuple(images.float().mean((0, 2, 3)).tolist()); CIFAR-10's are only assumed for "
                    "(3, 32, 32) images with CIFAR-10's classes")
        if self.mean is not None:
            self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
            channels = self.images.shape[1]
            if len(self.mean) != channels or len(self.std) != channels:
                raise ValueError(f"mean and std need one value per channel ({channels}), got {len(self.mean)} and "
                                 f"{len(self.std)}")

    def __len__(self) -> int:
        return len(self.labels)

    def _like(self, images: torch.Tensor, labels: torch.Tensor) -> "TensorData":
        return TensorData(images, labels, self.classes, self.source, self.mean, self.std)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "TensorData":
        """The images at `indices` (a new TensorData; tensors are copied)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self._like(self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)])

    def to(self, device: torch.device | str) -> "TensorData":
        """The data on `device`: itself when it is already there (keeping its cached pixel rows)."""
        if self.images.device == torch.device(device) and self.labels.device == torch.device(device):
            return self
        return self._like(self.images.to(device), self.labels.to(device))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of these images as float32 model inputs: standardised with `mean` / `std` when set,
        else as given (float data)."""
        if self.mean is None:
            return images.float()
        return normalize(images, self.mean, self.std)

    def pixel_rows(self) -> torch.Tensor:
        """The images as one row per pixel, (N * H * W, 3) (see `augment`): made once per TensorData
        and reused while the images tensor is unchanged."""
        key = (self.images.data_ptr(), self.images._version, self.images.device)
        cached = self.__dict__.get("_pixel_rows")
        if cached is None or cached[0] != key:
            cached = (key, _pixel_rows(self.images))
            self.__dict__["_pixel_rows"] = cached
        return cached[1]

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels.cpu(), minlength=len(self.classes)).tolist()


def content_fingerprint(*parts: TensorData | None) -> str:
    """A hash of what the data *is* — every image, label and class name of `parts`, in order — and
    never of where it lives: the same images under another folder give the same fingerprint."""
    h = hashlib.sha256()
    for part in parts:
        if part is None:
            h.update(b"none")
            continue
        h.update("\0".join(part.classes).encode())
        for t in (part.images, part.labels):
            h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class DataSplits:
    """The train and test sets, and optionally a validation split held out of the training images
    (for choices such as ensemble weights; the test set is only ever used to report results).

    `fingerprint` identifies the content (`content_fingerprint`), for cache keys that travel between
    machines and folders; computed here when not given (loaders pass the one stored with their cache)."""

    train: TensorData
    test: TensorData
    source: str = field(default="unknown")
    val: TensorData | None = None
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = content_fingerprint(self.train, self.val, self.test)


# ----------------------------------------------------------------------------------------------
# Loading real CIFAR-10


def data_dir() -> Path:
    """`HELPERS_DATA_DIR`, else `<project>/data`."""
    return resolve_user_path(os.environ.get("HELPERS_DATA_DIR") or project_root() / "data")


def _missing_data_message(reason: str) -> str:
    return (
        f"CIFAR-10 is not available: {reason}\n"
        "Get it one of two ways:\n"
        "  1. with internet access: load_cifar10(download=True) (or `make run`) downloads it into "
        f"{data_dir()} via torchvision;\n"
        "  2. offline: point CIFAR10_DIR at a local ImageFolder copy with train/<class>/*.jpg and "
        "test/<class>/*.jpg, e.g.  CIFAR10_DIR=/path/to/cifar10 make run"
    )


def _scan_image_folder(root: Path) -> tuple[dict[str, list[tuple[str, int]]], str]:
    """Check the ImageFolder layout and list (file, label) per split, or raise saying what is wrong.

    Also returns a digest of every file's split, class, name, label, size and modification time, made in
    the same pass: the decoded-tensor cache is keyed by it, so a different copy, or an image replaced in
    place, gets a new cache instead of stale tensors."""
    if not root.is_dir():
        raise DataNotFoundError(_missing_data_message(f"CIFAR10_DIR={root} is not a folder"))
    found = sorted(p.name for p in root.iterdir())
    splits: dict[str, list[tuple[str, int]]] = {}
    listing = hashlib.sha256()
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise ValueError(
                f"{root} does not have the ImageFolder layout: expected sub-folders 'train/' and "
                f"'test/', each with one folder per class ({', '.join(CLASSES)}); found {found or 'nothing'}"
            )
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if sorted(classes) != sorted(CLASSES):
            raise ValueError(
                f"{folder} should hold the 10 CIFAR-10 class folders {list(CLASSES)}; found {classes or 'none'}"
            )
        files = []
        for label, name in enumerate(CLASSES):  # torchvision's class order, not alphabetical
            # os.scandir, plain strings and the entries' own stat: 60,000 pathlib objects and separate
            # os.stat calls took about 2 s of every notebook's start (sorted by name, as before).
            with os.scandir(folder / name) as it:
                entries = sorted((e for e in it if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS),
                                 key=lambda e: e.name)
            for e in entries:
                st = e.stat()
                listing.update(f"{split}/{name}/{e.name}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
                files.append((e.path, label))
        if not files:
            raise ValueError(f"{folder} has the class folders but no image files ({', '.join(IMAGE_EXTENSIONS)})")
        splits[split] = files
    return splits, listing.hexdigest()


def _decode_images(files: list[tuple[str | Path, int]], desc: str) -> TensorData:
    # Pillow ships with torchvision everywhere; decoding happens once, then the tensor cache is used.
    from PIL import Image

    images = torch.empty(len(files), 32, 32, 3, dtype=torch.uint8)
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    for i, (path, _) in enumerate(tqdm(files, desc=desc, unit="img", mininterval=1.0)):
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
        if pixels.shape != (32, 32, 3):
            raise ValueError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; CIFAR-10 images are 32x32")
        images[i] = torch.from_numpy(pixels.copy())
    return TensorData(images.permute(0, 3, 1, 2).contiguous(), labels)


def _cache_key(source_type: str, ident: str) -> str:
    return hashlib.sha256(f"{CACHE_FORMAT}:{source_type}:{ident}".encode()).hexdigest()[:12]


def _load_cache(path: Path, source: str) -> DataSplits | None:
    """The cached tensors, or None (with a message) if the file is missing, corrupt or stale."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        ok = (
            blob.get("format") == CACHE_FORMAT
            and blob["train_images"].shape[1:] == (3, 32, 32)
            and blob["train_images"].dtype == torch.uint8
            and len(blob["train_images"]) == len(blob["train_labels"]) == blob["num_train"]
            and len(blob["test_images"]) == len(blob["test_labels"]) == blob["num_test"]
        )
        if ok:  # the stored content fingerprint doubles as the integrity check
            train = TensorData(blob["train_images"], blob["train_labels"], CLASSES, source)
            test = TensorData(blob["test_images"], blob["test_labels"], CLASSES, source)
            ok = content_fingerprint(train, None, test) == blob["fingerprint"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt, the reason is shown
        print(f"Data cache {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it.")
        return None
    if not ok:
        print(f"Data cache {path} is stale or corrupt (checks failed); rebuilding it.")
        return None
    return DataSplits(train, test, source, fingerprint=blob["fingerprint"])


def _save_cache(path: Path, data: DataSplits) -> None:
    blob = {
        "format": CACHE_FORMAT,
        "source": data.source,
        "train_images": data.train.images, "train_labels": data.train.labels,
        "test_images": data.test.images, "test_labels": data.test.labels,
        "num_train": len(data.train), "num_test": len(data.test),
        "fingerprint": data.fingerprint,
    }
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_cifar10(image_folder: str | os.PathLike | None = None, *, download: bool | None = None,
                 cache: bool = True) -> DataSplits:
    """Real CIFAR-10 as tensors: 50,000 training and 10,000 test images.

    Source order: `image_folder`, else `$CIFAR10_DIR` (ImageFolder layout), else torchvision's
    CIFAR10 under `data/` (downloaded if `download`; default: `$HELPERS_DOWNLOAD` != "0").
    Decoded tensors are cached in `data/cache/`; a corrupt or stale cache is rebuilt.

    Raises `DataNotFoundError` (one message naming both remedies) when nothing is available, and
    `ValueError` when a folder is given but does not have the ImageFolder layout."""
    folder = image_folder or os.environ.get("CIFAR10_DIR") or None
    cache_dir = data_dir() / "cache"
    if folder:
        root = resolve_user_path(folder)
        splits, listing = _scan_image_folder(root)  # listing: every file's name, size and mtime, hashed
        ident = f"{root}:{listing}"
        source = f"ImageFolder {root.name}"  # the folder's name only: results and cache keys carry no local path
        path = cache_dir / f"cifar10-folder-{_cache_key('folder', ident)}.pt"
        data = _load_cache(path, source) if cache else None
        if data is None:
            train = _decode_images(splits["train"], "decode train")
            test = _decode_images(splits["test"], "decode test")
            data = DataSplits(TensorData(train.images, train.labels, CLASSES, source),
                           TensorData(test.images, test.labels, CLASSES, source), source)
            if cache:
                _save_cache(path, data)
        return data

    source = "torchvision CIFAR10"
    path = cache_dir / f"cifar10-torchvision-{_cache_key('torchvision', '')}.pt"
    data = _load_cache(path, source) if cache else None
    if data is not None:
        return data
    if download is None:
        download = os.environ.get("HELPERS_DOWNLOAD", "1") != "0"
    root = data_dir()
    from torchvision.datasets import CIFAR10  # imported here: torchvision takes seconds to import

    try:
        sets = [CIFAR10(str(root), train=t, download=download) for t in (True, False)]
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted."
        raise DataNotFoundError(_missing_data_message(f"torchvision found nothing usable in {root} ({exc})")) from None
    except OSError as exc:  # no network: URLError / socket errors are OSErrors
        raise DataNotFoundError(_missing_data_message(f"the download failed ({exc})")) from None
    parts = []
    for ds in sets:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        parts.append(TensorData(images, torch.tensor(ds.targets, dtype=torch.long), CLASSES, source))
    data = DataSplits(parts[0], parts[1], source)
    if cache:
        _save_cache(path, data)
    return data


# ----------------------------------------------------------------------------------------------
# Synthetic stand-in for the smoke preset


def synthetic_cifar(num_train: int = 2048, num_test: int = 512, *, seed: int = 0, noise: float = 1.2) -> DataSplits:
    """Learnable CIFAR-shaped data: 10 classes, 32x32 RGB uint8, made in memory (no download).

    Each class is a smooth random colour pattern; an image is its class pattern, shifted by up to
    4 pixels, with random contrast and pixel noise (`noise`, relative to the pattern's spread).
    A small CNN gets far above chance on it in one short epoch, so `smoke` runs exercise real
    learning while staying hermetic and fast."""
    g = torch.Generator().manual_seed(seed)
    # Low-frequency patterns: random 4x4 colour grids upsampled to 40x40 (room for shifts).
    coarse = torch.randn(10, 3, 4, 4, generator=g)
    patterns = F.interpolate(coarse, size=(40, 40), mode="bicubic", align_corners=False)

    def make(n: int) -> TensorData:
        labels = torch.arange(n) % 10
        labels = labels[torch.randperm(n, generator=g)]
        dx = torch.randint(0, 9, (n,), generator=g)
        dy = torch.randint(0, 9, (n,), generator=g)
        rows = dy[:, None] + torch.arange(32)
        cols = dx[:, None] + torch.arange(32)
        base = patterns[labels]  # (n, 3, 40, 40)
        crops = base[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
        x = crops * contrast + noise * torch.randn(n, 3, 32, 32, generator=g)
        images = (128 + 45 * x).round().clamp(0, 255).to(torch.uint8)
        return TensorData(images.contiguous(), labels.long(), CLASSES, "synthetic")

    return DataSplits(make(num_train), make(num_test), "synthetic")


# ----------------------------------------------------------------------------------------------
# Batches


def normalize(images: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """(N, C, ...) -> float32 in the same memory layout, standardised per channel: `(x - mean) / std`
    (default CIFAR-10's statistics, 0-255 scale), computed in place in one new tensor."""
    shape = (1, len(mean)) + (1,) * (images.ndim - 2)
    mean = torch.tensor(mean, device=images.device).view(shape)
    std = torch.tensor(std, device=images.device).view(shape)
    return torch.empty_like(images, dtype=torch.float32).copy_(images).sub_(mean).div_(std)


AUGMENT_PAD = 4  # pixels of reflect padding before the random crop


def _augment_draws(b: int, generator: torch.Generator, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random numbers `augment` draws for a batch of `b` images (shifts dy, dx and flips)."""
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    return dy, dx, torch.rand(b, generator=generator) < 0.5


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Where index `index` (which may fall up to size - 1 outside [0, size)) reads from under reflect
    padding: -1 -> 1, size -> size - 2 (the edge pixel is not repeated, as in `F.pad(mode="reflect")`)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def _pixel_rows(images: torch.Tensor) -> torch.Tensor:
    """`images` (N, 3, H, W) as one row of 3 channel values per pixel: (N * H * W, 3), a view when the
    tensor is already channels_last, else a channels_last copy (kept on the tensor's owner by
    `TensorData.pixel_rows`, so an epoch does not copy the data set once per batch)."""
    return images.permute(0, 2, 3, 1).contiguous().view(-1, images.shape[1])


def augment(images: torch.Tensor, generator: torch.Generator, *, pad: int = AUGMENT_PAD,
            index: torch.Tensor | None = None, pixel_rows: torch.Tensor | None = None,
            flip: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop (reflect padding by `pad`) and random horizontal flip, for a whole batch at once.

    images: (N, 3, H, W) of any dtype (uint8 or float). index: (B,) which images form the batch
    (default: all of them). pixel_rows: `images` as (N * H * W, 3), if the caller keeps it (else made
    here). flip: (B,) bool, which images to mirror, instead of the random draw (which is still made, so
    the shifts of a seed are the same either way). Returns (B, 3, H, W) of the same dtype in
    channels_last memory layout.
    Selection, padding, crop and flip are one row gather: each output pixel is read once, with no
    padded copy (the reflect padding is an index map)."""
    n, c, h, w = images.shape
    device = images.device
    index = torch.arange(n, device=device) if index is None else index.to(device)
    dy, dx, drawn = (t.to(device) for t in _augment_draws(len(index), generator, pad))
    flip = drawn if flip is None else flip.to(device)
    rows = _reflect(dy[:, None] - pad + torch.arange(h, device=device), h)                  # (B, H)
    cols = dx[:, None] - pad + torch.arange(w, device=device)                               # (B, W)
    cols = _reflect(torch.where(flip[:, None], cols.flip(1), cols), w)   # flip = read columns backwards
    pixel = (index[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]             # (B, H, W)
    if pixel_rows is None:
        pixel_rows = _pixel_rows(images)
    out = pixel_rows.index_select(0, pixel.view(-1)).view(len(index), h, w, c)              # (B, H, W, C)
    return out.permute(0, 3, 1, 2)                                                           # channels_last


def iterate_batches(data: TensorData, batch_size: int, *, shuffle: bool = False, augment_images: bool = False,
                    generator: torch.Generator | None = None, device: torch.device | str | None = None,
                    drop_last: bool = False, start_batch: int = 0, stop_batch: int | None = None,
                    pad: int = AUGMENT_PAD,
                    flip: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(x, y)` batches: x (B, ...) float32 model inputs (`data.normalize`; images in channels_last),
    y (B,) int64.

    pad: the random crop's reflect padding (the largest shift, in pixels). flip: (N,) bool per image of
    `data`, which to mirror this pass (`alternating_flips`), instead of a fresh random half per batch.

    Shuffling and augmentation draw from `generator` (CPU), so a seed fixes the whole stream.
    `start_batch` / `stop_batch` yield only batches `[start_batch, stop_batch)` of that stream, the
    same ones a full pass would yield there (skipped batches still advance the generator).
    Augmentation (random crop + flip) needs images `(N, C, H, W)`."""
    if (shuffle or augment_images) and generator is None:
        raise ValueError("shuffle/augment need a seeded torch.Generator (pass generator=...)")
    if augment_images and data.images.ndim != 4:
        raise ValueError(f"augmentation (random crop and flip) needs images (N, C, H, W), got "
                         f"{tuple(data.images.shape)}: train with TrainConfig(augment=False)")
    device = torch.device(device) if device is not None else data.images.device
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i, start in enumerate(range(0, stop, batch_size)):
        if stop_batch is not None and i >= stop_batch:
            return
        if i < start_batch:
            if augment_images:
                _augment_draws(len(order[start:start + batch_size]), generator, pad)
            continue
        idx = order[start:start + batch_size].to(data.images.device)
        if augment_images:  # gather, crop and flip the pixels at once; normalise only the result
            x = augment(data.images, generator, pad=pad, index=idx, pixel_rows=data.pixel_rows(),
                        flip=None if flip is None else flip[idx.cpu()])
            x = data.normalize(x.to(device, non_blocking=True))
        else:
            x = data.normalize(data.images[idx].to(device, non_blocking=True))
            if x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
        y = data.labels[idx].to(device, non_blocking=True)
        yield x, y


def alternating_flips(n: int, epoch: int, *, seed: int) -> torch.Tensor:
    """(n,) bool: which of `n` images to mirror in epoch `epoch` so that each is seen mirrored every other
    epoch (airbench's alternating flip): a random half (fixed by `seed`) in even epochs, the other half
    in odd ones. Over two epochs every image is seen both ways, where random flips leave a quarter of
    them one way only."""
    first = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    return first ^ bool(epoch % 2)


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


# ----------------------------------------------------------------------------------------------
# Anyone's data: the three kinds every data-taking helper accepts


class Batches:
    """Any re-iterable of `(x, y)` batches — a `torch.utils.data.DataLoader`, a list of pairs — used as
    given: its own batch size, order, augmentation and normalisation; only moved to the device.

    Training helpers take one pass over it per epoch (`len(batches)` optimiser steps, so it needs a
    length); evaluation takes one pass. Seeds of the course's helpers do not reach it: seed your
    DataLoader's `generator` for a reproducible order."""

    def __init__(self, batches: Iterable, *, name: str = "data") -> None:
        if isinstance(batches, Iterator):
            raise TypeError(f"{name}: got a one-shot iterator ({type(batches).__name__}); pass something that can "
                            "be iterated again, such as a DataLoader or a list of (x, y) batches")
        self.batches = batches
        self.name = name
        self.device: torch.device | None = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, batch in enumerate(self.batches):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                    and all(isinstance(t, torch.Tensor) for t in batch)):
                what = type(batch).__name__ + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                raise TypeError(f"{self.name}: batch {i} is a {what}; each batch must be a pair (x, y) of tensors")
            x, y = batch
            if len(x) != len(y):
                raise ValueError(f"{self.name}: batch {i} has {len(x)} inputs but {len(y)} labels")
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield x, y.long()

    def __len__(self) -> int:
        """Batches per pass."""
        try:
            return len(self.batches)
        except TypeError:
            raise TypeError(f"{self.name}: {type(self.batches).__name__} has no len(); training needs the number of "
                            "batches per epoch (a DataLoader over a map-style dataset has one)") from None

    def to(self, device: torch.device | str) -> "Batches":
        out = Batches(self.batches, name=self.name)
        out.device = torch.device(device)
        return out

    def __repr__(self) -> str:
        return f"Batches({type(self.batches).__name__}, name={self.name!r})"


# What every data-taking helper accepts (`as_data`): the course's tensors, `(x, y)` tensors, or batches.
DataLike = "TensorData | tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]]"

ACCEPTED = ("a helpers.data.TensorData, a pair (x, y) of tensors with one row per example, or a re-iterable of "
            "(x, y) batches such as a torch DataLoader")


def as_data(data, *, name: str = "data") -> "TensorData | Batches":
    """`data` as one of the two forms the helpers compute with: a `TensorData` (the course's data, or
    `(x, y)` tensors: float inputs used as given, labels 0..C-1), or `Batches` (a DataLoader or any other
    re-iterable of `(x, y)` batches). Anything else is a `TypeError` naming what was passed."""
    if isinstance(data, (TensorData, Batches)):
        return data
    if isinstance(data, DataSplits):
        raise TypeError(f"{name}: got a DataSplits; pass one of its parts (data.train, data.val or data.test)")
    if is_xy_pair(data):
        return tensor_data(*data, name=name)
    if isinstance(data, torch.Tensor):
        raise TypeError(f"{name}: got a single tensor {tuple(data.shape)}; pass inputs and labels as a pair (x, y)")
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        raise TypeError(f"{name}: got a Dataset ({type(data).__name__}), which yields single examples; wrap it in "
                        "torch.utils.data.DataLoader(dataset, batch_size=...)")
    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
        raise TypeError(f"{name}: got {type(data).__name__}; expected {ACCEPTED}")
    return Batches(data, name=name)


def is_xy_pair(data) -> bool:
    """Whether `data` is a pair `(x, y)` of a whole set: x (N, ...), y (N,) integer labels."""
    return (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
            and data[0].ndim >= 1 and data[1].ndim == 1 and len(data[0]) == len(data[1]) > 0
            and not data[1].is_floating_point() and not data[1].is_complex())


def tensor_data(x: torch.Tensor, y: torch.Tensor, *, classes: Sequence[str] | None = None,
                name: str = "data") -> TensorData:
    """`(x, y)` tensors as a `TensorData`: x used as given (uint8 images need `TensorData(..., mean=, std=)`
    instead), y as int64 labels; classes named "0".."C-1" unless given."""
    y = y.long()
    if classes is None:
        classes = tuple(str(c) for c in range(int(y.max()) + 1 if len(y) else 0))
    if x.dtype == torch.uint8:
        raise ValueError(f"{name}: uint8 inputs {tuple(x.shape)} need their normalisation: convert them to float "
                        "model inputs yourself, or pass TensorData(images, labels, classes, mean=..., std=...)")
    return TensorData(x, y, tuple(classes), source="tensors")


def as_tensor_data(data, *, name: str = "data") -> TensorData:
    """`as_data(data)` where the helper needs the examples themselves (splitting, subsets): a DataLoader is
    a `TypeError` that says so."""
    data = as_data(data, name=name)
    if isinstance(data, Batches):
        raise TypeError(f"{name}: this helper needs the examples as tensors to split or sample them; got "
                        f"{type(data.batches).__name__}. Pass a TensorData or a pair (x, y) of tensors")
    return data


def num_examples(data: "TensorData | Batches") -> int | None:
    """Examples in `data`: len(TensorData), or the size of a DataLoader's dataset (None when unknown)."""
    if isinstance(data, TensorData):
        return len(data)
    dataset = getattr(data.batches, "dataset", None)
    try:
        return len(dataset) if dataset is not None else sum(len(y) for _, y in data.batches)
    except TypeError:
        return None


# ----------------------------------------------------------------------------------------------
# Splits


def train_val_split(data: TensorData, val_fraction: float = 0.1, *, seed: int = 0) -> tuple[TensorData, TensorData]:
    """A stratified split into (train, validation): `val_fraction` of each class goes to validation."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    labels = data.labels.cpu()
    train_idx, val_idx = [], []
    for c in range(len(data.classes)):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(len(idx) * val_fraction)
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return data.subset(torch.cat(train_idx).sort().values), data.subset(torch.cat(val_idx).sort().values)


def balanced_subset(data: TensorData, n: int, *, seed: int = 0) -> TensorData:
    """`n` images with the same number from every class (n // classes each), drawn at random (seed),
    in their original order."""
    per_class = n // len(data.classes)
    if per_class < 1:
        raise ValueError(f"n={n} is fewer than one image per class ({len(data.classes)} classes)")
    g = torch.Generator().manual_seed(seed)
    labels = data.labels.cpu()
    keep = []
    for c in range(len(data.classes)):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {data.classes[c]!r} has {len(idx)} images, fewer than the {per_class} asked for")
        keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return data.subset(torch.cat(keep).sort().values)


def iid_split(data: TensorData, num_parts: int = 2, *, seed: int = 0) -> list[TensorData]:
    """Random equal-size parts (sizes differ by at most one); together they are exactly `data`."""
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=g)
    return [data.subset(part.sort().values) for part in perm.tensor_split(num_parts)]


def dirichlet_split(data: TensorData, num_parts: int = 2, *, dirichlet_alpha: float = 0.5,
                    seed: int = 0) -> list[TensorData]:
    """Label-skewed parts: each class's images are shared out in proportions drawn from
    Dirichlet(dirichlet_alpha) (Hsu et al., 2019). Small concentration = each part sees mostly a few
    classes; large -> IID. Every image lands in exactly one part."""
    if dirichlet_alpha <= 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    rng = np.random.default_rng(seed)
    labels = data.labels.cpu()
    parts: list[list[torch.Tensor]] = [[] for _ in range(num_parts)]
    for c in range(len(data.classes)):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.from_numpy(rng.permutation(len(idx)))]
        shares = rng.dirichlet([dirichlet_alpha] * num_parts)
        cuts = (np.cumsum(shares)[:-1] * len(idx)).round().astype(int).tolist()
        for p, chunk in enumerate(torch.tensor_split(idx, cuts)):
            parts[p].append(chunk)
    return [data.subset(torch.cat(p).sort().values) for p in parts]


# ----------------------------------------------------------------------------------------------
# Selecting training images (part of a run's cache key: `helpers.zoo.RunConfig.subset`)


@dataclass(frozen=True)
class Subset:
    """Which training images a run uses: all of them, or part `index` of `parts` of a Dirichlet
    label-skewed split (`dirichlet_split`) with concentration `dirichlet_alpha`."""

    dirichlet_alpha: float | None = None   # None: all training images
    index: int = 0
    parts: int = 1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.parts:
            raise ValueError(f"need 0 <= index < parts, got index={self.index}, parts={self.parts}")
        if self.dirichlet_alpha is None and self.parts != 1:
            raise ValueError("a subset with parts > 1 needs a dirichlet_alpha")

    def select(self, train: TensorData) -> TensorData:
        if self.dirichlet_alpha is None:
            return train
        return dirichlet_split(train, self.parts, dirichlet_alpha=self.dirichlet_alpha,
                               seed=self.split_seed)[self.index]


ALL = Subset()


@dataclass(frozen=True)
class ClassSubset:
    """The training images of some classes only (a "task" for task arithmetic, notebook 08)."""

    classes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be a non-empty tuple of distinct labels, got {self.classes}")

    def select(self, train: TensorData) -> TensorData:
        bad = [c for c in self.classes if not 0 <= c < len(train.classes)]
        if bad:
            raise ValueError(f"class {bad[0]} is not a label of this data (0..{len(train.classes) - 1})")
        keep = torch.isin(train.labels.cpu(), torch.tensor(self.classes))
        return train.subset(keep.nonzero().flatten())


def main() -> None:
    """`python -m helpers.data`: fetch and cache CIFAR-10, printing a clear message on failure."""
    import sys

    try:
        data = load_cifar10()
    except (DataNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    print(f"CIFAR-10 ready: {len(data.train)} train / {len(data.test)} test images from {data.source}")


if __name__ == "__main__":
    main()
