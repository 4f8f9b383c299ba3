"""`helpers.evaluation.cache_predictions`: identical models are evaluated once, a changed one never
gets stale logits, and anything the key cannot see is not cached."""

import copy

import pytest
import torch
from torch import nn

from helpers import _prediction_cache as evaluation   # the cache machinery (private module)
from helpers.alignment import weight_matching
from helpers.averaging import interpolate, interpolation_curve, recalibration_batches
from helpers._prediction_cache import model_signature
from helpers.evaluation import cache_predictions, predict_logits
from helpers.models import course_cnn
from helpers.repair import repair
from helpers.repro import seed_everything


@pytest.fixture(autouse=True)
def fresh_cache():
    cache_predictions.clear()
    with cache_predictions(False):   # each test opts in itself; the process-wide state is restored after
        yield
    cache_predictions.clear()


def _count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls, handle


class Tempered(nn.Module):
    """Not a course architecture: a GRU over image rows, with a plain-float temperature that is not
    a parameter or buffer (the key must still see it)."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3 * 32, 16, batch_first=True)
        self.head = nn.Linear(16, 10)
        self.temperature = 1.0

    def forward(self, x):
        rows = x.permute(0, 2, 1, 3).flatten(2)           # (N, 32 rows, 3*32)
        return self.head(self.rnn(rows)[0][:, -1]) / self.temperature


def test_an_identical_model_is_served_its_stored_logits(tiny_data):
    seed_everything(0)
    model = course_cnn(0.25).eval()
    reference = predict_logits(model, tiny_data.test)           # cache off: computed
    with cache_predictions():
        first = predict_logits(model, tiny_data.test)
        twin = copy.deepcopy(model)                              # another object, same layers and weights
        second = predict_logits(twin, tiny_data.test)
        assert cache_predictions.hits == 1
        second.add_(1.0)                                         # the caller's copy, not the stored one
        third = predict_logits(model, tiny_data.test)
    assert torch.equal(first, reference) and torch.equal(third, reference)
    assert cache_predictions.hits == 2


def test_a_changed_weight_a_changed_image_or_another_precision_is_computed_again(tiny_data):
    seed_everything(0)
    model = course_cnn(0.25).eval()
    data = copy.deepcopy(tiny_data.test)
    with cache_predictions():
        before = predict_logits(model, data)
        with torch.no_grad():
            model[0].weight[0, 0, 0, 0] += 0.5                   # in place: same object, new content
        after = predict_logits(model, data)
        assert cache_predictions.hits == 0 and not torch.equal(before, after)
        data.images[0] = 255 - data.images[0]                    # in place as well
        changed = predict_logits(model, data)
        assert cache_predictions.hits == 0 and not torch.equal(changed[0], after[0])
        predict_logits(model, data, precision="fp32")
        predict_logits(model, data, batch_size=64)
        assert cache_predictions.hits == 0


def test_plain_attributes_are_in_the_key_and_hooks_or_functions_turn_caching_off(tiny_data):
    seed_everything(0)
    model = Tempered().eval()
    with cache_predictions():
        base = predict_logits(model, tiny_data.test)
        model.temperature = 2.0
        hotter = predict_logits(model, tiny_data.test)
        assert cache_predictions.hits == 0
        assert torch.allclose(hotter, base / 2, atol=1e-5)

        handle = model.head.register_forward_hook(lambda mod, inp, out: out * 0)
        assert model_signature(model) is None
        assert predict_logits(model, tiny_data.test).abs().max() == 0   # the hook ran: nothing was served
        handle.remove()

        model.activation = torch.tanh                            # a function: the key cannot read it
        assert model_signature(model) is None
        calls, handle = _count_forwards(model)
        predict_logits(model, tiny_data.test)
        predict_logits(model, tiny_data.test)
        handle.remove()
    assert len(calls) > 0


def test_off_by_default_and_a_with_block_restores_the_previous_setting(tiny_data):
    seed_everything(0)
    model = course_cnn(0.25).eval()
    assert not cache_predictions.enabled
    cache_predictions()                                          # as a call: stays on
    try:
        assert cache_predictions.enabled
        with cache_predictions(False):
            assert not cache_predictions.enabled
            predict_logits(model, tiny_data.test)
            predict_logits(model, tiny_data.test)
            assert cache_predictions.hits == 0                   # timing code sees every pass computed
        assert cache_predictions.enabled
    finally:
        cache_predictions(False)
    with pytest.raises(ValueError, match="max_entries"):
        cache_predictions(max_entries=0)
    assert not cache_predictions.enabled and cache_predictions.max_entries > 0   # the refused call changed nothing


def test_the_oldest_entries_go_first(tiny_data):
    seed_everything(0)
    models = [course_cnn(0.25).eval() for _ in range(3)]
    previous = cache_predictions.max_entries
    try:
        with cache_predictions(max_entries=2):
            for m in models:
                predict_logits(m, tiny_data.test)
            assert len(cache_predictions.store) == 2
            predict_logits(models[0], tiny_data.test)            # dropped: computed again
            assert cache_predictions.hits == 0
            predict_logits(models[2], tiny_data.test)
            assert cache_predictions.hits == 1
    finally:
        cache_predictions.max_entries = previous


def test_a_repair_curve_measures_each_endpoint_once_and_matches_the_uncached_curve(tiny_data):
    seed_everything(0)
    a, b = course_cnn(0.25).eval(), course_cnn(0.25).eval()
    batches = recalibration_batches(tiny_data.train, num_images=128, batch_size=64)
    b_aligned = weight_matching(a, b)
    alphas = [0, 0.25, 0.5, 0.75, 1]

    def curve():
        return interpolation_curve(a, b_aligned, tiny_data.test, alphas, progress=False,
                                   after_merge=lambda m, t: repair(m, a, b_aligned, batches, alpha=t))

    measured = []
    original = evaluation.cache_predictions.keep

    plain = curve()
    with cache_predictions():
        cache_predictions.keep = classmethod(lambda cls, key, value, **kw: (measured.append(key[0]) if key else None,
                                                                            original(key, value, **kw)))
        try:
            cached = curve()
        finally:
            cache_predictions.keep = original
    assert plain.accuracy == cached.accuracy and plain.loss == cached.loss
    # endpoint statistics: 2 measured once each, not 2 per alpha
    assert measured.count("output_stats") == 2
    assert cache_predictions.hits == 2 * (len(alphas) - 1)


def test_an_interpolation_endpoint_is_the_member_itself(tiny_data):
    seed_everything(0)
    a, b = course_cnn(0.25).eval(), course_cnn(0.25).eval()
    with cache_predictions():
        predict_logits(a, tiny_data.test)
        predict_logits(b, tiny_data.test)
        interpolation_curve(a, b, tiny_data.test, [0, 0.5, 1], progress=False)
        assert cache_predictions.hits == 2                       # alpha 0 and 1 are a and b, bit for bit
        assert model_signature(interpolate(a, b, 0.0)) == model_signature(a)


def test_a_run_shares_its_logits_between_processes_through_one_folder(tiny_data, tmp_path, monkeypatch):
    """What `make run` does between notebooks: a fresh process (here: an emptied memory) finds the
    entry written by an earlier one; a damaged file is recomputed, never trusted."""
    monkeypatch.setenv("HELPERS_PREDICTION_CACHE_DIR", str(tmp_path))
    seed_everything(0)
    model = course_cnn(0.25).eval()
    with cache_predictions():
        first = predict_logits(model, tiny_data.test)
        files = list(tmp_path.glob("*.pt"))
        assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
        cache_predictions.store.clear()                           # another kernel: nothing in memory
        assert torch.equal(predict_logits(model, tiny_data.test), first)
        assert cache_predictions.hits == 1
        cache_predictions.store.clear()
        files[0].write_bytes(b"not a tensor file")
        assert torch.equal(predict_logits(model, tiny_data.test), first)
        assert cache_predictions.hits == 1                        # recomputed, and the file rewritten
        cache_predictions.store.clear()
        predict_logits(model, tiny_data.test)
        assert cache_predictions.hits == 2


def test_ensembles_that_differ_only_in_their_weights_are_not_confused(tiny_data):
    """An Ensemble's weights are a non-persistent buffer (not in its state dict): they are in the key."""
    from helpers.ensembling import Ensemble

    seed_everything(0)
    members = [course_cnn(0.25).eval() for _ in range(2)]
    with cache_predictions():
        uniform = predict_logits(Ensemble(members, combine="mean_probs"), tiny_data.test)
        weighted = predict_logits(Ensemble(members, weights=[0.1, 0.9], combine="mean_probs"), tiny_data.test)
        by_logits = predict_logits(Ensemble(members, combine="mean_logits"), tiny_data.test)
    assert cache_predictions.hits == 0
    assert not torch.equal(uniform, weighted) and not torch.equal(uniform, by_logits)


