import pytest
import torch

from helpers import checkpoints
from helpers.checkpoints import checkpoint_path, config_hash, load_checkpoint, save_checkpoint, train_or_load
from helpers.models import course_cnn
from helpers.repro import seed_everything
from helpers.training import History, TrainConfig, train

CONFIG = {"arch": "course", "width": 0.25, "seed": 0, "train": TrainConfig(num_epochs=1, batch_size=64)}


def _build():
    seed_everything(0)
    return course_cnn(0.25)


class Counter:
    def __init__(self, data):
        self.calls = 0
        self.data = data

    def __call__(self, model):
        self.calls += 1
        return train(model, self.data.train, config=CONFIG["train"], progress=False, device="cpu")


def test_config_hash_is_stable_and_sensitive():
    assert config_hash(CONFIG) == config_hash(dict(CONFIG))
    assert config_hash(CONFIG) != config_hash({**CONFIG, "seed": 1})
    with pytest.raises(TypeError, match="plain data"):
        config_hash({"x": torch.zeros(1)})


def test_second_call_loads_from_cache(tiny_data, capsys):
    fit = Counter(tiny_data)
    model_1, history_1 = train_or_load("m", CONFIG, _build, fit)
    model_2, history_2 = train_or_load("m", CONFIG, _build, fit)
    assert fit.calls == 1
    assert "checkpoint cache" in capsys.readouterr().out
    for a, b in zip(model_1.state_dict().values(), model_2.state_dict().values()):
        assert torch.equal(a.cpu(), b)
    assert history_1 == history_2
    saved = torch.load(checkpoint_path("m", CONFIG), weights_only=True)
    assert "train" in saved["config"] and saved["format"] == checkpoints.CHECKPOINT_FORMAT


def test_corrupt_checkpoint_is_reported_and_retrained(tiny_data, capsys):
    fit = Counter(tiny_data)
    train_or_load("m", CONFIG, _build, fit)
    path = checkpoint_path("m", CONFIG)
    path.write_bytes(path.read_bytes()[: 1000])  # truncated, as after a crash mid-copy
    train_or_load("m", CONFIG, _build, fit)
    assert fit.calls == 2
    assert "corrupt" in capsys.readouterr().out
    assert load_checkpoint(path, _build(), CONFIG) is not None  # rewritten whole


def test_stale_checkpoint_is_reported_and_retrained(tiny_data, capsys):
    fit = Counter(tiny_data)
    other = {**CONFIG, "seed": 99}
    # A file at this config's path that was made for another config (e.g. an edited hash scheme).
    save_checkpoint(checkpoint_path("m", CONFIG), _build(), other, History())
    train_or_load("m", CONFIG, _build, fit)
    assert fit.calls == 1 and "stale" in capsys.readouterr().out


def test_checkpoint_for_a_different_architecture_is_stale(capsys, tmp_path):
    path = tmp_path / "x.pt"
    save_checkpoint(path, course_cnn(0.5), CONFIG)
    assert load_checkpoint(path, course_cnn(0.25), CONFIG) is None
    assert "do not fit the model" in capsys.readouterr().out


def test_failed_training_or_write_leaves_no_file(tiny_data, monkeypatch, tmp_path):
    def boom(model):
        raise KeyboardInterrupt  # the user interrupts training

    with pytest.raises(KeyboardInterrupt):
        train_or_load("m", CONFIG, _build, boom, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []

    def broken_save(obj, f):
        open(f, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "m.pt", _build(), CONFIG)
    assert list(tmp_path.iterdir()) == []  # no half-written file, no temp file


def test_load_refuses_pickled_code(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "config": "{}", "state_dict": Evil(), "history": "null"}, path)
    assert load_checkpoint(path, _build(), {}) is None
    out = capsys.readouterr().out
    assert "corrupt" in out and "pwned" not in out.split("corrupt")[0]


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    from helpers._paths import atomic_write
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "x.txt", lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644   # readable by others, like any file the user writes


# ----------------------------------------------------------------------------------------------
# A checkpoint records the code that trained it


def test_a_model_trained_by_other_code_is_retrained_and_says_which_module(tiny_data, capsys, monkeypatch):
    fit = Counter(tiny_data)
    train_or_load("m", CONFIG, _build, fit)
    current = checkpoints.training_code()
    other = {**current, "training": "0" * 12}          # as if helpers/training.py had been fixed since
    monkeypatch.setattr(checkpoints, "training_code", lambda: other)
    capsys.readouterr()
    train_or_load("m", CONFIG, _build, fit)
    assert fit.calls == 2                               # retrained, not served
    out = capsys.readouterr().out
    assert "trained by other code: helpers/training.py" in out and "HELPERS_ACCEPT_OTHER_CODE" in out
    train_or_load("m", CONFIG, _build, fit)             # the retrained file records the new code
    assert fit.calls == 2


def test_accepting_other_code_serves_the_file_with_a_warning(tiny_data, monkeypatch):
    fit = Counter(tiny_data)
    train_or_load("m", CONFIG, _build, fit)
    monkeypatch.setattr(checkpoints, "training_code", lambda: {"torch": "9.9", "models": "x"})
    monkeypatch.setenv("HELPERS_ACCEPT_OTHER_CODE", "1")
    with pytest.warns(UserWarning, match="other code: .*helpers/models.py.*torch"):
        train_or_load("m", CONFIG, _build, fit)
    assert fit.calls == 1


def test_a_checkpoint_without_a_code_record_counts_as_other_code(tiny_data, capsys):
    fit = Counter(tiny_data)
    train_or_load("m", CONFIG, _build, fit)
    path = checkpoint_path("m", CONFIG)
    blob = torch.load(path, weights_only=True)
    del blob["code"]                                    # written before checkpoints recorded their code
    torch.save(blob, path)
    train_or_load("m", CONFIG, _build, fit)
    assert fit.calls == 2 and "records no training code" in capsys.readouterr().out


def test_the_code_digest_ignores_comments_and_docstrings_but_not_code():
    import ast
    import hashlib

    def digest(source: str) -> str:
        return hashlib.sha256(ast.dump(checkpoints._strip_docstrings(ast.parse(source))).encode()).hexdigest()

    base = 'def f(x):\n    """Doc."""\n    return x + 1  # add one\n'
    assert digest(base) == digest('def f(x):\n    """Other words."""\n\n    return x + 1\n')
    assert digest(base) == digest("def f(x):\n    return x + 1\n")
    assert digest(base) != digest('def f(x):\n    """Doc."""\n    return x + 2\n')
    assert set(checkpoints.training_code()) == {"torch", *checkpoints.TRAINING_MODULES}
