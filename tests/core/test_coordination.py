"""The file workers share to agree on loads and unloads: whatever it holds, workers boot."""

from __future__ import annotations

import json

import pytest
import requests

from flaskserve.core.coordination import STATE_FILE, RepositoryControl, generations
from flaskserve.core.errors import InvalidInput
from flaskserve.core.repository import ModelRepository
from flaskserve.runtimes.registry import load_model
from letters_model import write_letters

ROW = [0.0] * 64


@pytest.mark.parametrize(
    "content",
    [
        b'{"generation": 3, "models": {"digits": {"act',  # cut short
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"generation": "x", "models": {}}',
        b'{"models": ["digits"]}',
        b'{"models": {"digits": 5}}',
        b'{"models": {"digits": {"action": "unload", "generation": "5"}}}',
        b'{"models": {"digits": {"action": "unload", "generation": 1e400}}}',
    ],
)
def test_a_corrupt_coordination_file_is_ignored_with_a_warning(tmp_path, caplog, content) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with caplog.at_level("WARNING", logger="flaskserve.coordination"):
        assert generations(tmp_path) == {}
    assert "coordination file" in caplog.text


def test_good_entries_beside_bad_ones_are_kept(tmp_path) -> None:
    state = {"generation": 4, "models": {"a": {"action": "load", "generation": 4}, "b": 7}}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    assert generations(tmp_path) == {"a": 4}


def test_a_server_boots_and_serves_over_a_corrupt_coordination_file(
    start_server, digits_repo, tmp_path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / STATE_FILE).write_text('{"generation": 2, "models": {"digits": 5}}')
    server = start_server(
        [str(digits_repo), "--workers", "1"], env={"FLASKSERVE_STATE_DIR": str(state_dir)}
    )
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}
    response = requests.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=10)
    assert response.status_code == 200
    server.wait_for_log("ignoring 1 malformed entries of the coordination file")


def test_a_worker_publishes_over_a_corrupt_file_and_others_follow(digits_repo, tmp_path) -> None:
    (tmp_path / STATE_FILE).write_text('{"generation": "x", "models": 3}')
    first = ModelRepository(digits_repo, load_model)
    first.load_all()
    control = RepositoryControl(
        first, tmp_path, generations(tmp_path), poll_seconds=60, enabled=True
    )
    control.unload("digits")
    assert generations(tmp_path) == {"digits": 1}
    second = ModelRepository(digits_repo, load_model)
    second.load_all()
    RepositoryControl(second, tmp_path, {}, poll_seconds=60)  # a worker started afterwards
    assert second.entry("digits").default is None


def served_with_a_broken_model(root) -> RepositoryControl:
    """`letters` (loads) and `broken` (its entry point does not exist), with model control on."""
    write_letters(root)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "model.toml").write_text('runtime = "python"\nentrypoint = "gone:Gone"\n')
    repository = ModelRepository(root, load_model)
    repository.load_all()
    return RepositoryControl(repository, None, enabled=True)


def test_the_index_lists_every_model_or_the_ready_ones_alone(tmp_path) -> None:
    control = served_with_a_broken_model(tmp_path)
    rows = {row["name"]: row for row in control.index()}
    assert rows["letters"]["state"] == "READY"
    assert rows["broken"]["state"] == "UNAVAILABLE" and rows["broken"]["reason"]
    assert [row["name"] for row in control.index(ready_only=True)] == ["letters"]


def test_loading_a_model_that_cannot_load_is_a_400_that_says_why(tmp_path) -> None:
    control = served_with_a_broken_model(tmp_path)
    reason = control.repository.entry("broken").reason
    with pytest.raises(InvalidInput) as caught:
        control.load("broken")
    assert caught.value.message == f"model 'broken' failed to load: {reason}"
    assert control.load("letters").default is not None
