"""``crema-fast probe``: embed -> probe on real PTB-XL records, the printed table, the report files."""

import json

import pytest

from crema_fast.cli import main
from tests.test_eval.stores import convert_ptbxl, wfdb_store


@pytest.fixture(scope="module")
def store(shared_data, tmp_path_factory) -> str:
    # all 500 records: with fewer, fold 10 lacks some superclass (records 1-120 have no HYP there)
    return convert_ptbxl(shared_data, tmp_path_factory.mktemp("probe") / "ptbxl500.zarr")


@pytest.fixture(scope="module")
def embeddings(store, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("probe_emb") / "random.zarr")
    assert main(["embed", store, "--random-init", "--preset", "tiny", "--out", out, "--no-progress",
                 "--device", "cpu"]) == 0
    return out


def test_probe_prints_and_writes_the_report(store, embeddings, tmp_path, capsys):
    capsys.readouterr()
    assert main(["probe", embeddings, "--store", store, "--labels", "superdiagnostic", "--n-boot", "200",
                 "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "linear probe on superdiagnostic, PTB-XL strat_fold" in out and "none (random init)" in out
    assert "train 352, val 72, test 64" in out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["label_set"] == "superdiagnostic" and report["checkpoint"] is None
    assert report["store"] == store and report["split"].startswith("PTB-XL strat_fold")
    assert report["metrics"]["n"] == 64 and f"{report['metrics']['macro_auroc']:.3f}" in out
    assert (tmp_path / "rep" / "report_roc.png").stat().st_size > 1000


def test_probe_patient_split_and_errors(store, embeddings, capsys, shared_data, tmp_path):
    assert main(["probe", embeddings, "--store", store, "--split", "patient", "--n-boot", "50"]) == 0
    assert "patient-disjoint, seed 0" in capsys.readouterr().out
    assert main(["probe", embeddings, "--store", store, "--split", "record", "--n-boot", "50"]) == 0
    assert "record-disjoint" in capsys.readouterr().out
    # a label set with an empty class in a split
    assert main(["probe", embeddings, "--store", store, "--labels", "subdiagnostic"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crema-fast probe: error: class ") and "split" in err and "\n" not in err
    # embeddings of another store
    other = convert_ptbxl(shared_data, tmp_path / "s40.zarr", 40)
    scp = str(shared_data / "ptbxl" / "scp_statements.csv")
    assert main(["probe", embeddings, "--store", other, "--scp-statements", scp]) == 2
    assert "same store" in capsys.readouterr().err


def test_store_without_labels_and_without_patient_ids(tmp_path, capsys):
    for name, comments in (("nolabels", [[], []]), ("nopatients", [["Dx: 426783006"], ["Dx: 164889003"]] * 4)):
        (tmp_path / name).mkdir()
        store = wfdb_store(tmp_path / name, comments)
        emb = str(tmp_path / name / "e.zarr")
        assert main(["embed", store, "--random-init", "--preset", "tiny", "--out", emb, "--no-progress",
                     "--device", "cpu"]) == 0
        capsys.readouterr()
        assert main(["probe", emb, "--store", store, "--labels", "snomed"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        assert ("holds no labels" if name == "nolabels" else "patient_id: 8 of 8 rows have none") in err
