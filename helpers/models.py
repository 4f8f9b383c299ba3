"""The course CNN, the student, and what they cost (introduced in notebook 01).

Both are one class, `CNN`, an `nn.Sequential` of Conv2d / MaxPool2d / BatchNorm2d / GELU blocks
ending in a global max-pool, Flatten and Linear. It has no residual connections on purpose: the
permutation symmetry of notebook 04 is then easy to read off the layer list, and every helper that
works on the course models also works on any plain `nn.Sequential` of the same kinds of layers.

The block layout follows airbench (Jordan, 2024): conv -> max-pool -> BatchNorm -> activation,
which trains fast at large learning rates. `fast_cnn` is the same class with airbench94's model-side
ingredients switched on (each a named option of `CNN`, see its docstring): a frozen whitening stem fitted
to the patch statistics of training images (`fit_whitening`), identity-initialised convolutions, BatchNorm
with its scale fixed at 1 and fast running statistics, and a bias-free classifier scaled by 1/9. Credit:
Keller Jordan's airbench (MIT licence, github.com/KellerJordan/cifar10-airbench; arXiv 2404.00498); the
code here is the course's own.

`build_model(arch, width, init_seed)` builds any of the course's architectures by name with seeded
initial weights; `module_fingerprint` is the model digest that checkpoint cache keys hold.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from helpers.devices import eval_mode
from helpers.repro import seed_everything

# Channels at width 1.0: stem, then the three stages (32x32 -> 16x16 -> 8x8 -> 4x4 after pooling).
COURSE_WIDTHS = (32, 64, 128, 256)
STUDENT_WIDTHS = (16, 32, 64, 128)
# airbench94's: the whitening stem's 24 filters (2 x 3 channels x 2 x 2 pixels), then 64 / 256 / 256.
FAST_WIDTHS = (24, 64, 256, 256)


def conv_bn(c_in: int, c_out: int, *, pool: bool = False, norm: bool = True, dirac: bool = False,
            bn_momentum: float = 0.1, bn_fixed_scale: bool = False) -> list[nn.Module]:
    """Conv2d 3x3 (no bias: BatchNorm has one) [-> MaxPool2d 2] -> BatchNorm2d -> GELU.
    norm=False: Conv2d 3x3 with a bias, Kaiming-normal weights and zero bias (without BatchNorm the
    initial scale must keep the signal's variance through depth), no BatchNorm.
    dirac: the first `min(c_in, c_out)` filters start as the identity (`nn.init.dirac_`), so at
    initialisation each block passes its input through (airbench: fewer epochs to a given accuracy).
    bn_momentum: PyTorch's running-statistics momentum (airbench uses 0.4: statistics that follow the
    fast-moving weights of a short run). bn_fixed_scale: BatchNorm's weight stays 1 (not trained); only its
    bias (shift) learns."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=not norm)
    if not norm:
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)
    if dirac:
        with torch.no_grad():
            nn.init.dirac_(conv.weight[:min(c_in, c_out), :min(c_in, c_out)])
    layers: list[nn.Module] = [conv]
    if pool:
        layers.append(nn.MaxPool2d(2))
    if norm:
        bn = nn.BatchNorm2d(c_out, momentum=bn_momentum, eps=1e-12 if bn_fixed_scale else 1e-5)
        if bn_fixed_scale:
            bn.weight.requires_grad_(False)
        layers.append(bn)
    layers.append(nn.GELU())
    return layers


class Whitening(nn.Conv2d):
    """A frozen 2x2 convolution that whitens image patches (airbench's first layer): its filters are the
    eigenvectors of the covariance of 2x2 patches of training images, each scaled by 1 / sqrt(eigenvalue +
    eps), and their negatives (so the GELU after it keeps both signs). Until `fit_whitening` is called
    the filters are random (a plain conv); the weight is never trained, the bias is.

    Input (N, C, H, W) -> (N, 2 C k^2, H - k + 1, W - k + 1)."""

    def __init__(self, in_channels: int = 3, kernel_size: int = 2):
        super().__init__(in_channels, 2 * in_channels * kernel_size ** 2, kernel_size, bias=True)
        self.weight.requires_grad_(False)
        nn.init.zeros_(self.bias)


