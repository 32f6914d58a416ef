"""Hostile files through a reader, each in a forked child with a memory cap and a timeout.

**What a case's outcome can be** (``CLASSES``):

- ``loaded``: the reader returned.
- ``clean``: it raised a ``ValueError`` (the project's kind of error; ``CheckpointError`` is one)
  whose message names the file (``Reader.names``).
- ``other``: any other exception, or a ValueError that does not name the file.
- ``memory``: it needed more memory than the bound, 10 x the file's size + 200 MB + what the
  reader may decode (``Reader.allowance``): a peak resident size above the bound, or a
  MemoryError anywhere in the escaping exception's chain (an allocation past the child's cap, a
  safety net far above the bound; whether the reader then turned the MemoryError into a clean
  error does not matter, its sizes were not checked before allocating).
- ``timeout``: it ran past the time limit.
- ``crash``: the child died by a signal (a segfault inside a C extension, say) or exited
  without a word.
- ``code``: the file made the reader do what only code does: start a process (``os.system``,
  ``subprocess``, ``os.exec*``, ``os.posix_spawn``), load a library (``ctypes.dlopen``), or resolve
  a pickle global through pickle's own ``find_class`` (the restricted unpickler overrides it).
  An audit hook (``sys.addaudithook``) sees these events and refuses them, so that a payload that
  gets through is reported and never runs on the fuzzing machine.

The first two are the promise; the rest are findings, each keyed by (class, exception type,
where: the innermost frame in the project and the innermost frame of all, function by
function) so that one bug met a thousand times is one finding.

**How a case runs.** The campaign process loads the readers' modules and seeds, then forks one
child per case: the child starts with everything imported, so what it spends is the reading
alone. In the child: stdout and stderr go to /dev/null; ``faulthandler`` writes the Python stack
to a file on a fatal signal and at the time limit (and then ends the child), which gives a
timeout or a crash its place in the code; the peak resident size is reset
(``/proc/self/clear_refs``) so that ``VmHWM`` measures the case, and that peak against the bound
is what decides the class. The address space is capped too (``RLIMIT_AS``), but only as a
safety net for the machine, at what the child has plus twice the bound plus ``SAFETY``:
address space counts mappings never touched (the parent's heap, a thread's malloc arena), so a
cap at the bound itself would fail allocations well under it, more often the more the parent
holds, and a case's class would depend on the load. The
parent reads the result from a pipe and kills the child (SIGKILL) if it outlives the limit by
``GRACE`` seconds (C code that holds the GIL still gets its stack dumped: faulthandler's
watchdog does not need the GIL).

Linux only (fork, /proc, RLIMIT_AS).
"""
import collections
import contextlib
import dataclasses
import faulthandler
import gzip
import hashlib
import json
import os
import random
import re
import resource
import select
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

from . import mutators as m

if sys.platform != "linux":  # fork, /proc and RLIMIT_AS
    raise ImportError("the fuzzing harness runs on Linux only")

CLASSES = ("loaded", "clean", "other", "memory", "timeout", "crash", "code")
CLEAN_ERRORS = (ValueError,)  # the project's kind of error (CheckpointError and the others subclass it)
GOOD = ("loaded", "clean")
MB = 2 ** 20
SAFETY = 512 * MB      # the address-space cap's margin past twice the bound (a safety net, see above)
GRACE = 5.0            # seconds past the limit before the parent kills a child faulthandler could not end
# audit events that only code does (``code`` outcome): prefixes of the event names
CODE_EVENTS = ("os.system", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.Popen", "ctypes.dlopen",
               "pickle.find_class")
REPO = Path(__file__).resolve().parents[2]


class _CodeEvent(Exception):
    """Raised by the child's audit hook: the event it names was refused."""


def _refuse_code(events):
    """An audit hook that records (event, arguments, place) of ``CODE_EVENTS`` in ``events`` and
    refuses them (an exception from a hook aborts the audited action)."""
    def hook(event, args):
        if event.startswith(CODE_EVENTS):
            frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_stack()[:-1]]
            events.append((event, repr(args)[:300], *_where(frames)))
            raise _CodeEvent(event)
    return hook


def bound(reader, path, size):
    """The most memory reading ``size`` bytes may take: 10 x size + 200 MB + the reader's allowance."""
    return 10 * size + 200 * MB + reader.allowance(path, size)


@dataclasses.dataclass
class Outcome:
    cls: str
    type: str = ""       # the escaping exception's type (or the signal)
    message: str = ""
    where: str = ""      # innermost project frame and innermost frame, 'file:function'
    line: str = ""       # the same with line numbers
    memory: int = 0      # peak resident bytes the case added
    bound: int = 0
    size: int = 0
    seconds: float = 0.0

    def key(self):
        return (self.cls, self.type, self.where)


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------

