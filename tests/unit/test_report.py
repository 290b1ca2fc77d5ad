"""ponoskit/report.py: counts, items, phases, where the JSON goes. No server."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from ponoskit.report import Report


def test_report_counts_and_items():
    report = Report("unit", dry_run=True)
    report.count("moved")
    report.count("moved", 4)
    report.add("failed", {"key": "a"})
    report.add("failed", {"key": "b"})
    report.add("note", "not counted", also_count=False)
    data = report.to_dict(extra="yes")
    assert data["job"] == "unit" and data["dry_run"] is True and data["extra"] == "yes"
    assert data["counts"] == {"moved": 5, "failed": 2}
    assert data["items"] == {"failed": [{"key": "a"}, {"key": "b"}], "note": ["not counted"]}
    assert data["items_truncated"] == []


def test_report_limit_truncates_the_list_but_not_the_count():
    report = Report("unit")
    for i in range(25):
        report.add("unrecognized", f"key-{i}", limit=10)
    report.add("conflicts", "c", limit=10)
    data = report.to_dict()
    assert data["items"]["unrecognized"] == [f"key-{i}" for i in range(10)]
    assert data["counts"]["unrecognized"] == 25
    assert data["items_truncated"] == ["unrecognized"]  # conflicts stayed under its limit


def test_report_counts_are_exact_across_threads():
    report = Report("unit")

    def work():
        for _ in range(2000):
            report.count("n")
            report.add("items", 1, limit=5)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert report.counts["n"] == 16_000 and report.counts["items"] == 16_000
    assert len(report.items["items"]) == 5


def test_report_phase_durations():
    report = Report("unit")
    with report.phase("scan", bucket="b") as record:
        time.sleep(0.05)
        record["keys"] = 3
    with pytest.raises(ZeroDivisionError):
        with report.phase("broken"):
            1 / 0
    phases = report.to_dict()["phases"]
    assert [p["name"] for p in phases] == ["scan", "broken"]  # recorded even when it fails
    assert phases[0]["bucket"] == "b" and phases[0]["keys"] == 3
    assert 0.04 <= phases[0]["seconds"] < 5
    assert 0 <= phases[1]["seconds"] < phases[0]["seconds"]


def test_report_writes_json_to_a_file(tmp_path):
    report = Report("unit", endpoint="aws")
    report.count("moved", 2)
    report.add("failed", {"key": "été/ü +%#?", "reason": ValueError("x")})  # not JSON: str()
    report.error("one thing failed")
    path = tmp_path / "report.json"
    report.write(str(path), exit_code=1)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["job"] == "unit" and data["endpoint"] == "aws" and data["exit_code"] == 1
    assert data["counts"] == {"failed": 1, "moved": 2}
    assert data["items"]["failed"][0]["key"] == "été/ü +%#?"
    assert data["errors"] == ["one thing failed"]
    assert isinstance(data["seconds"], (int, float)) and data["seconds"] >= 0
    time.strptime(data["started_at"], "%Y-%m-%dT%H:%M:%SZ")


def test_report_writes_json_to_stdout(capsys):
    report = Report("unit")
    report.count("scanned", 3)
    report.write("-")
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == {"scanned": 3}


def test_report_without_destination_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Report("unit").write(None)
    Report("unit").write("")
    assert capsys.readouterr().out == "" and os.listdir(tmp_path) == []
