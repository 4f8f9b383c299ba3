"""Checkpoint archives: a verified round trip, and every kind of bad archive refused by name, writing nothing."""

import hashlib
import io
import json
import subprocess
import sys
import tarfile

import pytest
import torch

from helpers import checkpoints
from helpers.checkpoints import ArchiveError, export_archive, import_archive
from helpers.models import student_cnn
from helpers.training import History


def _cache(folder, names=("smoke-joint-abc.pt", "smoke-student-s0-def.pt", "cpu-joint-123.pt")):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        torch.manual_seed(i)
        checkpoints.save_checkpoint(folder / name, student_cnn(0.5), {"i": i}, History())
    return folder


def _archive(path, members: dict[str, bytes], manifest=None):
    listed = {n: hashlib.sha256(b).hexdigest() for n, b in members.items()} if manifest is None else manifest
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"MANIFEST.json": json.dumps({"format": 1, "files": listed}).encode(), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_round_trip_by_preset(tmp_path):
    src = _cache(tmp_path / "src")
    names = export_archive(tmp_path / "smoke.tar.gz", preset="smoke", directory=src)
    assert names == ["smoke-joint-abc.pt", "smoke-student-s0-def.pt"]
    imported = import_archive(tmp_path / "smoke.tar.gz", directory=tmp_path / "dst")
    assert imported == names
    for name in names:
        assert (tmp_path / "dst" / name).read_bytes() == (src / name).read_bytes()


