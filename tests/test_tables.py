"""Tables in the command line: .csv and .parquet for fit, score and evaluate."""

import csv
import warnings

import numpy as np
import pytest

import skanomaly
from skanomaly.app.cli import main
from skanomaly.app.tables import match_columns, read_table

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

COLUMNS = ["speed", "load", "temp"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """train.csv (normal rows), test.csv and test.parquet (with a label column)."""
    folder = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(size=(120, 3)), columns=COLUMNS)
    train.to_csv(folder / "train.csv", index=False)
    test = pd.DataFrame(
        np.vstack([rng.normal(size=(30, 3)), rng.normal(size=(6, 3)) + 6]),
        columns=COLUMNS,
    )
    test["label"] = np.r_[np.zeros(30, int), np.ones(6, int)]
    test.to_csv(folder / "test.csv", index=False)
    test.to_parquet(folder / "test.parquet")
    return folder, test


@pytest.fixture(scope="module")
def model(tables):
    folder, _ = tables
    path = folder / "gaussian.ska"
    assert main(["fit", "mahalanobis", str(folder / "train.csv"), "-o", str(path)]) == 0
    return path


def _error(argv, capsys):
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skanomaly: error: "), err
    return err[0]


def test_fit_autoencoder_on_a_csv(tables, tmp_path, capsys):
    folder, _ = tables
    out = tmp_path / "ae.ska"
    argv = ["fit", "autoencoder", folder / "train.csv", "-o", out]
    # calibration=training: the network sees all 120 rows, so its scaling is
    # their mean
    params = [
        "-p",
        "max_epochs=2",
        "-p",
        "random_state=0",
        "-p",
        "calibration=training",
    ]
    assert main([*map(str, argv), *params]) == 0
    assert capsys.readouterr().out.strip() == (
        f"Fitted AutoEncoder on 120 samples of shape 3; saved to {out}."
    )
    detector = skanomaly.load(out)
    assert detector.feature_names_in_.tolist() == COLUMNS
    train = pd.read_csv(folder / "train.csv")
    np.testing.assert_allclose(detector.input_center_, train.mean().to_numpy())