def _short(filename):
    """A frame's file as 'tinymaskrcnn/...', 'numpy/...' or 'tests/...': stable across machines."""
    text = str(filename).replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/", "/lib/python3"):
        if marker in text:
            tail = text.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" and "/" in tail else tail
    root = str(REPO).replace("\\", "/") + "/"
    return text[len(root):] if text.startswith(root) else text


def _where(frames):
    """(where, line) of [(file, line, function)] innermost last: the innermost frame of the
    project's own code (tinymaskrcnn/, kernels/, a test's stub reader) and the innermost of all."""
    if not frames:
        return "", ""
    own = [f for f in frames if _short(f[0]).startswith(("tinymaskrcnn/", "kernels/", "tests/"))]
    picked = ([own[-1]] if own else []) + ([frames[-1]] if not own or own[-1] != frames[-1] else [])
    where = " > ".join(f"{_short(f)}:{func}" for f, _, func in picked)
    line = " > ".join(f"{_short(f)}:{n} {func}" for f, n, func in picked)
    return where, line


def _type_name(error):
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _describe(error, names):
    """The child's account of an exception: its class, type, message and place."""
    chain, seen, link = [], set(), error
    while link is not None and id(link) not in seen:
        chain.append(link)
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    memory = next((e for e in chain if isinstance(e, MemoryError)), None)
    focus = memory if memory is not None else error
    try:
        message = str(error)[:600]
    except Exception:
        message = f"<str() of the {type(error).__name__} failed>"
    where, line = _where([(f.filename, f.lineno, f.name) for f in traceback.extract_tb(focus.__traceback__)])
    kind = _type_name(error) + ("" if memory is None or memory is error else " <- MemoryError")
    if memory is not None:
        cls = "memory"
    elif isinstance(error, CLEAN_ERRORS) and any(name in message for name in names):
        cls = "clean"
    else:
        cls = "other"
    return {"cls": cls, "type": kind, "message": message, "where": where, "line": line}


