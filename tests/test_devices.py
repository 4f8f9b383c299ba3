"""Device and precision choice: the decision table with faked hardware, the overrides, fp16 scaling."""

import pytest
import torch

import helpers.devices as devices
from helpers.data import iterate_batches
from helpers.devices import auto_precision, cuda_precision, pick_device, resolve_precision
from helpers.models import student_cnn
from helpers.repro import seed_everything
from helpers.training import TrainConfig, cross_entropy_loss, make_optimizer, run_steps


@pytest.mark.parametrize("gpu, capability, bf16_native, expected", [
    ("T4 (Colab)", (7, 5), False, "fp16"),        # bf16 only emulated there
    ("V100", (7, 0), False, "fp16"),
    ("A100", (8, 0), True, "bf16"),
    ("H100", (9, 0), True, "bf16"),
    ("P100", (6, 0), False, "fp32"),
    ("emulated bf16 on sm_80 build quirk", (8, 0), False, "fp16"),
])
def test_cuda_decision_table(monkeypatch, gpu, capability, bf16_native, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_native or including_emulation)
    monkeypatch.delenv("HELPERS_PRECISION", raising=False)
    assert auto_precision(torch.device("cuda")) == expected, gpu
    assert cuda_precision(capability, bf16_native) == expected


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_cpu_uses_bf16_only_where_native(monkeypatch, native, expected):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    monkeypatch.delenv("HELPERS_PRECISION", raising=False)
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_helpers_precision_overrides_auto_only(monkeypatch):
    monkeypatch.setenv("HELPERS_PRECISION", "fp32")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"   # an explicit choice in code wins
    monkeypatch.setenv("HELPERS_PRECISION", "fp8")
    with pytest.raises(ValueError, match="HELPERS_PRECISION"):
        resolve_precision("auto", torch.device("cpu"))
    monkeypatch.setenv("HELPERS_PRECISION", "fp16")
    with pytest.raises(ValueError, match="fp16 training is for GPUs"):
        resolve_precision("auto", torch.device("cpu"))


def test_helpers_device_override(monkeypatch):
    monkeypatch.setenv("HELPERS_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv("HELPERS_DEVICE", "tpu")
    with pytest.raises(ValueError, match="valid: cpu, cuda, mps"):
        pick_device()


def test_gradient_scaler_path_takes_the_same_steps(tiny_data):
    """The fp16 path's GradScaler (loss x 2^k, gradients / 2^k: exact in binary) gives the same weights as
    plain steps when nothing overflows: the scaled branch of `run_steps` really steps the optimiser."""
    config = TrainConfig(num_epochs=1, batch_size=64, lr=0.05)
    weights = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)):
        seed_everything(0)
        model = student_cnn(0.5).to(memory_format=torch.channels_last).train()
        batches = list(iterate_batches(tiny_data.train, 64, shuffle=True, augment_images=True,
                                       generator=torch.Generator().manual_seed(0), drop_last=True))
        run_steps(model, batches, [0.05] * len(batches), optimizer=make_optimizer(model, config),
                  loss_fn=cross_entropy_loss(config), device=torch.device("cpu"), precision="fp32", scaler=scaler)
        weights.append(model[0].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_cpu_isa_names_the_widest_instructions_and_a_onednn_cap():
    from helpers.repro import cpu_isa
    assert cpu_isa({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, cap="") == "AMX"
    assert cpu_isa({"avx2", "avx512f", "avx512_bf16"}, cap="") == "AVX-512 BF16"
    assert cpu_isa({"avx2", "avx512f"}, cap="") == "AVX-512"
    assert cpu_isa({"avx2", "fma"}, cap="") == "AVX2"
    assert cpu_isa({"neon"}, cap="") == ""
    assert cpu_isa({"avx2", "avx512f", "avx512_bf16"}, cap="avx2") == "AVX-512 BF16, oneDNN capped at AVX2"
    assert cpu_isa(set(), cap="AVX2") == "oneDNN capped at AVX2"
    assert cpu_isa({"avx2"}, cap="ALL") == "AVX2"