def test_fit_records_column_names(model):
    assert skanomaly.load(model).feature_names_in_.tolist() == COLUMNS


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_evaluate_a_table(tables, model, suffix, capsys):
    folder, test = tables
    data = folder / f"test{suffix}"
    assert main(["evaluate", str(model), str(data), "--label-column", "label"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Mahalanobis on {data}: 30 normal, 6 anomalous rows"
    assert lines[1] == "AUROC  1.0000"
    assert lines[4].startswith("FAR    ") and "of 30 normal rows" in lines[4]
    assert len(lines) == 7  # no per-kind lines for rows


def test_outlier_convention_labels_give_the_same_result(tables, model, tmp_path):
    folder, test = tables
    outlier = test.assign(label=np.where(test["label"] == 1, -1, 1))
    outlier.to_csv(tmp_path / "pm.csv", index=False)
    # columns in another order are matched by name
    test[["temp", "label", "speed", "load"]].to_csv(tmp_path / "mixed.csv", index=False)
    outputs = []
    for data in (folder / "test.csv", tmp_path / "pm.csv", tmp_path / "mixed.csv"):
        report = tmp_path / f"{data.stem}.html"
        argv = ["evaluate", model, data, "--label-column", "label", "--report", report]
        assert main([str(a) for a in argv]) == 0
        outputs.append(
            report.read_text().split('id="summary"')[1].split("</section>")[0]
        )
    assert outputs[0] == outputs[1] == outputs[2]


def test_score_a_table(tables, model, tmp_path, capsys):
    folder, test = tables
    features = tmp_path / "features.csv"
    test[COLUMNS].to_csv(features, index=False)
    out = tmp_path / "scores.csv"
    assert main(["score", str(model), str(features), "--csv", str(out)]) == 0
    with open(out, newline="") as file:
        rows = list(csv.reader(file))[1:]
    assert [row[0] for row in rows[:2]] == [f"{features}[0]", f"{features}[1]"]
    expected = skanomaly.load(model).decision_function(test[COLUMNS])
    np.testing.assert_array_equal([float(row[1]) for row in rows], expected)


def test_rows_of_a_npy_file_score_as_the_training_columns(
    tables, model, tmp_path, capsys
):
    # an array has no names: one note instead of scikit-learn's warning
    folder, test = tables
    rows = tmp_path / "rows.npy"
    np.save(rows, test[COLUMNS].to_numpy())
    out = tmp_path / "scores.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["score", str(model), str(rows), "--csv", str(out)]) == 0
    assert "columns are read as the model's training columns" in capsys.readouterr().err
    with open(out, newline="") as file:
        scores = [float(row[1]) for row in list(csv.reader(file))[1:]]
    expected = skanomaly.load(model).decision_function(test[COLUMNS])
    np.testing.assert_array_equal(scores, expected)


def test_score_report_to_stdout_keeps_the_csv_clean(tables, model, tmp_path, capsys):
    folder, test = tables
    features = tmp_path / "features.parquet"
    test[COLUMNS].to_parquet(features)
    report = tmp_path / "scores.html"
    assert main(["score", str(model), str(features), "--report", str(report)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "path,score,label,p_value"
    assert len(captured.out.splitlines()) == 37
    assert captured.err.strip() == f"Wrote the report {report}."
    assert 'id="examples"' in report.read_text()


def test_bad_tables_give_one_line_errors(tables, model, tmp_path, capsys):
    folder, test = tables
    bad = {
        "nan.csv": test.astype({"load": float}).assign(
            load=lambda t: t["load"].mask(t.index.isin([2, 5, 9]))
        ),
        "inf.csv": test.astype({"temp": float}).assign(
            temp=lambda t: t["temp"].mask(t.index.isin([1, 4]), np.inf)
        ),
        "text.csv": test.assign(site="north"),
        "extra.csv": test.assign(humidity=1.0),
        "missing.csv": test.drop(columns="temp"),
        "words.csv": test.assign(label=np.where(test["label"] == 1, "bad", "ok")),
        "one_class.csv": test.assign(label=0),
        "three.csv": test.assign(label=np.arange(len(test)) % 3),
    }
    for name, frame in bad.items():
        frame.to_csv(tmp_path / name, index=False)
    (tmp_path / "empty.csv").write_text("speed,load,temp,label\n")
    report = tmp_path / "r.html"
    cases = [
        ("nan.csv", "missing values in column(s) 'load' (3 rows)"),
        ("inf.csv", "infinite values in column(s) 'temp' (2 rows); clip or drop"),
        ("text.csv", "non-numeric column(s) 'site'"),
        ("extra.csv", "has column(s) 'humidity' the model was not fitted on"),
        ("missing.csv", "lacks the training column(s) 'temp'"),
        ("words.csv", "label column 'label'"),
        ("one_class.csv", "has only the label 0"),
        ("three.csv", "has the labels [0.0, 1.0, 2.0]"),
        ("empty.csv", "has a header but no rows"),
    ]
    for name, message in cases:
        argv = ["evaluate", model, tmp_path / name, "--label-column", "label"]
        line = _error([*argv, "--report", report], capsys)
        assert message in line, (name, line)
    line = _error(["evaluate", model, folder / "test.csv"], capsys)
    assert "needs a .csv or .parquet file and --label-column" in line
    line = _error(
        ["evaluate", model, folder / "test.csv", "--label-column", "y"], capsys
    )
    assert "has no column 'y'" in line
    line = _error(
        ["score", model, tmp_path / "nan.csv", "--csv", tmp_path / "s.csv"], capsys
    )
    assert "missing values" in line
    line = _error(
        ["fit", "mahalanobis", tmp_path / "text.csv", "-o", tmp_path / "m.ska"], capsys
    )
    assert "non-numeric column(s) 'site'" in line
    written = {p.name for p in tmp_path.iterdir()}
    assert not written & {"r.html", "s.csv", "m.ska"}


def test_a_model_fitted_without_names_takes_columns_by_count(tmp_path):
    X = np.random.default_rng(0).normal(size=(30, 2))
    detector = skanomaly.Mahalanobis().fit(X)
    frame = pd.DataFrame(X, columns=["a", "b"])
    np.testing.assert_array_equal(match_columns(frame, detector, "t.csv"), X)
    with pytest.raises(ValueError, match="fitted on 2 columns but 't.csv' has 1"):
        match_columns(frame[["a"]], detector, "t.csv")


def test_read_table_converts_labels_and_types(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,flag,label\n1,true,1\n2,false,-1\n")
    frame, labels = read_table(path, label_column="label")
    assert frame.dtypes.tolist() == [np.float64, np.float64]
    assert frame["flag"].tolist() == [1.0, 0.0]
    assert labels.tolist() == [False, True]  # +1 normal, -1 anomaly


def test_a_csv_without_a_header_row_warns(tmp_path):
    rows = np.random.default_rng(0).normal(size=(5, 3)).round(3)
    path = tmp_path / "noheader.csv"
    pd.DataFrame(rows).to_csv(path, index=False, header=False)
    with pytest.warns(UserWarning, match="header row of .* is all numbers"):
        frame, _ = read_table(path)
    assert len(frame) == 4  # the first row became the names


@pytest.mark.parametrize(
    "header", ["a,b,c", "0,1,2", "1,2,3", "x,2,y"], ids=["names", "0-n", "1-n", "mix"]
)
def test_a_header_row_of_names_or_column_numbers_does_not_warn(tmp_path, header):
    # pandas.DataFrame(X).to_csv() writes the column numbers 0..n-1
    path = tmp_path / "t.csv"
    path.write_text(f"{header}\n0.5,1.5,2.5\n1,2,3\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame, _ = read_table(path)
    assert len(frame) == 2


def test_a_duplicated_number_in_the_header_is_still_a_number(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0.0,0.0,5.5\n1,2,3\n")  # pandas reads "0.0", "0.0.1", "5.5"
    with pytest.warns(UserWarning, match="all numbers"):
        read_table(path)
