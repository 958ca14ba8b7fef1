"""crds/ is exactly what the models generate, and the check says how to fix it when it is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeiam.api import crdgen

REPO_ROOT = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO_ROOT / "crds"
# deploy/ holds a copy: kustomize loads no file from outside its directory.
DEPLOY_CRDS_DIR = REPO_ROOT / "deploy" / "crds"


def test_crds_directory_matches_the_models() -> None:
    problems = crdgen.check_crds(CRDS_DIR)
    assert not problems, (
        "crds/ is out of date with operator/kubeiam/api; run `make crds` and commit the result.\n"
        + "\n".join(problems)
    )


def test_the_copy_in_deploy_matches_the_models_and_is_installed() -> None:
    # Besides the generated files, deploy/crds holds its kustomization and kopf's peering CRD,
    # so only the generated ones are compared.
    stale = []
    for name, expected in crdgen.render_crds().items():
        path = DEPLOY_CRDS_DIR / name
        if not path.exists() or path.read_text(encoding="utf-8") != expected:
            stale.append(name)
    assert not stale, f"deploy/crds is out of date ({', '.join(stale)}); run `make crds`."
    kustomization = (DEPLOY_CRDS_DIR / "kustomization.yaml").read_text(encoding="utf-8")
    listed = {line.strip().removeprefix("- ") for line in kustomization.splitlines()}
    missing = sorted(set(crdgen.render_crds()) - listed)
    assert not missing, f"deploy/crds/kustomization.yaml does not list {missing}"


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