def test_a_stored_entry_belongs_to_the_code_that_computed_it(tiny_data, tmp_path, monkeypatch):
    """Files are named and keyed by `code_version()` (the helpers package's source and torch's version):
    after a change to either, nothing stored earlier is served. Logits computed in bfloat16 are stored
    in bfloat16 (exact, half the bytes) and served as the same float32 values."""
    monkeypatch.setenv("HELPERS_PREDICTION_CACHE_DIR", str(tmp_path))
    seed_everything(0)
    model = course_cnn(0.25).eval()
    with cache_predictions():
        fp32 = predict_logits(model, tiny_data.test, precision="fp32")
        bf16 = predict_logits(model, tiny_data.test, precision="bf16")
        entries = {torch.load(p, weights_only=True)["value"].dtype for p in tmp_path.glob("*.pt")}
        assert entries == {torch.float32, torch.bfloat16}
        assert all(p.name.startswith(evaluation.code_version() + "-") for p in tmp_path.glob("*.pt"))
        cache_predictions.store.clear()
        served = predict_logits(model, tiny_data.test, precision="bf16")
        assert cache_predictions.hits == 1 and served.dtype == torch.float32 and torch.equal(served, bf16)
        monkeypatch.setattr(evaluation, "code_version", lambda: "0123456789ab")   # edited helpers
        cache_predictions.store.clear()
        assert torch.equal(predict_logits(model, tiny_data.test, precision="fp32"), fp32)
        assert cache_predictions.hits == 1                        # computed again, not served
        assert len(list(tmp_path.glob("0123456789ab-*.pt"))) == 1


