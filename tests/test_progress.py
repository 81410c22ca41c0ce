"""Progress of long work: plain lines when the output is not a terminal, a bar when it is."""

from __future__ import annotations

import io
import threading

from flaskserve.progress import Steps, Transfer, size


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_download_to_a_log_is_plain_lines_with_sizes_and_rate() -> None:
    out = io.StringIO()
    with Transfer(3 * 1024 * 1024, "s3://bucket/models/digits/", stream=out, interval=0) as bar:
        threads = [threading.Thread(target=bar.update, args=(1024 * 1024,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    lines = out.getvalue().splitlines()
    assert lines[0] == "s3://bucket/models/digits/: downloading 3.0 MiB"
    assert any("1.0 MiB of 3.0 MiB (33%" in line or "2.0 MiB of 3.0 MiB (66%" in line
               for line in lines[1:-1])
    assert lines[-1].startswith("s3://bucket/models/digits/: 3.0 MiB in ")
    assert "\r" not in out.getvalue()


def test_a_download_on_a_terminal_is_a_bar_and_nothing_to_download_says_nothing() -> None:
    out = Terminal()
    with Transfer(2048, "s3://bucket/m/", stream=out) as bar:
        bar.update(2048)
    assert "\r" in out.getvalue() and "100%" in out.getvalue()
    quiet = io.StringIO()
    with Transfer(0, "s3://bucket/m/", stream=quiet) as bar:
        bar.update(0)
    assert quiet.getvalue() == ""


def test_steps_are_lines_in_a_log_and_a_bar_on_a_terminal() -> None:
    out = io.StringIO()
    with Steps(2, "convert", stream=out) as steps:
        steps.step("converting with skl2onnx")
        steps.step("keeping version 2")
    assert out.getvalue().splitlines() == [
        "convert: [1/2] converting with skl2onnx", "convert: [2/2] keeping version 2"]
    terminal = Terminal()
    with Steps(2, "convert", stream=terminal) as steps:
        steps.step("converting with skl2onnx")
        steps.step("keeping version 2")
    assert "convert" in terminal.getvalue() and "2/2" in terminal.getvalue()


def test_sizes_read_like_people_write_them() -> None:
    assert [size(n) for n in (512, 3500, 12 * 1024 * 1024)] == ["512 B", "3.4 KiB", "12.0 MiB"]


def test_a_failed_download_says_where_it_stopped() -> None:
    out = io.StringIO()
    try:
        with Transfer(4096, "s3://bucket/m/", stream=out) as bar:
            bar.update(1024)
            raise OSError("connection reset")
    except OSError:
        pass
    assert out.getvalue().splitlines()[-1] == "s3://bucket/m/: stopped after 1.0 KiB of 4.0 KiB"
