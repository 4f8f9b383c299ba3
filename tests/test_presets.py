import pytest
import torch

from helpers.presets import PRESETS, get_preset


def test_named_presets_exist_and_env_var_selects(monkeypatch):
    assert set(PRESETS) == {"smoke", "workshop", "cpu", "gpu"}
    monkeypatch.setenv("HELPERS_PRESET", "smoke")
    assert get_preset().name == "smoke"
    assert get_preset("cpu").name == "cpu"  # an explicit name wins


def test_default_depends_on_cuda(monkeypatch):
    monkeypatch.delenv("HELPERS_PRESET", raising=False)
    assert get_preset().name == ("gpu" if torch.cuda.is_available() else "cpu")


def test_unknown_preset_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("HELPERS_PRESET", "laptop")
    with pytest.raises(ValueError, match="'laptop'.*smoke, workshop, cpu, gpu"):
        get_preset()


def test_overrides_and_smoke_is_hermetic():
    assert get_preset("cpu", num_seeds=1).num_seeds == 1
    smoke = get_preset("smoke")
    data = smoke.load_data()  # no file or network access: synthetic
    assert data.source == "synthetic"
    assert len(data.train) + len(data.val) == smoke.synthetic_train
    assert abs(len(data.val) - smoke.synthetic_train * smoke.val_fraction) <= 10  # stratified: rounded per class
    train_rows = {bytes(r) for r in data.train.images.flatten(1).numpy()}
    assert not any(bytes(r) in train_rows for r in data.val.images.flatten(1).numpy())  # held out, not copied
