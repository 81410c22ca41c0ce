"""The keys file: hashes only, constant-time lookup, reload on change, and the keys commands."""

from __future__ import annotations

import stat
import threading

import pytest
from click.testing import CliRunner

from flaskserve.cli import main
from flaskserve.gate import keys as keys_module
from flaskserve.gate.keys import KeyFileError, KeyStore, add_key, parse_keys, revoke_key


def test_added_key_is_stored_only_as_its_hash_in_a_private_file(tmp_path) -> None:
    path = tmp_path / "keys.toml"
    key = add_key(path, "alice", models=("digits", "minilm"), rate=5, burst=10)
    text = path.read_text()
    assert key.startswith("fsk_") and len(key) > 40
    assert key not in text and key[4:] not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = parse_keys(text)["alice"]
    assert entry.models == ("digits", "minilm") and not entry.admin
    assert (entry.rate, entry.bucket_size) == (5.0, 10.0)


def test_store_finds_the_key_and_rejects_anything_else(tmp_path) -> None:
    path = tmp_path / "keys.toml"
    alice = add_key(path, "alice")
    ops = add_key(path, "ops", admin=True)
    store = KeyStore(path)
    assert store.authenticate(alice).id == "alice"
    assert store.authenticate(ops).admin
    assert store.authenticate(alice + "x") is None
    assert store.authenticate("") is None


def test_store_sees_added_and_revoked_keys_without_restart(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(keys_module, "RELOAD_INTERVAL", 0.0)
    path = tmp_path / "keys.toml"
    alice = add_key(path, "alice")
    store = KeyStore(path)
    bob = add_key(path, "bob")
    assert store.authenticate(bob).id == "bob"
    revoke_key(path, "alice")
    assert store.authenticate(alice) is None
    assert store.authenticate(bob).id == "bob"


def test_a_broken_edit_keeps_the_previous_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(keys_module, "RELOAD_INTERVAL", 0.0)
    path = tmp_path / "keys.toml"
    alice = add_key(path, "alice")
    store = KeyStore(path)
    path.write_text(path.read_text() + "\n[keys.bob\n")
    assert store.authenticate(alice).id == "alice"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[keys."a"]\nhash = "md5:00"\n', "hash must be"),
        ('[keys."a"]\nhash = "sha256:' + "0" * 64 + '"\nadmin = "yes"\n', "admin must be"),
        ('[keys."a"]\nhash = "sha256:' + "0" * 64 + '"\nrate = -1\n', "rate must be"),
        ('[keys."a b"]\nhash = "sha256:' + "0" * 64 + '"\n', "ids are letters"),
        ("[keys\n", "not valid TOML"),
    ],
)
def test_malformed_entries_are_named(text, message) -> None:
    with pytest.raises(KeyFileError, match=message):
        parse_keys(text)


def test_duplicate_and_invalid_ids_are_refused(tmp_path) -> None:
    path = tmp_path / "keys.toml"
    add_key(path, "alice")
    with pytest.raises(KeyFileError, match="already has"):
        add_key(path, "alice")
    with pytest.raises(KeyFileError, match="not a usable key id"):
        add_key(path, "al ice")


def test_keys_commands_print_the_key_once_list_and_revoke(tmp_path) -> None:
    path = tmp_path / "keys.toml"
    runner = CliRunner()
    added = runner.invoke(
        main, ["keys", "add", "alice", "--file", str(path), "--models", "digits", "--rate", "3"]
    )
    assert added.exit_code == 0, added.output
    key = added.stdout.strip().splitlines()[0]
    assert KeyStore(path).authenticate(key).id == "alice"
    runner.invoke(main, ["keys", "add", "ops", "--admin"], env={"FLASKSERVE_AUTH": str(path)})
    listed = runner.invoke(main, ["keys", "list", "--file", str(path)])
    assert listed.exit_code == 0
    assert "alice" in listed.output and "digits" in listed.output and "admin" in listed.output
    assert key not in listed.output
    revoked = runner.invoke(main, ["keys", "revoke", "alice", "--file", str(path)])
    assert revoked.exit_code == 0
    assert list(KeyStore(path).keys()) == ["ops"]
    again = runner.invoke(main, ["keys", "revoke", "alice", "--file", str(path)])
    assert again.exit_code != 0 and "no key 'alice'" in again.output


def test_keys_file_is_replaced_whole_so_readers_never_see_part_of_it(tmp_path) -> None:
    path = tmp_path / "keys.toml"
    runner = CliRunner()
    for name in ("alice", "bob"):
        assert runner.invoke(main, ["keys", "add", name, "--file", str(path)]).exit_code == 0
    before = path.read_bytes()
    with open(path, "rb") as opened_before:  # as a server reloading at that moment has it
        assert runner.invoke(main, ["keys", "revoke", "alice", "--file", str(path)]).exit_code == 0
        assert opened_before.read() == before  # the old file, whole, not rewritten in place

    seen: list[bytes] = []
    done = threading.Event()

    def read_in_a_loop() -> None:
        while not done.is_set():
            seen.append(path.read_bytes())

    reader = threading.Thread(target=read_in_a_loop)
    reader.start()
    try:
        for i in range(20):
            add_key(path, f"k{i}")
            revoke_key(path, f"k{i}")
    finally:
        done.set()
        reader.join()
    assert seen and all(set(parse_keys(text.decode())) >= {"bob"} for text in seen)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.toml"]  # no staging file left


def test_a_reload_that_finds_no_keys_keeps_the_previous_ones(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(keys_module, "RELOAD_INTERVAL", 0.0)
    path = tmp_path / "keys.toml"
    alice = add_key(path, "alice")
    bob = add_key(path, "bob")
    store = KeyStore(path)
    path.write_text("")  # truncated by a botched copy or edit
    with caplog.at_level("ERROR", logger="flaskserve.keys"):
        assert store.authenticate(alice).id == "alice"
    assert "holds no keys" in caplog.text and "keeping the 2 keys" in caplog.text
    path.write_text(path.read_text() + "# still empty\n")
    assert store.authenticate(bob).id == "bob"

    carol = add_key(path, "carol")  # keys again: the reload takes them
    assert store.authenticate(alice) is None and store.authenticate(carol).id == "carol"
    revoke_key(path, "carol")  # revoking the last key is meant: it takes effect
    assert store.authenticate(carol) is None
