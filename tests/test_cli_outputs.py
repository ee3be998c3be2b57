"""Where the command line writes: never over its inputs, atomically, escaped.

Issue 22, items 5 (outputs over inputs), 6 (names that are not UTF-8; a
failed write keeps the older output) and 18 (CSV formula injection).
"""

import csv
import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skanomaly
from skanomaly.app.cli import main
from skanomaly.app.cli.outputs import _atomic_file, _csv_text, _escaped
from skanomaly.testing import fast_detector

REPO = Path(skanomaly.__file__).resolve().parents[1]


def _one_line_error(argv, capsys):
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def images(tmp_path):
    """imgs/00.png .. 05.png (8x8 grey) and an AutoEncoder fitted on them."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(60, 100, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    X = np.stack([np.asarray(Image.open(p))[None] for p in sorted(folder.iterdir())])
    model = tmp_path / "m.ska"
    skanomaly.save(fast_detector(skanomaly.AutoEncoder).fit(X), model)
    return model, folder


@pytest.fixture
def table(tmp_path):
    """rows.csv (3 columns), lab.csv (with a label column y), a model on rows."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.assign(y=[0] * 25 + [1] * 5).to_csv(tmp_path / "lab.csv", index=False)
    model = tmp_path / "m.ska"
    skanomaly.save(skanomaly.Mahalanobis().fit(frame), model)
    return model, tmp_path / "rows.csv", tmp_path / "lab.csv"


# ------------------------------------------------- item 5: outputs over inputs