def test_a_class_without_readable_source_is_served_in_memory_but_never_stored(tiny_data, tmp_path, monkeypatch):
    """Another process could define another class of the same name: only classes whose source the key
    holds (PyTorch's, the helpers package's, or a file's digest) go into the shared folder."""
    monkeypatch.setenv("HELPERS_PREDICTION_CACHE_DIR", str(tmp_path))
    namespace = {"nn": nn, "__name__": "typed_at_a_prompt"}
    exec("class Head(nn.Module):\n"
         "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(3 * 32 * 32, 10)\n"
         "    def forward(self, x):\n        return self.fc(x.flatten(1))\n", namespace)
    assert evaluation.class_source(namespace["Head"]) is None
    assert evaluation.class_source(nn.Linear) == "" and evaluation.class_source(type(course_cnn(0.25))) == ""
    assert evaluation.class_source(Tempered) == __import__("hashlib").sha256(
        open(__file__, "rb").read()).hexdigest()[:16]   # a user's class: its file's digest is in the key
    torch.manual_seed(0)
    model = namespace["Head"]().eval()
    with cache_predictions():
        first = predict_logits(model, tiny_data.test)
        assert torch.equal(predict_logits(model, tiny_data.test), first) and cache_predictions.hits == 1
        assert not list(tmp_path.iterdir())
        predict_logits(Tempered().eval(), tiny_data.test)
        assert len(list(tmp_path.glob("*.pt"))) == 1


