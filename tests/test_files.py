"""files.atomic_write: the one way the package replaces a file (checkpoints, downloads, figures,
JSON records, the metrics log)."""
import json

import pytest

from tinymaskrcnn.core import files


@pytest.mark.parametrize("interruption", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path, interruption):
    path = tmp_path / "record.json"
    files.write_json_atomic({"old": 1}, path)

    def half_then_fail(f):
        f.write(b'{"new": ')
        raise interruption

    with pytest.raises(type(interruption)):
        files.atomic_write(path, half_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
    assert json.loads(path.read_text()) == {"old": 1}
    with pytest.raises(type(interruption)):  # without an old file, nothing appears under the name
        files.atomic_write(tmp_path / "new.json", half_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_the_temporary_is_hidden_beside_the_file_and_unique(tmp_path):
    seen = []

    def write(f):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        f.write(b"x")

    files.atomic_write(tmp_path / "metrics.jsonl", write)
    files.atomic_write(tmp_path / "metrics.jsonl", write)
    # engine.remove_stale_temporaries looks for .<name>*.tmp in the run folder
    (first,), (second,) = seen[0], [n for n in seen[1] if n != "metrics.jsonl"]
    assert first.startswith(".metrics.jsonl.") and first.endswith(".tmp")
    assert second.startswith(".metrics.jsonl.") and second != first
    assert (tmp_path / "metrics.jsonl").read_bytes() == b"x"


def test_write_json_atomic_creates_the_folder_and_a_missing_folder_is_named(tmp_path):
    out = files.write_json_atomic([1, "a"], tmp_path / "a" / "b.json")
    assert json.loads(open(out).read()) == [1, "a"]
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        files.atomic_write(tmp_path / "absent" / "c.bin", lambda f: f.write(b""))
