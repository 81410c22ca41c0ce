"""Usage metering: exact sums across processes, nothing lost to SIGKILL, nothing counted twice."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import stat
from pathlib import Path

import orjson
import pytest
import requests
from click.testing import CliRunner

from flaskserve.cli import main
from flaskserve.gate import usage_store
from flaskserve.gate.keys import add_key
from flaskserve.gate.metering import Meter
from flaskserve.gate.usage_report import parse_since
from flaskserve.gate.usage_store import fold_journal, read_usage
from raw_http import exchange
from waiting import eventually


def _record(meter: Meter, key: str, count: int, model: str = "digits") -> None:
    for i in range(count):
        meter.record(
            key, model, failed=i % 10 == 0, items=3, bytes_in=100, bytes_out=40, compute_us=1500
        )


def test_flushed_usage_sums_per_key_and_model(tmp_path) -> None:
    meter = Meter(tmp_path / "usage.sqlite3")
    _record(meter, "alice", 20)
    _record(meter, "alice", 5, model="minilm")
    _record(meter, "bob", 7)
    rows = {(row.key_id, row.model): row for row in meter.report()}
    meter.close()
    alice = rows[("alice", "digits")]
    assert (alice.requests, alice.failed, alice.items) == (20, 2, 60)
    assert (alice.bytes_in, alice.bytes_out, alice.compute_us) == (2000, 800, 30000)
    assert rows[("alice", "minilm")].requests == 5
    assert rows[("bob", "digits")].as_dict()["compute_ms"] == 10.5


def _meter_in_child(db: str, key: str, count: int, how: str) -> None:
    meter = Meter(Path(db))
    _record(meter, key, count)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    meter.close()
    os._exit(0)


def _run_children(db: Path, plan: list[tuple[str, int, str]]) -> None:
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_meter_in_child, args=(str(db), key, count, how))
        for key, count, how in plan
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)


def test_processes_writing_at_once_lose_and_double_nothing(tmp_path) -> None:
    db = tmp_path / "usage.sqlite3"
    _run_children(db, [("alice", 300, "close"), ("alice", 200, "close"), ("bob", 150, "close")])
    rows = {row.key_id: row for row in read_usage(db)}
    assert rows["alice"].requests == 500 and rows["alice"].items == 1500
    assert rows["bob"].requests == 150


def test_usage_of_a_process_killed_with_sigkill_is_recovered(tmp_path) -> None:
    db = tmp_path / "usage.sqlite3"
    _run_children(db, [("alice", 123, "kill")])
    assert list(usage_store.journal_dir(db).glob("*.log"))  # left behind by the dead process
    rows = read_usage(db)
    assert [(row.key_id, row.requests) for row in rows] == [("alice", 123)]
    assert not list(usage_store.journal_dir(db).iterdir())
    assert read_usage(db)[0].requests == 123  # folding again adds nothing


def test_a_journal_folded_twice_counts_once(tmp_path) -> None:
    db = tmp_path / "usage.sqlite3"
    meter = Meter(db)
    _record(meter, "alice", 4)
    meter.close()
    conn = usage_store.connect(db)
    journal = usage_store.journal_dir(db) / "crashed-after-commit-1.fold"
    journal.write_bytes(b'[0, "alice", "digits", 1, 0, 3, 100, 40, 1500]\n')
    assert fold_journal(conn, journal) == 1
    journal.write_bytes(b'[0, "alice", "digits", 1, 0, 3, 100, 40, 1500]\n')
    assert fold_journal(conn, journal) == 0
    assert not journal.exists()
    assert usage_store.query(conn)[0].requests == 5
    conn.close()


def test_since_filters_by_minute(tmp_path) -> None:
    db = tmp_path / "usage.sqlite3"
    conn = usage_store.connect(db)
    journal = usage_store.journal_dir(db) / "old-and-new.fold"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_bytes(
        b'[1714521600, "alice", "digits", 1, 0, 1, 10, 10, 10]\n'
        b'[1714608000, "alice", "digits", 1, 0, 2, 10, 10, 10]\n'
    )
    fold_journal(conn, journal)
    assert usage_store.query(conn)[0].requests == 2
    assert usage_store.query(conn, parse_since("2024-05-01T12:00"))[0].items == 2
    conn.close()


def test_since_accepts_durations_and_iso_dates() -> None:
    assert parse_since("30m", now=10_000) == 8_200
    assert parse_since("2d", now=200_000) == 200_000 - 172_800
    assert parse_since("2024-05-01") == 1714521600
    assert parse_since("2024-05-01T02:00+02:00") == 1714521600
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday")


def test_usage_command_prints_a_table_and_csv(tmp_path) -> None:
    db = tmp_path / "usage.sqlite3"
    meter = Meter(db)
    _record(meter, "alice", 3)
    meter.close()
    runner = CliRunner()
    table = runner.invoke(main, ["usage", "--db", str(db), "--since", "1h"])
    assert table.exit_code == 0, table.output
    header, row = table.output.splitlines()[1:3]
    assert header.split() == [
        "KEY",
        "MODEL",
        "REQUESTS",
        "FAILED",
        "ITEMS",
        "BYTES_IN",
        "BYTES_OUT",
        "COMPUTE_MS",
        "PROMPT_TOKENS",
        "COMPLETION_TOKENS",
    ]
    assert row.split() == ["alice", "digits", "3", "1", "9", "300", "120", "4.500", "0", "0"]
    as_csv = runner.invoke(main, ["usage", "--csv"], env={"FLASKSERVE_USAGE_DB": str(db)})
    assert as_csv.output.splitlines() == [
        "key,model,requests,failed,items,bytes_in,bytes_out,compute_ms,prompt_tokens,"
        "completion_tokens",
        "alice,digits,3,1,9,300,120,4.500,0,0",
    ]
    missing = runner.invoke(main, ["usage", "--db", str(tmp_path / "none.sqlite3")])
    assert missing.exit_code != 0 and "no usage database" in missing.output


MAX_SQLITE_INTEGER = 2**63 - 1


def test_values_past_sqlites_range_are_clamped_not_fatal(tmp_path) -> None:
    db = tmp_path / "usage.sqlite3"
    usage_store.connect(db).close()
    folder = usage_store.journal_dir(db)
    folder.mkdir()
    huge = 18446744073709551615
    (folder / "hostile-1.fold").write_bytes(
        b'[60, "mallory", "digits", 1, 1, 0, %d, 0, 0]\n'
        b'[120, "mallory", "digits", 1, 1, 0, %d, 0, 0]\n' % (huge, MAX_SQLITE_INTEGER)
    )
    (folder / "hostile-2.fold").write_bytes(
        b'[60, "mallory", "digits", 1, 0, 0, %d, -5, 0]\n' % MAX_SQLITE_INTEGER
    )
    (rows,) = read_usage(db)
    assert (rows.requests, rows.failed) == (3, 2)
    assert (rows.bytes_in, rows.bytes_out) == (MAX_SQLITE_INTEGER, 0)
    assert not list(folder.iterdir())


def test_a_journal_with_unreadable_records_is_quarantined_and_later_records_count(
    tmp_path, caplog
) -> None:
    db = tmp_path / "usage.sqlite3"
    folder = usage_store.journal_dir(db)
    folder.mkdir(parents=True)
    bad_lines = [
        b'[0, "alice", "digits", 1, 0, 3, 100, 40, 1500, 7, 7, 7]',  # more columns than exist
        b'{"not": "a record"}',
        b"\xff\xfe binary",
        b'[0, "alice", "digits", 1, 0, "three", 100, 40, 1500]',
    ]
    corrupt = folder / "0000-corrupt-1.fold"
    corrupt.write_bytes(
        b"\n".join([b'[0, "alice", "digits", 1, 0, 3, 100, 40, 1500]', *bad_lines]) + b"\n"
    )
    meter = Meter(db)
    _record(meter, "alice", 4)
    with caplog.at_level("WARNING", logger="flaskserve.usage"):
        meter.close()
        rows = read_usage(db)
    assert [(row.key_id, row.requests, row.items) for row in rows] == [("alice", 5, 15)]
    quarantined = [path for path in folder.iterdir() if path.suffix == ".bad"]
    assert len(quarantined) == 1
    assert quarantined[0].read_bytes().splitlines() == bad_lines
    assert "quarantined" in caplog.text and str(quarantined[0]) in caplog.text
    assert read_usage(db)[0].requests == 5  # the quarantined lines are never folded again


def test_usage_database_side_files_and_folders_are_private(tmp_path) -> None:
    db = tmp_path / "state" / "billing" / "usage.sqlite3"
    previous = os.umask(0o022)
    try:
        meter = Meter(db)
        _record(meter, "alice", 2)
        meter.flush()
        files = [
            db,
            db.with_name(db.name + "-wal"),
            db.with_name(db.name + "-shm"),
            *usage_store.journal_dir(db).iterdir(),
        ]
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
        meter.close()
    finally:
        os.umask(previous)
    assert len(files) >= 4 and set(modes.values()) == {0o600}, modes
    for folder in (db.parent.parent, db.parent, usage_store.journal_dir(db)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_a_huge_content_length_is_billed_as_read_and_usage_keeps_answering(
    start_server, digits_repo, tmp_path
) -> None:
    keys_file = tmp_path / "keys.toml"
    alice, ops = add_key(keys_file, "alice"), add_key(keys_file, "ops", admin=True)
    server = start_server([str(digits_repo), "--workers", "1", "--auth", str(keys_file)])
    infer = (
        "POST /v2/models/digits/infer HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\n"
    )
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}
    )
    # The largest length the engine passes on to the app (2**63 - 1): the app refuses it by
    # the claim, and bills only the bytes it read. Beyond it Granian answers 431 itself, with
    # no body, before the app (docs/security.md); nothing is billed for that one.
    hostile = f"{infer}Authorization: Bearer {alice}\nContent-Length: {2**63 - 1}"
    status, answer = exchange(server.port, hostile, body)
    assert status == 413 and "error" in answer
    beyond = f"{infer}Authorization: Bearer {alice}\nContent-Length: {2**64 - 1}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(beyond.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        assert sock.recv(4096).split(b" ", 2)[1].startswith(b"4")
    honest = f"{infer}Authorization: Bearer {alice}\nContent-Length: {len(body)}"
    assert exchange(server.port, honest, body)[0] == 200

    def alice_rows() -> list[dict]:
        report = requests.get(f"{server.url}/v2/usage", headers={"X-API-Key": ops}, timeout=10)
        assert report.status_code == 200, report.text
        return [row for row in report.json()["usage"] if row["key"] == "alice"]

    # Each request is metered once its response is written.
    rows = eventually(
        lambda: (found := alice_rows()) and found[0]["requests"] == 2 and found,
        message="both of alice's requests are metered",
    )
    assert rows and (rows[0]["requests"], rows[0]["failed"]) == (2, 1)
    assert rows[0]["bytes_in"] == len(body)
    server.stop()
    printed = CliRunner().invoke(main, ["usage", "--csv", "--db", str(tmp_path / "usage.sqlite3")])
    assert printed.exit_code == 0, printed.output
    (row,) = [row for row in printed.output.splitlines() if row.startswith("alice,")]
    assert row.split(",")[1:6] == ["digits", "2", "1", "1", str(len(body))]


def test_usage_command_refuses_an_empty_auth_setting() -> None:
    result = CliRunner().invoke(main, ["usage"], env={"FLASKSERVE_AUTH": ""})
    assert result.exit_code != 0
    assert "FLASKSERVE_AUTH is set but empty" in result.output


def test_tokens_are_metered_and_old_databases_and_journals_still_fold(tmp_path) -> None:
    import sqlite3

    db = tmp_path / "usage.sqlite3"
    old = sqlite3.connect(db)  # the table as it was before tokens were metered
    old.execute(
        "CREATE TABLE usage (minute INTEGER NOT NULL, key_id TEXT NOT NULL, model TEXT NOT "
        "NULL, requests INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, items "
        "INTEGER NOT NULL DEFAULT 0, bytes_in INTEGER NOT NULL DEFAULT 0, bytes_out INTEGER "
        "NOT NULL DEFAULT 0, compute_us INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (minute, "
        "key_id, model)) WITHOUT ROWID"
    )
    old.execute("INSERT INTO usage VALUES (60, 'carol', 'tiny', 1, 0, 1, 10, 10, 5)")
    old.commit()
    old.close()
    folder = usage_store.journal_dir(db)
    folder.mkdir()
    (folder / "old-1.fold").write_bytes(b'[60, "carol", "tiny", 1, 0, 1, 10, 10, 5]\n')
    meter = Meter(db)
    meter.record("carol", "tiny", False, 1, 10, 10, 5, prompt_tokens=7, completion_tokens=30)
    meter.close()
    rows = {(r.key_id, r.model): r for r in usage_store.read_usage(db)}
    carol = rows[("carol", "tiny")]
    assert carol.requests == 3
    assert (carol.prompt_tokens, carol.completion_tokens) == (7, 30)
    assert carol.as_dict()["completion_tokens"] == 30