def test_report_and_csv_never_replace_a_table(table, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model, rows, lab = table
    before = _snapshot(tmp_path)
    for argv in [
        ["score", model, rows, "--report", rows],  # each returned 0
        ["evaluate", model, lab, "--label-column", "y", "--report", lab],
        ["score", model, rows, "--csv", rows],
        ["score", model, rows, "--report", model],
        ["evaluate", model, lab, "--label-column", "y", "--report", model],
    ]:
        line = _one_line_error(argv, capsys)
        assert "Refusing to write --" in line and "would overwrite the" in line
    assert _snapshot(tmp_path) == before


def test_two_outputs_of_one_command_are_refused(table, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model, rows, _ = table
    out = tmp_path / "out.csv"
    out.write_text("older\n")
    argv = ["score", model, rows, "--csv", out, "--report", out]
    line = _one_line_error(argv, capsys)
    assert "it is also the --csv output" in line
    assert out.read_text() == "older\n"


def test_outputs_never_land_among_image_inputs(images, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model, folder = images
    before = _snapshot(tmp_path)
    overwrite, inside = "would overwrite the input", "inside the input folder"
    for argv, message in [
        (["score", model, folder, "--report", folder / "00.png"], overwrite),
        (["fit", "autoencoder", folder, "-o", folder / "01.png"], overwrite),
        (["score", model, folder, "--maps", folder / "maps"], inside),
    ]:
        line = _one_line_error(argv, capsys)
        assert "Refusing to write" in line and message in line, line
    assert _snapshot(tmp_path) == before


def test_maps_never_replace_an_unreadable_input(images, tmp_path, capsys):
    model, folder = images
    (folder / "a.png").write_bytes(b"not a png")  # skipped, but still an input
    before = _snapshot(tmp_path)
    argv = ["score", model, folder, "--maps", folder, "--skip-unreadable"]
    line = _one_line_error(argv, capsys)
    assert "Refusing to write --maps" in line
    # a map and the CSV at the same path
    maps = tmp_path / "maps"
    maps.mkdir()
    argv = ["score", model, folder, "--maps", maps, "--csv", maps / "00.png"]
    assert "it is also the --csv output" in _one_line_error(argv, capsys)
    assert _snapshot(tmp_path) == before


def test_links_to_an_input_are_the_input(table, tmp_path, capsys):
    model, rows, _ = table
    os.symlink(rows, tmp_path / "soft.csv")
    os.link(model, tmp_path / "hard.csv")
    before = _snapshot(tmp_path)
    for out in ["soft.csv", "hard.csv"]:
        line = _one_line_error(["score", model, rows, "--csv", tmp_path / out], capsys)
        assert "would overwrite the" in line
    assert _snapshot(tmp_path) == before


def test_export_never_replaces_its_model(table, tmp_path, capsys):
    model, _, _ = table
    before = model.read_bytes()
    line = _one_line_error(["export", model, "-o", model, "--force"], capsys)
    assert "Refusing to write -o" in line and "would overwrite the" in line
    card_over_model = tmp_path / "m"  # its model card is m.json
    model.rename(tmp_path / "m.json")
    line = _one_line_error(
        ["export", tmp_path / "m.json", "-o", card_over_model, "--force"], capsys
    )
    assert "Refusing to write the model card" in line
    assert (tmp_path / "m.json").read_bytes() == before


# ------------------------------------------- item 6: names that are not UTF-8


def _latin1_image(folder):
    """A copy of folder/00.png named b'caf\\xe9.png' (not UTF-8)."""
    name = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    with open(name, "wb") as file:
        file.write((folder / "00.png").read_bytes())
    return os.fsdecode(name)


def test_names_that_are_not_utf8_are_escaped(images, tmp_path, capsys):
    model, folder = images
    try:
        _latin1_image(folder)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "scores.csv"
    out.write_text("older\n")
    assert main(["score", str(model), str(folder), "--csv", str(out)]) == 0
    names = [row[0] for row in csv.reader(out.read_text("utf-8").splitlines())]
    assert f"{folder}/caf\\xe9.png" in names and len(names) == 8
    if importlib.util.find_spec("matplotlib"):
        page = tmp_path / "report.html"
        assert main(["score", str(model), str(folder), "--report", str(page)]) == 0
        assert "caf\\xe9.png" in page.read_text("utf-8")
    capsys.readouterr()
    assert main(["score", str(model), str(folder)]) == 0  # to stdout
    assert "caf\\xe9.png" in capsys.readouterr().out


def test_a_failed_write_keeps_the_older_csv(images, tmp_path, monkeypatch, capsys):
    model, folder = images
    out = tmp_path / "scores.csv"
    out.write_text("older\n")
    os.chmod(out, 0o640)

    class Failing:
        def __init__(self, file):
            self.file = file

        def writerow(self, row):
            self.file.write("path,")

        def writerows(self, rows):
            raise UnicodeEncodeError("utf-8", "\udce9", 0, 1, "surrogates")

    monkeypatch.setattr(csv, "writer", Failing)
    assert main(["score", str(model), str(folder), "--csv", str(out)]) == 1
    assert out.read_text() == "older\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "m.ska", out.name]
    monkeypatch.undo()
    assert main(["score", str(model), str(folder), "--csv", str(out)]) == 0
    assert out.read_text().startswith("path,score,label")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # the mode is kept


def test_escaped():
    assert _escaped("caf\udce9.png") == "caf\\xe9.png"
    assert _escaped(b"caf\xe9.png") == "caf\\xe9.png"
    assert _escaped("café.png") == "café.png"
    assert _escaped("\ud800") == "\\ud800"  # not from a file name at all


def test_atomic_file_writes_through_a_symlink(tmp_path):
    target = tmp_path / "v1.csv"
    target.write_text("v1\n")
    os.symlink(target, tmp_path / "current.csv")
    with _atomic_file(tmp_path / "current.csv") as file:
        file.write("v2\n")
    assert (tmp_path / "current.csv").is_symlink()
    assert target.read_text() == "v2\n"
    with pytest.raises(RuntimeError), _atomic_file(target) as file:
        file.write("half")
        raise RuntimeError
    assert target.read_text() == "v2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.csv", "v1.csv"]


# ------------------------------------------------- item 18: formula injection


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_text_cells_are_never_formulas(start):
    assert _csv_text(f"{start}HYPERLINK(1)") == f"'{start}HYPERLINK(1)"
    assert _csv_text(f"a{start}b") == f"a{start}b"


def test_score_neutralises_formula_file_names(images, tmp_path, monkeypatch, capsys):
    model, folder = images
    (tmp_path / "=cmd").mkdir()
    for name in ["=1+1.png", "+1.png", "-1.png", "@SUM(1).png"]:
        (tmp_path / "=cmd" / name).write_bytes((folder / "00.png").read_bytes())
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["score", str(model), "=cmd"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert sorted(row[0] for row in rows[1:]) == [
        "'=cmd/+1.png",
        "'=cmd/-1.png",
        "'=cmd/=1+1.png",
        "'=cmd/@SUM(1).png",
    ]
    assert all(float(row[1]) == float(row[1]) for row in rows[1:])  # numbers raw


def test_an_error_naming_a_latin1_file_is_one_printable_line(tmp_path, capsys):
    missing = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9"))
    argv = ["fit", "mahalanobis", missing, "-o", tmp_path / "m"]
    line = _one_line_error(argv, capsys)
    assert "caf\\udce9" in line and "does not exist" in line
    line.encode("utf-8")  # printable


def test_latin1_names_through_a_pipe(images, tmp_path):
    # stdout of a real process encodes strictly: raw names stopped the CSV
    model, folder = images
    try:
        _latin1_image(folder)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "skanomaly", "score", str(model), str(folder)],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert b"caf\\xe9.png," in result.stdout
