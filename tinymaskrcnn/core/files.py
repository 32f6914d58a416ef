"""Files written atomically: a reader, or a run restarted after a crash, sees the old file or the
new one, never half of one. Checkpoints, downloads, figures and JSON records all go through here.

And files read from outside: ``UnreadableFileError`` is the one error every reader of such a file
raises (docs/untrusted-files.md), and ``parse_json`` reads JSON text into it."""
import json
import os
import reprlib
import uuid
from pathlib import Path


class UnreadableFileError(ValueError):
    """A file from outside (weights, a checkpoint, annotations, an image, a run's records) that
    cannot be read: damaged, truncated, hostile, or not what it claims to be. The message names
    the file and what is wrong in it. A ValueError, so the command line reports it in one line
    with exit code 2."""


class _Brief(reprlib.Repr):
    def repr_OrderedDict(self, x, level):  # reprlib knows dict by its type's name only
        return self.repr_dict(x, level)


_BRIEF = _Brief()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 3, 60, 60


def brief(value):
    """A value read from a file, for a message: a few levels and items of it at most, bounded in
    time and length, as a file's values may nest thousands of levels deep or share one
    container on every branch (whose full repr would take exponential time)."""
    return _BRIEF.repr(value)


def parse_json(data, path, what="JSON", error=UnreadableFileError):
    """The JSON document in ``data`` (bytes or str) of the file ``path``, or ``error`` (an
    UnreadableFileError) naming it: text that is not UTF-8 or not JSON, an integer past
    Python's 4300-digit limit (a ValueError of its own), or nesting deeper than the
    interpreter's recursion limit."""
    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except RecursionError:
        raise error(f"{path}: its {what} nests too deeply to read (lists or objects thousands of levels deep); the "
                    "file is damaged or crafted") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, the integer digit limit
        raise error(f"{path}: its {what} is not JSON ({str(e)[:200]}); the file is damaged or not what "
                    "it claims to be") from None


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