def _status_kb(field):
    with open("/proc/self/status") as f:
        for row in f:
            if row.startswith(field + ":"):
                return int(row.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _same_headroom(frames=1000):
    """Let the reader nest ``frames`` calls deep, however deep the caller is: a file that nests just
    deeply enough to raise RecursionError in a campaign must raise it in the test that replays it."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    sys.setrecursionlimit(depth + frames)


def _child(reader, path, limit, timeout, result_fd, trace_path):
    """Read ``path`` with ``reader`` under the caps; write the outcome as JSON to ``result_fd``."""
    try:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            trace = open(trace_path, "w")
            faulthandler.enable(trace)
            faulthandler.dump_traceback_later(timeout, exit=True, file=trace)
            warnings.simplefilter("ignore")
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            cap = _status_kb("VmSize") + 2 * limit + SAFETY
            resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # the peak resident size starts again from here
                start = _status_kb("VmRSS")
            except OSError:  # a kernel that does not let it be reset: count what grows past the parent's peak
                start = _status_kb("VmHWM")
        except BaseException as error:  # the harness's own failure, not the reader's
            os.write(result_fd, (json.dumps({"harness_error": repr(error)}) + "\n").encode())
            raise
        os.write(result_fd, (json.dumps({"start": start}) + "\n").encode())
        _same_headroom()
        events = []
        sys.addaudithook(_refuse_code(events))
        try:
            reader.run(path)
            result = {"cls": "loaded"}
        except BaseException as error:
            try:
                result = _describe(error, reader.names(path))
            except BaseException as failure:  # a MemoryError or RecursionError while describing
                result = {"cls": "memory" if isinstance(error, MemoryError) else "other", "type": _type_name(error),
                          "message": f"(describing it failed: {_type_name(failure)})", "where": "", "line": ""}
        if events:  # whatever the reader did after, this is what matters
            event, args, where, line = events[0]
            result.update(cls="code", type=event, message=f"{event}{args}", where=where, line=line)
        result["memory"] = _status_kb("VmHWM") - start
        os.write(result_fd, (json.dumps(result) + "\n").encode())
    finally:
        os._exit(0)


def _trace(trace_path):
    """(kind, where, line) from faulthandler's dump: 'timeout' or 'fatal', and the stack's place."""
    try:
        text = Path(trace_path).read_text(errors="replace")
    except OSError:
        return None, "", ""
    frames = [(f, int(n), func) for f, n, func in re.findall(r'File "(.+?)", line (\d+) in (\S+)', text)]
    where, line = _where(frames[::-1])  # faulthandler lists the most recent call first
    kind = "timeout" if "Timeout (" in text else ("fatal" if "Fatal Python error" in text else None)
    return kind, where, line


def run_case(reader, path, timeout=10.0):
    """The ``Outcome`` of ``reader.run(path)`` in a forked child (see the module docstring)."""
    path = Path(path)
    size = path.stat().st_size
    limit = bound(reader, path, size)
    trace_path = path.with_name(path.name + ".trace")
    trace_path.unlink(missing_ok=True)
    read_fd, write_fd = os.pipe()
    began = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(reader, str(path), limit, timeout, write_fd, str(trace_path))
    os.close(write_fd)
    received, killed = b"", False
    deadline = began + timeout + GRACE
    while True:
        ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        received += chunk
    os.close(read_fd)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - began
    lines = [json.loads(row) for row in received.decode().splitlines() if row.strip()]
    if lines and "harness_error" in lines[0]:
        raise RuntimeError(f"the fuzzing child could not start: {lines[0]['harness_error']}")
    start = lines[0]["start"] if lines else 0
    peak = max(usage.ru_maxrss * 1024 - start, 0)
    outcome = Outcome("crash", bound=limit, size=size, seconds=seconds)
    if len(lines) == 2:
        result = lines[1]
        outcome = Outcome(**{k: result.get(k, "") for k in ("cls", "type", "message", "where", "line")},
                          memory=max(result["memory"], 0), bound=limit, size=size, seconds=seconds)
        if outcome.memory > limit and outcome.cls != "memory":
            outcome.message = f"peak {outcome.memory / MB:.0f} MB over the bound {limit / MB:.0f} MB; " \
                              f"then {outcome.cls}: {outcome.message}"
            outcome.cls = "memory"
        return outcome
    kind, where, line = _trace(trace_path)
    outcome.memory, outcome.where, outcome.line = peak, where, line
    if kind == "timeout" or killed:
        outcome.cls, outcome.type = "timeout", ""
        outcome.message = f"still running after {timeout:g} s"
    elif os.WIFSIGNALED(status):
        outcome.type = signal.Signals(os.WTERMSIG(status)).name
        outcome.message = f"the child died by {outcome.type}"
    else:
        outcome.type = f"exit {os.WEXITSTATUS(status)}"
        outcome.message = f"the child exited ({outcome.type}) without a result"
    return outcome


def run_bytes(reader, data, path, timeout=10.0):
    """``run_case`` on ``data`` written to ``path``."""
    Path(path).write_bytes(data)
    return run_case(reader, path, timeout)


# ---------------------------------------------------------------------------------------------
# A campaign
# ---------------------------------------------------------------------------------------------

def make_case(reader, seeds, rng, errors):
    """A seed with one to three mutations: structure-aware (``reader.mutate``) where it applies,
    else generic (``mutators.GENERIC``, or a splice of two seeds)."""
    data = rng.choice(seeds)[1]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        mutated = None
        if rng.random() < reader.structure_share:
            try:
                mutated = reader.mutate(data, rng)
            except m.NotApplicable:
                pass
            except Exception as e:  # a mutator's own failure on a file earlier mutations broke: counted
                errors[f"{type(e).__name__}: {str(e)[:80]}"] += 1
        if mutated is None:
            mutated = m.splice(data, rng.choice(seeds)[1], rng) if len(seeds) > 1 and rng.random() < 0.1 \
                else rng.choice(m.GENERIC)(data, rng)
        data = mutated
    return data[:m.MAX_BYTES]


@dataclasses.dataclass
class Finding:
    outcome: Outcome
    data: bytes
    first_case: int
    count: int = 0
    minimized: bytes = b""


def _slug(reader, outcome):
    key = json.dumps([reader.name, *outcome.key()])
    text = f"{outcome.cls}-{outcome.type.split('.')[-1]}-{outcome.where.split(' > ')[0].rsplit(':', 1)[-1]}"
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:70] + "-" + hashlib.sha1(key.encode()).hexdigest()[:6]


def warm_up(reader, seeds, path):
    """Read every seed once in this process, so that what a reader imports or caches on first use
    (pycocotools, Pillow's plugins, numba's dispatchers) is there before the children fork: a
    child then pays for its case alone, in memory and time."""
    for _, data in seeds:
        Path(path).write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                reader.run(str(path))
            except ValueError:  # a seed made to fail cleanly (the checkpoint's)
                pass


@contextlib.contextmanager
def _capped_self(headroom=2 * 1024 * MB):
    """This process's address space capped at what it has plus ``headroom`` while it mutates:
    a mutation that would blow it up (parsing a hostile file to change it) fails with a
    MemoryError, counted among the mutators' errors, instead of drawing the kernel's OOM killer
    onto a shared machine. The children raise their own cap (the hard limit stays as it was)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _status_kb("VmSize") + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def campaign(reader, cases, seed, out, timeout=10.0, minimize_seconds=30.0, regressions=None, log=None):
    """Run ``cases`` mutated files through ``reader``; returns the report (also written to
    ``out/<reader>.json``), with every finding minimized into ``out/findings/<reader>/`` and,
    given ``regressions`` (a folder), added there with its index (``save_regressions``).
    Case ``i`` of seed ``seed`` is the same file on every run."""
    out = Path(out)
    work = out / "work" / reader.name
    work.mkdir(parents=True, exist_ok=True)
    reader.prepare(work)
    seeds = reader.seeds(work)
    case_path = work / f"case{reader.suffix}"
    warm_up(reader, seeds, case_path)
    seed_outcomes = {name: run_bytes(reader, data, case_path, timeout).cls for name, data in seeds}
    counts, errors, findings = collections.Counter(), collections.Counter(), {}
    worst_ratio, worst_fraction = (0.0,), (0.0,)
    began = time.monotonic()
    with _capped_self():
        for i in range(cases):
            rng = random.Random(f"{seed}:{reader.name}:{i}")
            data = make_case(reader, seeds, rng, errors)
            outcome = run_bytes(reader, data, case_path, timeout)
            counts[outcome.cls] += 1
            seen = (i, len(data), round(outcome.memory / MB, 1))
            worst_ratio = max(worst_ratio, (outcome.memory / max(len(data), 1), *seen))
            worst_fraction = max(worst_fraction, (outcome.memory / outcome.bound, *seen))
            if outcome.cls not in GOOD:
                finding = findings.setdefault(outcome.key(), Finding(outcome, data, i))
                finding.count += 1
                if len(data) < len(finding.data):
                    finding.data, finding.outcome = data, outcome
            if log and (i + 1) % 100 == 0:
                log(f"{reader.name}: {i + 1}/{cases} cases, {dict(counts)}, {len(findings)} findings, "
                    f"{time.monotonic() - began:.0f} s")
        fuzz_seconds = time.monotonic() - began
        folder = out / "findings" / reader.name
        folder.mkdir(parents=True, exist_ok=True)
        for finding in findings.values():
            finding.minimized = minimize(reader, finding.data, finding.outcome.key(), case_path, timeout,
                                         minimize_seconds)
            slug = _slug(reader, finding.outcome)
            (folder / f"{slug}{reader.suffix}").write_bytes(finding.minimized)
            (folder / f"{slug}.original{reader.suffix}").write_bytes(finding.data)
    report = {
        "reader": reader.name, "cases": cases, "seed": seed, "timeout_s": timeout,
        "outcomes": {cls: counts[cls] for cls in CLASSES},
        "max_memory_to_size": dict(zip(("ratio", "case", "size", "memory_mb"), (round(worst_ratio[0], 1),
                                                                               *worst_ratio[1:]))),
        "max_fraction_of_bound": dict(zip(("fraction", "case", "size", "memory_mb"), (round(worst_fraction[0], 3),
                                                                                     *worst_fraction[1:]))),
        "seeds": seed_outcomes, "mutator_errors": dict(errors), "fuzz_seconds": round(fuzz_seconds, 1),
        "findings": [{"class": f.outcome.cls, "type": f.outcome.type, "where": f.outcome.where,
                      "line": f.outcome.line, "message": f.outcome.message, "count": f.count,
                      "first_case": f.first_case, "size": len(f.data), "minimized_size": len(f.minimized),
                      "file": f"findings/{reader.name}/{_slug(reader, f.outcome)}{reader.suffix}"}
                     for f in sorted(findings.values(), key=lambda f: -f.count)],
    }
    (out / f"{reader.name}.json").write_text(json.dumps(report, indent=1))
    if regressions is not None:
        save_regressions(regressions, reader, findings.values(), seed)
    return report


# ---------------------------------------------------------------------------------------------
# Minimizing and keeping findings
# ---------------------------------------------------------------------------------------------

def _json_candidates(data):
    """Smaller JSON documents than ``data``: each list halved, each object key dropped."""
    try:
        doc = json.loads(data)
    except Exception:
        return
    for path, value in list(m.json_nodes(doc)):
        if isinstance(value, list) and len(value) > 1:
            parts = (value[:len(value) // 2], value[len(value) // 2:], value[:1])
        elif isinstance(value, dict) and path:
            parts = tuple({k: v for k, v in value.items() if k != key} for key in value)
        else:
            continue
        for part in parts:
            copy = json.loads(data)
            yield json.dumps(m.json_set(copy, path, part)).encode()


def _zip_candidates(data):
    """The archive without one entry at a time (rebuilt), when it is one zipfile reads."""
    try:
        entries = m.zip_entries(data)
    except m.NotApplicable:
        return
    for k in range(len(entries)):
        yield m.build_zip(entries[:k] + entries[k + 1:])


def minimize(reader, data, key, path, timeout=10.0, seconds=30.0):
    """A smaller file with the same outcome key: whole JSON values and zip entries dropped where
    the file parses, then ever smaller byte ranges cut (delta debugging), for at most ``seconds``."""
    deadline = time.monotonic() + seconds

    def same(candidate):
        return time.monotonic() < deadline and run_bytes(reader, candidate, path, timeout).key() == key

    shrunk = True
    while shrunk and time.monotonic() < deadline:
        shrunk = False
        for candidate in (*_json_candidates(data), *_zip_candidates(data)):
            if len(candidate) < len(data) and same(candidate):
                data, shrunk = candidate, True
                break
    chunk = len(data) // 2
    while chunk >= 1 and time.monotonic() < deadline:
        at = 0
        while at < len(data) and time.monotonic() < deadline:
            candidate = data[:at] + data[at + chunk:]
            if candidate and same(candidate):
                data = candidate
            else:
                at += chunk
        chunk //= 2
    return data


INDEX = "index.json"
COMPRESS_OVER = 64 * 1024  # kept findings larger than this are stored gzipped (they are repetitive)


def read_kept(path):
    """The bytes of a kept finding (``name.gz``: gzipped)."""
    data = Path(path).read_bytes()
    return gzip.decompress(data) if str(path).endswith(".gz") else data


def save_regressions(folder, reader, findings, seed):
    """Each finding's minimized file in ``folder/<reader>/`` (gzipped past COMPRESS_OVER) and an
    entry of ``folder/index.json``: its reader and the outcome it had when found. A finding already
    kept (same reader and key) keeps the smaller file."""
    folder = Path(folder)
    index_path = folder / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    by_key = {(v["reader"], v["class"], v["type"], v["where"]): name for name, v in index.items()}
    (folder / reader.name).mkdir(parents=True, exist_ok=True)
    for finding in findings:
        outcome, data = finding.outcome, finding.minimized
        known = by_key.get((reader.name, *outcome.key()))
        if known and index[known]["size"] <= len(data):
            continue
        if known:
            (folder / known).unlink()
            del index[known]
        name = f"{reader.name}/{_slug(reader, outcome)}{reader.suffix}"
        if len(data) > COMPRESS_OVER:
            name += ".gz"
            (folder / name).write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / name).write_bytes(data)
        index[name] = {"reader": reader.name, "class": outcome.cls, "type": outcome.type, "where": outcome.where,
                       "message": outcome.message[:300], "size": len(data),
                       "found": f"seed {seed}, case {finding.first_case}"}
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=1) + "\n")


