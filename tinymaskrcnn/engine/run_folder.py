"""The run folder: when a folder holds a run, the lock that keeps one training in it at a time,
and clearing what an earlier run or a killed write left there.

A run folder is never reused silently. Training into a folder that holds a run (any of
``RUN_ENTRIES``) is refused before any work, unless it resumes that run or overwrites it; to
overwrite deletes every entry the old run wrote, so nothing is left describing a model that
no longer exists. While a training runs, it holds an exclusive lock on the folder's
``.train.lock`` (``RunLock``, an advisory ``flock``: the kernel releases it when the process
ends, however it ends, so a killed run leaves no stale lock), and a second training into the
same folder is refused with the first one's process id.
"""
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder is still checked for a run
    fcntl = None

CHECKPOINT = "checkpoint.npz"
LOCK = ".train.lock"
# what a training run writes into its folder: if any is there, the folder holds a run
RUN_ENTRIES = (CHECKPOINT, "config.json", "metrics.jsonl", "metrics.json", "results.json", "losses.png", "predictions",
               "eval", "evaluate")
# the files a run folder's writers replace through files.atomic_write, whose temporary file beside
# each is the hidden .<name>.<random>.tmp
RUN_FILES = (CHECKPOINT, "metrics.jsonl", "config.json", "metrics.json", "results.json", "losses.png")


def run_entries(out_dir):
    """The names of ``RUN_ENTRIES`` present in ``out_dir``."""
    return [name for name in RUN_ENTRIES if (Path(out_dir) / name).exists()]


def holder(out_dir):
    """The process id written in ``out_dir``'s lock file while another process holds it (0 when
    it wrote none yet), or None when no process trains in ``out_dir``."""
    path = Path(out_dir) / LOCK
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)
    return None


def _in_use(out_dir, pid):
    return FileExistsError(f"{out_dir} is in use: another training (process {pid or 'unknown'}) is writing into it; "
                           "wait for it to end, or train into another out_dir (--out-dir)")


def check_run_folder(out_dir, resume, overwrite):
    """Before any work: ``out_dir`` must not be in use by another training, and its entries
    must suit the run (``check_entries``)."""
    pid = holder(out_dir)
    if pid is not None:
        raise _in_use(out_dir, pid)
    check_entries(out_dir, resume, overwrite)


def check_entries(out_dir, resume, overwrite):
    """``out_dir`` must hold a checkpoint to resume (``resume``), and otherwise no run unless
    ``overwrite`` says to delete it. (Checked again once the folder is locked: another process
    may have finished a run there while this one loaded.)"""
    out_dir = Path(out_dir)
    if resume:
        if not (out_dir / CHECKPOINT).is_file():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {out_dir / CHECKPOINT}")
    elif not overwrite:
        found = run_entries(out_dir)
        if found:
            raise FileExistsError(f"{out_dir} holds a run ({', '.join(found)}): continue it with resume=True "
                                  "(--resume), train into another out_dir (--out-dir), or start afresh with "
                                  "overwrite=True (--overwrite), which deletes the old run's files")


def clear_run(out_dir):
    """Delete every entry an earlier run wrote into ``out_dir`` (``RUN_ENTRIES``) and nothing else."""
    for name in run_entries(out_dir):
        path = Path(out_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_stale_temporaries(out_dir):
    """Delete the hidden ``.<file>...tmp`` files that a run killed while writing left behind
    (a checkpoint's can be 150 MB); an interrupted write that is not killed removes its own."""
    for name in RUN_FILES:
        for tmp in Path(out_dir).glob(f".{name}*.tmp"):
            tmp.unlink(missing_ok=True)


class RunLock:
    """The exclusive lock of a run folder, held from ``acquire`` to ``release`` (both safe to
    call when there is nothing to do); a folder in use is a FileExistsError naming the
    process that holds it. The lock file holds that process's id and is removed on release."""

    def __init__(self, out_dir):
        self.path, self.fd = Path(out_dir) / LOCK, None

    def acquire(self):
        if fcntl is None:
            return
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise _in_use(self.path.parent, int(text) if text.isdigit() else 0) from None
            # the holder before us may have removed the file between our open and our lock:
            # then the lock is on a file no one else can find, so open the path again
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
                self.fd = fd
            else:
                os.close(fd)

    def release(self):
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked, so no one locks a file about to go
            os.close(self.fd)
            self.fd = None