def test_tampered_member_is_refused_by_name_and_nothing_is_written(tmp_path):
    src = _cache(tmp_path / "src")
    good = {p.name: p.read_bytes() for p in sorted(src.glob("smoke-*.pt"))}
    manifest = {n: hashlib.sha256(b).hexdigest() for n, b in good.items()}
    tampered = dict(good)
    blob = bytearray(tampered["smoke-student-s0-def.pt"])
    blob[len(blob) // 2] ^= 0xFF
    tampered["smoke-student-s0-def.pt"] = bytes(blob)
    archive = _archive(tmp_path / "bad.tar.gz", tampered, manifest)
    with pytest.raises(ArchiveError, match="smoke-student-s0-def.pt.*SHA-256"):
        import_archive(archive, directory=tmp_path / "dst")
    assert not (tmp_path / "dst").exists() or not list((tmp_path / "dst").iterdir())


@pytest.mark.parametrize("name, message", [
    ("../evil.pt", "outside"), ("/etc/evil.pt", "absolute"), ("sub/evil.pt", "unexpected"), ("run.sh", "unexpected"),
    # stored evaluations: only predictions/<preset>/<12 hex>-<40 hex>.pt
    ("predictions/smoke/evil.pt", "unexpected"), ("predictions/../../evil.pt", "outside"),
    (f"other/smoke/{'0' * 12}-{'a' * 40}.pt", "unexpected"), (f"predictions/{'0' * 12}-{'a' * 40}.pt", "unexpected"),
    (f"predictions/smoke/sub/{'0' * 12}-{'a' * 40}.pt", "unexpected"),
])
def test_bad_member_names_are_refused(tmp_path, name, message):
    archive = _archive(tmp_path / "bad.tar.gz", {name: b"x"})
    with pytest.raises(ArchiveError, match=message):
        import_archive(archive, directory=tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_unlisted_and_pickled_members_are_refused(tmp_path):
    src = _cache(tmp_path / "src", names=("smoke-a-1.pt",))
    data = (src / "smoke-a-1.pt").read_bytes()
    archive = _archive(tmp_path / "extra.tar.gz", {"smoke-a-1.pt": data, "smoke-b-2.pt": data},
                       manifest={"smoke-a-1.pt": hashlib.sha256(data).hexdigest()})
    with pytest.raises(ArchiveError, match="smoke-b-2.pt.*not listed"):
        import_archive(archive, directory=tmp_path / "dst")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"format": 1, "state_dict": Evil()}, buf)
    archive = _archive(tmp_path / "evil.tar.gz", {"smoke-evil-0.pt": buf.getvalue()})
    with pytest.raises(ArchiveError, match="smoke-evil-0.pt.*not a loadable checkpoint"):
        import_archive(archive, directory=tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_command_line_reports_a_refusal_without_traceback(tmp_path):
    archive = _archive(tmp_path / "bad.tar.gz", {"../evil.pt": b"x"})
    run = subprocess.run([sys.executable, "-m", "helpers.checkpoints", "import", str(archive)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "../evil.pt" in run.stderr and "Traceback" not in run.stderr


def test_a_readable_name_with_quotes_and_spaces_gets_a_file_name_the_archive_takes(tmp_path):
    """Notebook 09's distilled student is named after its teacher, "owners' ensemble": its file once kept
    the quote and the space, export left it out without a word, and every participant retrained it."""
    from helpers.checkpoints import checkpoint_path, train_or_load
    path = checkpoint_path("smoke-kd-course-owners' ensemble-kl-s0", {"seed": 0}, tmp_path)
    assert checkpoints._MEMBER.match(path.name) and path.name.startswith("smoke-kd-course-owners--ensemble-kl-s0-")
    assert checkpoint_path("../a b", {"seed": 0}, tmp_path).parent == tmp_path   # no way out of the folder
    train_or_load("smoke-kd-course-owners' ensemble-kl-s0", {"seed": 0}, lambda: student_cnn(0.5),
                  lambda model: History(), directory=tmp_path / "cache", verbose=False)
    names = export_archive(tmp_path / "a.tar.gz", preset="smoke", directory=tmp_path / "cache")
    assert names == [path.name]


def test_export_refuses_a_file_import_would_refuse_naming_it_and_writes_nothing(tmp_path):
    src = _cache(tmp_path / "src", names=("smoke-joint-abc.pt", "smoke-odd name.pt"))
    with pytest.raises(ArchiveError, match="'smoke-odd name.pt'"):
        export_archive(tmp_path / "smoke.tar.gz", preset="smoke", directory=src)
    assert not (tmp_path / "smoke.tar.gz").exists()


def _stored_evaluations(folder, preset="smoke"):
    """Two entries as `make run` stores them (helpers.evaluation.cache_predictions with the runner's
    folder): one of this code version, one of an older one (never exported)."""
    from helpers._prediction_cache import _pack, code_version
    target = folder / "predictions" / preset
    target.mkdir(parents=True, exist_ok=True)
    current = target / f"{code_version()}-{'a' * 40}.pt"
    torch.save(_pack(f"{code_version()}:('logits',)", torch.randn(8, 10)), current)
    torch.save(_pack("000000000000:('logits',)", torch.randn(8, 10)), target / f"000000000000-{'b' * 40}.pt")
    return current


def test_stored_evaluations_of_this_code_version_travel_with_the_checkpoints(tmp_path):
    src = _cache(tmp_path / "src")
    entry = _stored_evaluations(src)
    _stored_evaluations(src, preset="cpu")
    names = export_archive(tmp_path / "smoke.tar.gz", preset="smoke", directory=src)
    member = f"predictions/smoke/{entry.name}"
    assert names == ["smoke-joint-abc.pt", "smoke-student-s0-def.pt", member]   # not cpu's, not the old version
    assert import_archive(tmp_path / "smoke.tar.gz", directory=tmp_path / "dst") == sorted(names)
    assert (tmp_path / "dst" / member).read_bytes() == entry.read_bytes()
    assert export_archive(tmp_path / "bare.tar.gz", preset="smoke", directory=src, predictions=False) == names[:2]
    run = subprocess.run([sys.executable, "-m", "helpers.checkpoints", "import", str(tmp_path / "smoke.tar.gz")],
                         capture_output=True, text=True, env={**__import__("os").environ,
                                                              "HELPERS_CHECKPOINT_DIR": str(tmp_path / "cli")})
    assert run.returncode == 0 and "2 checkpoints and 1 stored evaluations" in run.stdout


def test_a_tampered_or_non_tensor_evaluation_is_refused_by_name_and_nothing_is_written(tmp_path):
    src = _cache(tmp_path / "src", names=("smoke-a-1.pt",))
    entry = _stored_evaluations(src)
    member = f"predictions/smoke/{entry.name}"
    good = {"smoke-a-1.pt": (src / "smoke-a-1.pt").read_bytes(), member: entry.read_bytes()}
    manifest = {n: hashlib.sha256(b).hexdigest() for n, b in good.items()}
    blob = bytearray(good[member])
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(ArchiveError, match=f"{member}.*SHA-256"):
        import_archive(_archive(tmp_path / "t.tar.gz", {**good, member: bytes(blob)}, manifest), directory=tmp_path / "dst")
    buf = io.BytesIO()
    torch.save({"key": "x", "value": "not a tensor"}, buf)
    with pytest.raises(ArchiveError, match=f"{member}.*not a loadable stored evaluation"):
        import_archive(_archive(tmp_path / "s.tar.gz", {**good, member: buf.getvalue()}), directory=tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