def test_a_recalibration_is_kept_like_logits_and_served_bit_for_bit(tiny_data, tmp_path, monkeypatch):
    """recalibrate_batchnorm under the cache: the same model and batches get the stored statistics (here
    a BatchNorm1d MLP, not a course architecture), from memory or from another process's file; other
    batches or a changed weight are recalibrated again; an iterator of batches is never cached (the key
    would use it up) and gives the same statistics as the list."""
    from helpers.averaging import recalibrate_batchnorm

    monkeypatch.setenv("HELPERS_PREDICTION_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    batches = recalibration_batches(tiny_data.train, num_images=128, batch_size=64)
    others = recalibration_batches(tiny_data.train, num_images=128, batch_size=64, seed=1)
    reference = recalibrate_batchnorm(copy.deepcopy(mlp), batches).state_dict()       # cache off
    with cache_predictions():
        first = recalibrate_batchnorm(copy.deepcopy(mlp), batches)
        assert cache_predictions.hits == 0 and len(list(tmp_path.glob("*.pt"))) == 1
        cache_predictions.store.clear()                                              # another kernel
        served = recalibrate_batchnorm(copy.deepcopy(mlp), batches)
        assert cache_predictions.hits == 1
        for state in (first.state_dict(), served.state_dict()):
            assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
        assert not torch.equal(recalibrate_batchnorm(copy.deepcopy(mlp), others)[2].running_mean,
                               reference["2.running_mean"])
        changed = copy.deepcopy(mlp)
        with torch.no_grad():
            changed[1].weight.mul_(2)
        recalibrate_batchnorm(changed, batches)
        streamed = recalibrate_batchnorm(copy.deepcopy(mlp), iter(batches))
        assert cache_predictions.hits == 1                                           # no further hit
        assert torch.equal(streamed[2].running_var, reference["2.running_var"])


# ----------------------------------------------------------------------------------------------
# Keyed by content: no in-place edit of a weight is ever served the logits of the old weights


def _edits():
    """Ways a learner changes a weight in place; PyTorch's version counter misses the first two."""
    def through_data(model):
        model[0].weight.data.mul_(-1)

    def assign_data(model):
        model[0].weight.data = model[0].weight.data * 0.5

    def copy_under_no_grad(model):
        with torch.no_grad():
            model[0].weight.copy_(torch.randn_like(model[0].weight))

    def load_state_dict(model):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["0.weight"] = torch.randn_like(state["0.weight"])
        model.load_state_dict(state)

    return [through_data, assign_data, copy_under_no_grad, load_state_dict]


@pytest.mark.parametrize("edit", _edits(), ids=lambda f: f.__name__)
def test_an_in_place_edit_is_never_served_stale_logits(edit):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(40, 6), torch.arange(40) % 3
    with cache_predictions():
        before = predict_logits(model, (x, y))
        assert torch.equal(predict_logits(model, (x, y)), before)          # served: same weights
        edit(model)
        after = predict_logits(model, (x, y))
    with cache_predictions(False):
        reference = predict_logits(model, (x, y))
    assert not torch.equal(after, before), "the edited model was served the old weights' logits"
    assert torch.equal(after, reference)


@pytest.mark.parametrize("edit", _edits(), ids=lambda f: f.__name__)
def test_a_batched_ensemble_sees_an_edited_member(edit):
    from helpers.ensembling import Ensemble

    torch.manual_seed(1)
    members = [nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)) for _ in range(2)]
    ensemble = Ensemble(members, batched=True)
    x = torch.randn(16, 6)
    before = ensemble(x)
    edit(members[0])
    loop = Ensemble(members, batched=False)(x)
    after = ensemble(x)
    assert not torch.allclose(after, before)
    assert torch.allclose(after, loop, atol=1e-6)


def test_the_cache_is_off_unless_the_environment_switches_it_on():
    """`make run` sets HELPERS_CACHE_PREDICTIONS=1 for its kernels; anywhere else a fresh process starts
    with the cache off."""
    import subprocess
    import sys

    code = "from helpers.evaluation import cache_predictions; print(cache_predictions.enabled)"
    env = {k: v for k, v in __import__("os").environ.items() if k != "HELPERS_CACHE_PREDICTIONS"}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    on = subprocess.run([sys.executable, "-c", code], env=env | {"HELPERS_CACHE_PREDICTIONS": "1"},
                        capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "False" and on.stdout.strip() == "True"
