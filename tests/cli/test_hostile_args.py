"""Every value option of the commands that read a run, given hostile values: each run ends in
a result or a clear error (exit 0 or 2), never a traceback, and the run folder is unchanged."""

from __future__ import annotations

import argparse

import pytest

from hirex.cli.main import build_parser, main
from tests.cli.test_cli import SMALL

HOSTILE = [
    "",
    " ",
    "{dir}",
    "{dir}/missing/file",
    "-1",
    "0",
    "1e30",
    "99999999999999999999",
    "\udcff",
]
# Options whose value is the run itself, or that start long work whatever the value.
SKIP = {"--run", "--users-file", "--all-users"}


def _value_options(command: str) -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(
        a.option_strings[0]
        for a in sub.choices[command]._actions
        if a.option_strings
        and a.nargs != 0
        and a.option_strings[0] not in SKIP
        and a.option_strings[0] != "-h"
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile-run")
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("command", ["eval", "retrieve"])
def test_hostile_values_end_in_a_clear_error(run_dir, tmp_path, command, capsys, monkeypatch):
    # An --output of "-1" is a file named -1: written here, not in the repository.
    monkeypatch.chdir(tmp_path)
    base = ["--users", "1"] if command == "retrieve" else []
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    failures = []
    for option in _value_options(command):
        for raw in HOSTILE:
            value = raw.format(dir=tmp_path)
            argv = [command, "--run", str(run_dir), *base, option, value]
            try:
                code = main(argv)
            except SystemExit as err:  # argparse: usage error, exit 2
                code = err.code
            except Exception as err:  # noqa: BLE001
                failures.append(f"{argv[3:]}: {type(err).__name__}: {err}")
                continue
            err_text = capsys.readouterr().err
            if code not in (0, 2) or "Traceback" in err_text:
                failures.append(f"{argv[3:]}: exit {code}")
    assert not failures, "\n".join(failures)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == before