@torch.no_grad()
def fit_whitening(model: nn.Module, images: torch.Tensor | Iterable, *, eps: float = 5e-4,
                  max_images: int = 5000) -> nn.Module:
    """Set every `Whitening` layer of `model` (in place; returns it) from the 2x2-patch covariance of
    `images`: model inputs (N, C, H, W) as the model sees them (normalised), or batches `x` / `(x, y)`;
    at most `max_images` are used. The same images give the same filters, so two models fitted on one
    data set share their first layer."""
    layers = [m for m in model.modules() if isinstance(m, Whitening)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Whitening layer to fit")
    if not isinstance(images, torch.Tensor):
        parts, seen = [], 0
        for batch in images:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            parts.append(x)
            seen += len(x)
            if seen >= max_images:
                break
        images = torch.cat(parts)
    images = images[:max_images].float()
    for layer in layers:
        if images.ndim != 4 or images.shape[1] != layer.in_channels:
            raise ValueError(f"fit_whitening needs images (N, {layer.in_channels}, H, W), got {tuple(images.shape)}")
        k = layer.kernel_size
        patches = F.unfold(images.to(layer.weight.device), k).transpose(1, 2).reshape(-1, layer.in_channels * k[0] * k[1])
        patches = patches.double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)           # ascending
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).flip(0)
        filters = filters.reshape(-1, layer.in_channels, *k).to(layer.weight.dtype)
        layer.weight.copy_(torch.cat([filters, -filters]))
    return model


class Scale(nn.Module):
    """Multiply by a constant (airbench's 1/9 on the logits of a bias-free classifier)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


class CNN(nn.Sequential):
    """A VGG-style CNN for 32x32 images.

    widths: (stem, stage1, stage2, stage3) channels; each stage halves the resolution and has
    `convs_per_stage` conv blocks. norm=False: no BatchNorm (convolutions with biases; notebook 04's
    REPAIR without normalisation). Input (N, 3, 32, 32) -> logits (N, num_classes).

    airbench's model-side ingredients, each off by default (the course CNN):
    whiten: the stem is a frozen 2x2 `Whitening` conv (fitted with `fit_whitening`) and a GELU instead of a
        conv block; `widths[0]` must then be its 2 x 3 x 2 x 2 = 24 outputs.
    dirac: convolutions start as the identity on their first channels. bn_momentum, bn_fixed_scale: see
        `conv_bn`. logit_scale: the classifier has no bias and its output is multiplied by this (None:
        a Linear with bias, unscaled)."""

    def __init__(self, widths: Sequence[int] = COURSE_WIDTHS, *, convs_per_stage: int = 2, num_classes: int = 10,
                 norm: bool = True, whiten: bool = False, dirac: bool = False, bn_momentum: float = 0.1,
                 bn_fixed_scale: bool = False, logit_scale: float | None = None):
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive channel counts (stem + 3 stages), got {widths}")
        if convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be >= 1, got {convs_per_stage}")
        block = dict(norm=norm, dirac=dirac, bn_momentum=bn_momentum, bn_fixed_scale=bn_fixed_scale)
        if whiten:
            stem = Whitening(3, 2)
            if widths[0] != stem.out_channels:
                raise ValueError(f"with whiten=True the stem has {stem.out_channels} channels; got widths[0]={widths[0]}")
            layers: list[nn.Module] = [stem, nn.GELU()]
        else:
            layers = conv_bn(3, widths[0], **block)
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += conv_bn(c_in, c_out, pool=True, **block)
            for _ in range(convs_per_stage - 1):
                layers += conv_bn(c_out, c_out, **block)
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        if logit_scale is None:
            layers.append(nn.Linear(widths[-1], num_classes))
        else:
            layers += [nn.Linear(widths[-1], num_classes, bias=False), Scale(logit_scale)]
        super().__init__(*layers)
        self.widths = tuple(int(w) for w in widths)
        self.convs_per_stage = convs_per_stage
        self.num_classes = num_classes
        self.norm = norm
        self.whiten = whiten


class ResidualCNN(nn.Module):
    """A small residual CNN for 32x32 images (notebook 04's residual pair): a stem, then per stage a
    downsampling conv block followed by one residual block `x + block(x)` (conv-BN-GELU-conv-BN), then
    global max-pool and a linear classifier. Each stage's stream is one permutation group: the
    residual addition ties the block's output to its input (`helpers.alignment` traces it).

    widths: (stem, stage1, stage2, stage3) channels. Input (N, 3, 32, 32) -> logits (N, num_classes)."""

    def __init__(self, widths: Sequence[int] = COURSE_WIDTHS, *, num_classes: int = 10):
        super().__init__()
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive channel counts (stem + 3 stages), got {widths}")
        self.stem = nn.Sequential(*conv_bn(3, widths[0]))
        self.down = nn.ModuleList(nn.Sequential(*conv_bn(c_in, c_out, pool=True))
                                  for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.GELU(),
                          nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            for c in widths[1:])
        self.act = nn.GELU()
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))
        self.widths = tuple(int(w) for w in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for down, block in zip(self.down, self.blocks):
            x = down(x)
            x = self.act(x + block(x))
        return self.head(x)


def _scaled(widths: Sequence[int], width: float) -> tuple[int, ...]:
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return tuple(max(1, round(w * width)) for w in widths)


def course_cnn(width: float = 1.0, *, num_classes: int = 10, norm: bool = True) -> CNN:
    """The course model: two conv blocks per stage, channels `COURSE_WIDTHS` times `width`
    (norm=False: the same without BatchNorm)."""
    return CNN(_scaled(COURSE_WIDTHS, width), convs_per_stage=2, num_classes=num_classes, norm=norm)


def fast_cnn(width: float = 1.0, *, num_classes: int = 10, whiten: bool = True, dirac: bool = True,
             bn_momentum: float = 0.4, bn_fixed_scale: bool = True, logit_scale: float | None = 1 / 9) -> CNN:
    """airbench94's network as a course `CNN`: a whitening stem (call `fit_whitening` before training; the
    course's recipes do), three stages of two identity-initialised conv blocks with fixed-scale BatchNorm
    (momentum 0.4), channels 64 / 256 / 256 times `width`, and a bias-free classifier scaled by 1/9. Each
    ingredient can be switched off (`benchmarks/recipe_ablation.py` measures them); whiten=False puts a
    trained 3x3 conv block of the same 24 channels in the stem's place."""
    stages = _scaled(FAST_WIDTHS[1:], width)
    return CNN((FAST_WIDTHS[0], *stages), convs_per_stage=2, num_classes=num_classes, whiten=whiten, dirac=dirac,
               bn_momentum=bn_momentum, bn_fixed_scale=bn_fixed_scale, logit_scale=logit_scale)


def student_cnn(width: float = 1.0, *, num_classes: int = 10) -> CNN:
    """The smaller student of notebook 06: one conv block per stage, channels `STUDENT_WIDTHS` x `width`."""
    return CNN(_scaled(STUDENT_WIDTHS, width), convs_per_stage=1, num_classes=num_classes)


def residual_cnn(width: float = 1.0, *, num_classes: int = 10) -> ResidualCNN:
    """The residual variant of the course model, channels `COURSE_WIDTHS` times `width`."""
    return ResidualCNN(_scaled(COURSE_WIDTHS, width), num_classes=num_classes)


def build_model(arch: str, width: float, init_seed: int) -> nn.Module:
    """A freshly initialised model of architecture `arch` ("course", "student", "residual" or
    "course_nonorm": the course CNN without BatchNorm) at width multiplier `width`; the same `init_seed`
    gives the same weights (every random generator is seeded with it first)."""
    builders = {"course": course_cnn, "student": student_cnn, "residual": residual_cnn,
                "course_nonorm": lambda width: course_cnn(width, norm=False), "fast": fast_cnn}
    if arch not in builders:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(builders)}")
    seed_everything(init_seed)
    return builders[arch](width)


