"""Files written atomically: a reader, or a run restarted after a crash, sees the old file or the
new one, never half of one. Checkpoints, downloads, figures and JSON records all go through here."""
import json
import os
import uuid
from pathlib import Path


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it
    over ``path``. An error or interruption at any point leaves ``path`` as it was (the old
    file, or nothing) and removes the temporary file: the rename is atomic, so ``path``
    never holds a partial file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist; create it first")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # 0o666 and O_EXCL: the umask sets permissions as for a normal file; never reuse a file
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable; directories cannot be opened this way on Windows
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(data, out_file):
    """Write ``data`` as compact JSON to ``out_file`` through atomic_write, creating its folder;
    returns the path as a string."""
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":")).encode("utf-8")
    atomic_write(out_file, lambda f: f.write(text))
    return str(out_file)
