import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import skanomaly
from skanomaly.cli import main

REPO = Path(skanomaly.__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    """Run ``python -m skanomaly ARGS`` in a fresh interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-m", "skanomaly", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_console_script_is_declared():
    (script,) = [
        ep for ep in entry_points(group="console_scripts") if ep.name == "skanomaly"
    ]
    assert script.value == "skanomaly.cli:main"
    assert script.load() is main


def test_list_through_the_entry_point():
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["detector", "class", "package"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["autoencoder"] == ["skanomaly.autoencoder.AutoEncoder", "skanomaly"]
    assert rows["vae"] == ["skanomaly.vae.VAE", "skanomaly"]
    assert set(rows) == set(skanomaly.list_detectors())


@pytest.mark.parametrize("command", ["list", "benchmark"])
def test_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"usage: skanomaly {command}" in capsys.readouterr().out


def test_benchmark_through_the_entry_point():
    result = run_cli(
        "benchmark",
        "--detectors",
        "autoencoder",
        "--epochs",
        "1",
        "--normal-classes",
        "0",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("skanomaly benchmark: scikit-learn digits")
    header = lines.index(next(line for line in lines if line.startswith("detector")))
    assert lines[header].split()[:2] == ["detector", "AUROC"]
    (row,) = lines[header + 1 :]
    name, auroc, *_ = row.split()
    assert name == "autoencoder" and 0.0 <= float(auroc) <= 1.0


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["benchmark", "--detectors", "nope"], 1, "Unknown detector 'nope'"),
        (["benchmark", "--epochs", "0"], 2, "expected a positive integer"),
        (["benchmark", "--normal-classes", "12"], 1, "must be digits 0..9"),
        (["benchmark", "--data", "/no/such/folder"], 1, "does not exist"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_bad_input_gives_a_one_line_error(argv, status, message, capsys):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