def replay(folder, readers, workdir, timeout=10.0):
    """[(file name, index entry, Outcome today)] for every kept finding in ``folder``; ``readers``
    maps a reader's name to its class, prepared once in ``workdir``."""
    folder = Path(folder)
    index = json.loads((folder / INDEX).read_text())
    ready, results = {}, []
    for name, entry in sorted(index.items()):
        if entry["reader"] not in ready:
            reader = readers[entry["reader"]]()
            (Path(workdir) / entry["reader"]).mkdir(parents=True, exist_ok=True)
            reader.prepare(Path(workdir) / entry["reader"])
            ready[entry["reader"]] = reader
        reader = ready[entry["reader"]]
        case = Path(workdir) / entry["reader"] / f"replay{reader.suffix}"
        results.append((name, entry, run_bytes(reader, read_kept(folder / name), case, timeout)))
    return results


def summary(reports):
    """A Markdown table of campaign reports: cases and outcomes per reader."""
    rows = ["| reader | cases | " + " | ".join(CLASSES) + " | max memory/size | max fraction of bound |",
            "|---" * (len(CLASSES) + 4) + "|"]
    for r in reports:
        rows.append(f"| {r['reader']} | {r['cases']} | " + " | ".join(str(r["outcomes"][c]) for c in CLASSES)
                    + f" | {r['max_memory_to_size']['ratio']:g} | {r['max_fraction_of_bound']['fraction']:g} |")
    return "\n".join(rows)
