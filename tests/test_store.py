"""The results file: resume index, appends, torn-line repair; the summary and the lock."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from batcher.errors import LockError
from batcher.store import ResultsStore, RunLock, write_json_atomically


def append_all(store: ResultsStore, records: list[dict]) -> None:
    for record in records:
        store.append(record)


def test_index_knows_succeeded_ids(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.open()
    append_all(store, [
        {"id": "a", "status": "succeeded", "response": {"x": 1}},
        {"id": "b", "status": "failed", "error": {"kind": "server"}},
        {"id": "c \"quoted\" \u00e9", "status": "succeeded"},
    ])
    store.close()

    reopened = ResultsStore(tmp_path)
    state = reopened.open()

    assert state.succeeded == 2
    assert reopened.has_succeeded("a")
    assert reopened.has_succeeded("c \"quoted\" \u00e9")
    assert not reopened.has_succeeded("b")
    assert not reopened.has_succeeded("d")


def test_lines_in_other_key_order_are_read(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text(json.dumps({"status": "succeeded", "id": "x"}) + "\n")

    store = ResultsStore(tmp_path)
    store.open()

    assert store.has_succeeded("x")


def test_torn_last_line_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"id": "a", "status": "succeeded"}) + "\n" + '{"id": "b", "status": "succ')

    store = ResultsStore(tmp_path)
    state = store.open()
    store.append({"id": "b", "status": "succeeded"})
    store.close()

    assert state.repaired_bytes == len('{"id": "b", "status": "succ')
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]


def test_results_file_is_private(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.open()
    store.close()

    assert stat.S_IMODE(os.stat(tmp_path / "results.jsonl").st_mode) == 0o600


def test_summary_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_json_atomically(target, {"n": 1})
    write_json_atomically(target, {"n": 2, "text": "caf\u00e9"})

    assert json.loads(target.read_text(encoding="utf-8")) == {"n": 2, "text": "caf\u00e9"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_lock_names_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from batcher.store import RunLock; "
         "lock = RunLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); time.sleep(30)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockError) as caught:
            RunLock(tmp_path).acquire()
        assert str(holder.pid) in caught.value.message
    finally:
        holder.kill()
        holder.wait()

    # The kernel released the dead holder's lock: the next run is not blocked by a stale file.
    with RunLock(tmp_path):
        pass


def test_fsync_at_most_once_per_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    now = [100.0]
    monkeypatch.setattr("batcher.store.os.fsync", synced.append)
    monkeypatch.setattr("batcher.store.time.monotonic", lambda: now[0])
    store = ResultsStore(tmp_path, fsync_interval_s=1.0)
    store.open()

    store.append({"id": "a", "status": "succeeded"})
    for offset_s in (0.2, 0.5, 0.9):
        now[0] = 100.0 + offset_s
        store.append({"id": f"at {offset_s}", "status": "succeeded"})
    syncs_within_interval = len(synced)
    now[0] = 101.0
    store.append({"id": "late", "status": "succeeded"})
    syncs_after_interval = len(synced)
    store.close()

    assert syncs_within_interval == 1
    assert syncs_after_interval == 2
    assert len(synced) == 3
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 5
