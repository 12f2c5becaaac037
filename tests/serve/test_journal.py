"""The write-ahead journal: round trip, torn tails, damage, versions, resets."""

from __future__ import annotations

import json

import pytest

from hirex.serve.journal import Journal, JournalError


def test_records_round_trip_with_sequence_numbers(tmp_path):
    j = Journal(tmp_path / "u.log")
    assert j.append({"op": "put", "id": 7, "emb": [0.5, -1.25]}) == 1
    assert j.append({"op": "delete", "id": "x"}) == 2
    j.close()
    again = Journal(tmp_path / "u.log")
    assert again.records == [
        {"seq": 1, "op": "put", "id": 7, "emb": [0.5, -1.25]},
        {"seq": 2, "op": "delete", "id": "x"},
    ]
    assert again.last_seq == 2


def test_a_torn_last_record_is_dropped_and_the_file_truncated(tmp_path):
    path = tmp_path / "u.log"
    j = Journal(path)
    j.append({"op": "delete", "id": 1})
    j.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'1234abcd {"seq":2,"op":"del')  # a crash mid-append
    again = Journal(path)
    assert [r["seq"] for r in again.records] == [1]
    assert path.read_bytes() == whole
    assert again.append({"op": "delete", "id": 2}) == 2  # appends continue cleanly
    again.close()
    assert [r["id"] for r in Journal(path).records] == [1, 2]


@pytest.mark.parametrize("damage", ["checksum", "json", "gap"])
def test_a_damaged_record_before_the_end_is_an_error_naming_the_line(tmp_path, damage):
    path = tmp_path / "u.log"
    j = Journal(path)
    for i in range(3):
        j.append({"op": "delete", "id": i})
    j.close()
    lines = path.read_text().splitlines(keepends=True)
    if damage == "checksum":
        lines[2] = lines[2].replace('"id":1', '"id":9')
    elif damage == "json":
        lines[2] = lines[2][:9] + "{not json\n"
    else:
        del lines[2]
    path.write_text("".join(lines))
    with pytest.raises(JournalError, match=r"u\.log:3: damaged journal record"):
        Journal(path)


def test_another_format_or_version_is_refused(tmp_path):
    path = tmp_path / "u.log"
    path.write_text("hello\n")
    with pytest.raises(JournalError, match="not a hirex-updates journal"):
        Journal(path)
    path.write_text(json.dumps({"format": "hirex-updates", "version": 99, "after_seq": 0}) + "\n")
    with pytest.raises(JournalError, match="version 99"):
        Journal(path)


def test_reset_keeps_later_records_and_the_sequence_goes_on(tmp_path):
    path = tmp_path / "u.log"
    j = Journal(path)
    for i in range(4):
        j.append({"op": "delete", "id": i})
    j.reset(applied_seq=3)
    assert [r["seq"] for r in j.records] == [4]
    j.reset(applied_seq=4)
    assert j.records == [] and j.last_seq == 4
    assert j.append({"op": "delete", "id": 9}) == 5
    j.close()
    again = Journal(path)
    assert [r["seq"] for r in again.records] == [5] and again.last_seq == 5
