"""The per-process counter files behind the statistics extension, read as another process would."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from flaskserve.observability.shared_counters import CounterTable, read_directory


def _count_in_child(directory: str, requests: int) -> None:
    table = CounterTable(4, directory)
    for _ in range(requests):
        table.add(("m", "digits", "1"), 0, 1, 250)


def test_each_process_file_is_read_and_summed_by_any_reader(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_count_in_child, args=(str(tmp_path), n)) for n in (3, 5)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    tables = list(read_directory(str(tmp_path), 4))
    assert sorted(table[("m", "digits", "1")][:2] for table in tables) == [(3, 750), (5, 1250)]


def test_a_table_grows_past_its_first_mapping_and_keeps_every_value(tmp_path: Path) -> None:
    table = CounterTable(4, str(tmp_path))
    for size in range(3000):  # about 200 KB of records: the file is remapped larger
        table.add(("b", "digits", "1", str(size)), 0, 1, size)
    table.add(("m", "digits", "1"), 2, 7, 9, latest=(0, 42))
    [read] = read_directory(str(tmp_path), 4)
    assert len(read) == 3001
    assert read[("b", "digits", "1", "2999")] == (1, 2999, 0, 0)
    assert read[("m", "digits", "1")] == (42, 0, 7, 9)


def test_a_process_reusing_a_pid_counts_on_from_the_file(tmp_path: Path) -> None:
    first = CounterTable(4, str(tmp_path))
    first.add(("m", "digits", "1"), 0, 2, 10)
    again = CounterTable(4, str(tmp_path))  # same pid: the same file
    again.add(("m", "digits", "1"), 0, 1, 5)
    [read] = read_directory(str(tmp_path), 4)
    assert read[("m", "digits", "1")] == (3, 15, 0, 0)


def test_without_a_folder_the_counters_stay_in_memory() -> None:
    table = CounterTable(4)
    table.add(("m", "digits", "1"), 0, 1, 5, latest=(3, 100))
    table.add(("m", "digits", "1"), 0, 1, 5, latest=(3, 50))
    assert table.snapshot() == {("m", "digits", "1"): (2, 10, 0, 100)}
