"""Model files on disk: saving over existing files, links and concurrent loads.

``save`` replaces a file atomically and the way an editor would: the file
keeps its permissions, a read-only file is not replaced, a symbolic link is
written through to its target, and a save that was killed leaves a
temporary file with a recognisable name, removed by the next save of the
same file once it is stale. ``load`` reads the file once, so a save that
replaces it meanwhile cannot make it mix two versions.
"""

import os
import stat
import threading
import time

import pytest
from sklearn.datasets import load_digits

import skanomaly
from skanomaly.persistence import format as file_format
from skanomaly.persistence import load, save
from skanomaly.testing import fast_detector

X_DIGITS, Y_DIGITS = load_digits(return_X_y=True)
TABLE = X_DIGITS[Y_DIGITS == 0][:48]


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _temporary_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ------------------------------------------------- saving over a file


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664], ids=oct)
def test_saving_over_a_file_keeps_its_permissions(tmp_path, umask_022, mode):
    path = tmp_path / "model.ska"
    save(skanomaly.AutoEncoder(latent_dim=4), path)
    assert _mode(path) == 0o644  # a new file: the umask's permissions
    os.chmod(path, mode)
    save(skanomaly.AutoEncoder(latent_dim=5), path)
    assert _mode(path) == mode
    assert load(path).latent_dim == 5


@pytest.mark.parametrize("mode", [0o444, 0o400, 0o555], ids=oct)
def test_a_read_only_file_is_not_replaced(tmp_path, mode):
    # the tests run as root, for whom every file is writable: the rule is
    # the file's own permission bits (no write bit: nobody may write it)
    path = tmp_path / "model.ska"
    save(skanomaly.AutoEncoder(latent_dim=4), path)
    before = path.read_bytes()
    os.chmod(path, mode)
    with pytest.raises(PermissionError, match="read-only") as info:
        save(skanomaly.AutoEncoder(latent_dim=5), path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert _mode(path) == mode
    assert _temporary_files(tmp_path) == []


def test_a_file_we_may_not_write_is_not_replaced(tmp_path, monkeypatch):
    path = tmp_path / "model.ska"
    save(skanomaly.AutoEncoder(latent_dim=4), path)
    before = path.read_bytes()
    real_access = os.access

    def access(target, mode, **kwargs):  # as for another user's 0644 file
        if os.path.realpath(target) == str(path) and mode & os.W_OK:
            return False
        return real_access(target, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(PermissionError, match="not writable"):
        save(skanomaly.AutoEncoder(latent_dim=5), path)
    assert path.read_bytes() == before


def test_saving_through_a_symbolic_link_replaces_its_target(tmp_path):
    versions = tmp_path / "versions"
    versions.mkdir()
    target = versions / "v1.ska"
    save(skanomaly.AutoEncoder(latent_dim=4), target)
    os.chmod(target, 0o640)
    current = tmp_path / "current.ska"
    current.symlink_to(os.path.join("versions", "v1.ska"))
    save(skanomaly.AutoEncoder(latent_dim=5), current)
    assert current.is_symlink()
    assert os.readlink(current) == os.path.join("versions", "v1.ska")
    assert load(target).latent_dim == 5
    assert _mode(target) == 0o640
    # the temporary file was written beside the target, and is gone
    assert _temporary_files(versions) == _temporary_files(tmp_path) == []


def test_a_chain_of_links_and_a_dangling_link(tmp_path):
    target = tmp_path / "v2.ska"
    middle = tmp_path / "middle.ska"
    current = tmp_path / "current.ska"
    middle.symlink_to(target.name)
    current.symlink_to(middle.name)
    save(skanomaly.AutoEncoder(latent_dim=6), current)  # the target is created
    assert current.is_symlink() and middle.is_symlink()
    assert load(target).latent_dim == 6


def test_a_read_only_link_target_is_not_replaced(tmp_path):
    target = tmp_path / "v1.ska"
    save(skanomaly.AutoEncoder(latent_dim=4), target)
    os.chmod(target, 0o444)
    current = tmp_path / "current.ska"
    current.symlink_to(target.name)
    with pytest.raises(PermissionError, match="read-only"):
        save(skanomaly.AutoEncoder(latent_dim=5), current)
    assert load(target).latent_dim == 4 and current.is_symlink()


# ------------------------------------------------- killed saves


def _killed_save(path, detector, monkeypatch):
    """A save killed after writing its temporary file, before the rename."""
    with monkeypatch.context() as patch:
        patch.setattr(file_format.os, "replace", lambda *args: None)
        save(detector, path)


def test_a_killed_save_leaves_a_recognisable_file_that_the_next_save_removes(
    tmp_path, monkeypatch
):
    path = tmp_path / "model.ska"
    detector = fast_detector(skanomaly.AutoEncoder).fit(TABLE)
    save(detector, path)
    _killed_save(path, detector, monkeypatch)
    (left,) = _temporary_files(tmp_path)
    assert file_format.is_temporary_file(left, "model.ska")
    assert left.startswith(".model.ska.") and left.endswith(".skanomaly-tmp")
    assert (tmp_path / left).stat().st_size == path.stat().st_size
    # another file's temporary files and unrelated hidden files are not ours
    assert not file_format.is_temporary_file(left, "other.ska")
    (tmp_path / ".model.ska.notes").write_text("mine")

    save(detector, path)  # too recent: perhaps another process is writing it
    assert left in _temporary_files(tmp_path)

    stale = time.time() - file_format.STALE_TEMPORARY_SECONDS - 60
    os.utime(tmp_path / left, (stale, stale))
    save(detector, path)
    assert _temporary_files(tmp_path) == [".model.ska.notes"]
    assert load(path).latent_dim == detector.latent_dim


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "model.ska"

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(file_format.os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        save(skanomaly.AutoEncoder(), path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------- loading while saving


def test_loading_while_the_file_is_saved_again(tmp_path):
    # load() opened the file twice (the document, then the tensors): a save
    # in between made it mix two versions, "damaged or edited"
    path = tmp_path / "model.ska"
    versions = []
    for seed in (0, 1):
        detector = fast_detector(skanomaly.AutoEncoder, random_state=seed).fit(TABLE)
        save(detector, path)
        versions.append(path.read_bytes())
    assert versions[0] != versions[1]
    stop = threading.Event()

    def resave():
        i = 0
        while not stop.is_set():
            file_format.write_atomically(path, versions[i % 2])
            i += 1

    writer = threading.Thread(target=resave)
    writer.start()
    failures, seeds = [], set()
    try:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            try:
                seeds.add(load(path).random_state)
            except ValueError as exc:
                failures.append(str(exc))
    finally:
        stop.set()
        writer.join()
    assert failures == []
    assert seeds == {0, 1}
