"""The repository serves the right versions and keeps broken models from hurting the rest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flaskserve.core.errors import ModelNotFound, ModelNotReady
from flaskserve.core.repository import ModelRepository
from flaskserve.runtimes.registry import load_model
from python_models import python_toml, write_python_model

ECHO_PY = """\
class Echo:
    def predict(self, x):
        return x * {factor}
"""


def write_echo(root: Path, name: str, versions: dict[int, int], extra: str = "") -> Path:
    """An echo model whose version N multiplies by `versions[N]`; `extra` goes in model.toml."""
    toml = python_toml("echo:Echo", {"x": ("FP32", [-1])}, {"y": ("FP32", [-1])}, extra)
    for version, factor in versions.items():
        write_python_model(root, name, toml, ECHO_PY.format(factor=factor), version=version)
    return root / name


def repository(root: Path) -> ModelRepository:
    repo = ModelRepository(root, load_model)
    repo.load_all()
    return repo


def test_the_highest_version_is_served_by_default(tmp_path: Path) -> None:
    write_echo(tmp_path, "echo", {1: 1, 2: 2, 10: 10})
    repo = repository(tmp_path)
    assert repo.get("echo").version == "10"
    assert [row["version"] for row in repo.index()] == ["10"]
    with pytest.raises(ModelNotFound, match="served versions: 10"):
        repo.get("echo", "2")


def test_version_policy_all_serves_every_version(tmp_path: Path) -> None:
    write_echo(tmp_path, "echo", {1: 1, 2: 2}, extra='[version_policy]\npolicy = "all"\n')
    repo = repository(tmp_path)
    assert repo.get("echo", "1").version == "1"
    assert repo.get("echo").version == "2"


def test_version_policy_specific_serves_only_those_listed(tmp_path: Path) -> None:
    extra = '[version_policy]\npolicy = "specific"\nversions = [1, 3]\n'
    write_echo(tmp_path, "echo", {1: 1, 2: 2, 3: 3}, extra=extra)
    repo = repository(tmp_path)
    assert sorted(s.version for s in repo.entry("echo").version_status()) == ["1", "3"]


def test_latest_n_versions(tmp_path: Path) -> None:
    extra = '[version_policy]\npolicy = "latest"\nnum_versions = 2\n'
    write_echo(tmp_path, "echo", {1: 1, 2: 2, 3: 3}, extra=extra)
    repo = repository(tmp_path)
    assert [row["version"] for row in repo.index()] == ["2", "3"]


def test_a_broken_model_is_unavailable_with_its_reason_and_others_serve(tmp_path: Path) -> None:
    write_echo(tmp_path, "good", {1: 1})
    broken = write_echo(tmp_path, "broken", {1: 1})
    (broken / "1" / "echo.py").write_text("raise RuntimeError('weights are corrupt')\n")
    (tmp_path / "badtoml").mkdir()
    (tmp_path / "badtoml" / "model.toml").write_text("runtime = [")
    repo = repository(tmp_path)
    rows = {row["name"]: row for row in repo.index()}
    assert rows["good"]["state"] == "READY"
    assert rows["broken"]["state"] == "UNAVAILABLE"
    assert "weights are corrupt" in rows["broken"]["reason"]
    assert "not valid TOML" in rows["badtoml"]["reason"]
    with pytest.raises(ModelNotReady, match="weights are corrupt"):
        repo.get("broken")
    assert not repo.is_ready()
    assert repo.get("good").predict_fn is not None


def test_missing_version_folder_and_unknown_runtime_are_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.toml").write_text('runtime = "python"\n')
    odd = write_echo(tmp_path, "odd", {1: 1})
    (odd / "model.toml").write_text('runtime = "tensorflow"\n')
    rows = {row["name"]: row for row in repository(tmp_path).index()}
    assert "no numeric version folder" in rows["empty"]["reason"]
    assert "unknown runtime 'tensorflow'" in rows["odd"]["reason"]


def test_unload_then_load_picks_up_a_new_version(tmp_path: Path) -> None:
    model_dir = write_echo(tmp_path, "echo", {1: 1})
    repo = repository(tmp_path)
    repo.unload("echo")
    with pytest.raises(ModelNotReady, match="unloaded"):
        repo.get("echo")
    assert repo.is_ready(), "an explicitly unloaded model does not make the server unready"
    shutil.copytree(model_dir / "1", model_dir / "2")
    repo.load("echo")
    assert repo.get("echo").version == "2"


def test_unknown_model_names_the_served_ones(tmp_path: Path) -> None:
    write_echo(tmp_path, "echo", {1: 1})
    repo = repository(tmp_path)
    with pytest.raises(ModelNotFound, match="served models: echo"):
        repo.get("nope")
    with pytest.raises(ModelNotFound):
        repo.load("nope")


def test_a_folder_name_differing_from_the_config_name_is_an_error(tmp_path: Path) -> None:
    write_echo(tmp_path, "echo", {1: 1}, extra='name = "other"\n')
    rows = repository(tmp_path).index()
    assert "names the model 'other'" in rows[0]["reason"]


def test_a_model_whose_unload_fails_is_logged_and_unloaded_all_the_same(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = write_echo(tmp_path, "echo", {1: 1})
    (model_dir / "1" / "echo.py").write_text(
        ECHO_PY.format(factor=1) + "\n    def unload(self):\n        raise OSError('disk gone')\n"
    )
    repo = repository(tmp_path)
    repo.unload("echo")
    with pytest.raises(ModelNotReady, match="unloaded"):
        repo.get("echo")
    failure = next(r for r in caplog.records if "unloading model echo version 1" in r.message)
    assert failure.exc_info is not None and "disk gone" in str(failure.exc_info[1])
