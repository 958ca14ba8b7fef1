"""crds/ is exactly what the models generate, and the check says how to fix it when it is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeiam.api import crdgen

CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"


def test_crds_directory_matches_the_models() -> None:
    problems = crdgen.check_crds(CRDS_DIR)
    assert not problems, (
        "crds/ is out of date with operator/kubeiam/api; run `make crds` and commit the result.\n"
        + "\n".join(problems)
    )


def test_the_check_reports_a_hand_edit_missing_file_and_stray_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--check", str(tmp_path)]) == 0

    edited = tmp_path / "iam.kubeiam.io_serviceaccounts.yaml"
    edited.write_text(edited.read_text().replace("iamsa", "sa"))
    (tmp_path / "iam.kubeiam.io_federationtrusts.yaml").unlink()
    (tmp_path / "iam.kubeiam.io_widgets.yaml").write_text(crdgen.HEADER)
    capsys.readouterr()

    assert crdgen.main(["--check", str(tmp_path)]) == 1
    message = capsys.readouterr().err
    assert "-    - sa\n+    - iamsa" in message
    assert "iam.kubeiam.io_federationtrusts.yaml is missing" in message
    assert "iam.kubeiam.io_widgets.yaml is not generated from the models" in message
    assert "run `make crds`" in message


def test_writing_again_restores_the_files_and_removes_stale_generated_ones(tmp_path: Path) -> None:
    crdgen.write_crds(tmp_path)
    (tmp_path / "iam.kubeiam.io_widgets.yaml").write_text(crdgen.HEADER)
    (tmp_path / "iam.kubeiam.io_serviceaccounts.yaml").write_text("edited by hand\n")
    crdgen.write_crds(tmp_path)
    assert crdgen.check_crds(tmp_path) == []