def module_fingerprint(module: nn.Module) -> str:
    """The model digest of checkpoint cache keys (a distilled student's teacher, a fine-tune's starting
    weights): 16 hex digits of a hash of what a module computes, its structure (`repr`, which for an
    `Ensemble` includes the combine rule) and every parameter and buffer (name, dtype, shape, values).
    Two modules with the same fingerprint give the same outputs.

    It depends on nothing but the module's content, so a key stays valid across code changes that keep
    the modules' repr and weights. The prediction cache's `helpers.evaluation.model_signature` is another
    digest on purpose: it also hashes each module class's source code and public attributes and refuses
    modules with hooks, since a stored evaluation must be redone when the code that computes it changes;
    a checkpoint must not be retrained for that."""
    h = hashlib.sha256(repr(module).encode())
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm running stats are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> int:
    """Forward-pass FLOPs for one input of `input_shape` (batch included), counted by
    `torch.utils.flop_counter` (a multiply-add counts as 2 FLOPs; only matmul/conv-like ops are
    counted, which dominate these models)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with eval_mode(model), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(*input_shape, device=device))
    return int(counter.get_total_flops())


def describe(model: nn.Module) -> dict:
    """Parameters and forward FLOPs per 32x32 image, as plain numbers."""
    return {"parameters": count_parameters(model), "flops_per_image": count_flops(model)}
