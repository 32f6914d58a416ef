"""No code runs from a file: hostile payloads in every place a pickle or an ``.npy`` header sits.

Each payload, made here opcode by opcode, calls something that creates a marker file (through
``os.system``, ``subprocess``, ``exec``, ``eval``, ``open``), by every way a pickle reaches a
callable: GLOBAL, STACK_GLOBAL and the EXT opcodes to name it, REDUCE, INST, OBJ and BUILD (a
``__setstate__`` planted in an instance) to call it, and persistent ids that hold such a call.
They go into a zip ``.pth`` (as data.pkl), a legacy ``.pth`` (as the object's pickle and as its
first record), the restricted unpickler alone, and ``.npz`` checkpoints (object arrays, whose
elements only pickle reads; ``.npy`` headers that are Python expressions).

First each payload is shown to run under the unsafe reading (``pickle.loads``, numpy with
``allow_pickle``, ``eval`` of a header): the marker appears, so each test can fail. Then under
our readers: a CheckpointError naming the file, no marker, no audit event of code running
(``os.system``, ``subprocess.Popen``, ``os.exec*``/``spawn``, ``exec``, ``compile`` but numpy's
own parse of a header into a literal, pickle's own ``find_class``), and every global the
unpickler resolved is on its allow-list.
"""
import copyreg
import io
import json
import pickle
import sys
import zipfile

import numpy as np
import pytest

from tinymaskrcnn import weights

CODE_EVENTS = ("os.system", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.Popen", "exec", "compile",
               "ctypes.dlopen", "pickle.find_class")
# what a state_dict may name: the restricted unpickler's allow-list (weights/pth.py)
ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
           ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state")}
EXT_CODES = {"EXT1": 0xE7, "EXT2": 0xE7E7, "EXT4": 0x7E7E7E7}

_seen = []        # (event, args) while recording
_recording = []   # non-empty while a reader runs


def _audit(event, args):
    if event == "exec" and not args[0].co_filename.startswith("<"):
        return  # a module's code run as it is first imported, not code from a string
    if _recording and event.startswith(CODE_EVENTS):
        # numpy parses an .npy header with ast.literal_eval: compiled to a tree, never run
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_name != "literal_eval":
            frame = frame.f_back
        if not (event == "compile" and frame is not None):
            _seen.append((event, repr(args)[:200]))


sys.addaudithook(_audit)  # for the session (hooks cannot be removed); it records only while a test asks


# ---------------------------------------------------------------------------------------------
# Payloads, opcode by opcode
# ---------------------------------------------------------------------------------------------

def _str(s):
    data = s.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE


def _arg(value):
    if isinstance(value, list):
        return b"](" + b"".join(map(_arg, value)) + b"e"  # EMPTY_LIST MARK ... APPENDS
    return _str(value)


def _args(values):
    return b"(" + b"".join(map(_arg, values)) + b"t"  # MARK ... TUPLE


def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _call(module, name, args):
    """An expression that calls ``module.name(*args)``: GLOBAL, the arguments, REDUCE."""
    return _global(module, name) + _args(args) + b"R"


def calls(marker):
    """(module, name, args) that each create ``marker``."""
    code = f"open({str(marker)!r}, 'w').close()"
    return [("os", "system", [f"touch '{marker}'"]), ("posix", "system", [f"touch '{marker}'"]),
            ("subprocess", "call", [["touch", str(marker)]]), ("subprocess", "check_output", [["touch", str(marker)]]),
            ("builtins", "exec", [code]), ("builtins", "eval", [code]), ("builtins", "open", [str(marker), "w"])]


def payload(form, call):
    """A whole pickle (ending in STOP) that makes ``call`` through ``form``."""
    module, name, args = call
    if form == "GLOBAL REDUCE, protocol 0":
        return _call(module, name, args) + b"."
    if form == "GLOBAL REDUCE, protocol 2":
        return b"\x80\x02" + _call(module, name, args) + b"."
    if form == "STACK_GLOBAL REDUCE":
        return b"\x80\x04" + _str(module) + _str(name) + b"\x93" + _args(args) + b"R."
    if form == "INST":
        return b"(" + b"".join(map(_arg, args)) + b"i" + f"{module}\n{name}\n".encode() + b"."
    if form == "OBJ":
        return b"(" + _global(module, name) + b"".join(map(_arg, args)) + b"o."
    if form == "BUILD __setstate__":  # plant the callable as an instance's __setstate__, then BUILD with its argument
        planted = b"}" + _str("__setstate__") + _global(module, name) + b"s"
        return b"\x80\x02" + _call("argparse", "Namespace", []) + planted + b"b" + _arg(args[0]) + b"b."
    if form in EXT_CODES:
        width = int(form[3])
        op = {1: b"\x82", 2: b"\x83", 4: b"\x84"}[width] + EXT_CODES[form].to_bytes(width, "little")
        return b"\x80\x02" + op + _args(args) + b"R."
    if form == "BINPERSID holding a call":
        return b"\x80\x02" + _args(["storage", "x"])[:-1] + _call(module, name, args) + b"tQ."
    if form == "state_dict value":  # where a tensor record would be
        return b"\x80\x02}" + _str("conv1.weight") + _call(module, name, args) + b"s."
    raise ValueError(form)


FORMS = ("GLOBAL REDUCE, protocol 0", "GLOBAL REDUCE, protocol 2", "STACK_GLOBAL REDUCE", "INST", "OBJ",
         "BUILD __setstate__", *EXT_CODES, "BINPERSID holding a call", "state_dict value")
# where the pickle goes: a zip .pth's data.pkl, a legacy .pth's object or its first record, or
# the restricted unpickler directly
PLACES = ("zip", "legacy", "legacy first record", "unpickler")
CASES = [(form, place, k) for k, (form, place) in enumerate((f, p) for p in PLACES for f in FORMS)]


@pytest.fixture
def extensions(tmp_path):
    """An EXT code registered (copyreg) for the duration, pointing at the call a test makes."""
    added = []

    def register(module, name, code):
        copyreg.add_extension(module, name, code)
        added.append((module, name, code))
    yield register
    for module, name, code in added:
        copyreg.remove_extension(module, name, code)


def _legacy_header():
    return (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"protocol_version": 1001}, protocol=2))


def write_pth(path, pickle_bytes, place):
    if place == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", pickle_bytes)
            z.writestr("archive/byteorder", "little")
            z.writestr("archive/version", "3\n")
    elif place == "legacy":
        path.write_bytes(_legacy_header() + pickle_bytes + pickle.dumps([], protocol=2))
    else:  # the payload where the magic number's pickle is
        path.write_bytes(pickle_bytes + _legacy_header()[len(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)):])
    return path


class Resolved:
    """What ``SafeUnpickler.find_class`` was asked and what it gave (a spy around it)."""

    def __init__(self, monkeypatch):
        self.names = []
        original = weights.SafeUnpickler.find_class

        def spy(unpickler, module, name):
            found = original(unpickler, module, name)  # raises for anything refused
            self.names.append((module, name))
            return found
        monkeypatch.setattr(weights.SafeUnpickler, "find_class", spy)

    def outside_the_allow_list(self):
        return [n for n in self.names if n not in ALLOWED and not (n[0] == "torch" and n[1].endswith("Storage"))]


def run_reader(read):
    """``read()``'s CheckpointError (it must raise one) and the audit events of code it caused."""
    _seen.clear()
    _recording.append(True)
    try:
        with pytest.raises(weights.CheckpointError) as error:
            read()
    finally:
        _recording.clear()
    return error.value, list(_seen)


@pytest.mark.parametrize("form, place, k", CASES, ids=[f"{f}-{p}" for f, p, _ in CASES])
def test_pickle_payloads_run_under_pickle_but_not_under_read_pth(tmp_path, monkeypatch, extensions, form, place, k):
    marker = tmp_path / "marker"
    call = calls(marker)[k % len(calls(marker))]
    if form == "BUILD __setstate__" and len(call[2]) != 1:  # __setstate__ takes one argument
        call = calls(marker)[0]
    if form in EXT_CODES:
        extensions(call[0], call[1], EXT_CODES[form])
    data = payload(form, call)
    try:
        pickle.loads(data)
    except Exception:  # the persistent id has no loader here; the call ran before it was needed
        pass
    assert marker.exists(), f"the {form} payload does not run under pickle.loads: the test would prove nothing"
    marker.unlink()

    resolved = Resolved(monkeypatch)
    if place == "unpickler":
        error, events = run_reader(lambda: _safe_load(data, tmp_path))
    else:
        path = write_pth(tmp_path / "hostile.pth", data, place)
        error, events = run_reader(lambda: weights.read_pth(path))
        assert str(path) in str(error)
    assert not marker.exists() and not events, events
    assert not resolved.outside_the_allow_list(), resolved.names


def _safe_load(data, tmp_path):
    try:
        return weights.SafeUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:  # the unpickler alone names no file: the test's stand-in
        raise weights.CheckpointError(f"{tmp_path}: {e}") from e


# ---------------------------------------------------------------------------------------------
# .npz checkpoints: object arrays and .npy headers
# ---------------------------------------------------------------------------------------------

def _npy(header, body):
    text = header + " " * ((64 - (len(header) + 11) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + body


def write_npz(path, entry):
    meta = io.BytesIO()
    np.lib.format.write_array(meta, np.array(json.dumps(
        {"format": "tinymaskrcnn-checkpoint", "version": 1, "tree": {"__dict__": {"a": {"__array__": "a"}}}})))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("__tinymaskrcnn__.npy", meta.getvalue())
        z.writestr("a.npy", entry)
    return path


NPZ_CALLS = range(3)


@pytest.mark.parametrize("k", NPZ_CALLS)
def test_object_arrays_run_under_numpy_but_not_under_load(tmp_path, k):
    marker = tmp_path / "marker"
    entry = _npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                 payload("GLOBAL REDUCE, protocol 2", calls(marker)[k]))
    try:
        np.lib.format.read_array(io.BytesIO(entry), allow_pickle=True)
    except Exception:  # the call's result is not an array's contents: it ran first
        pass
    assert marker.exists()
    marker.unlink()
    path = write_npz(tmp_path / "hostile.npz", entry)
    error, events = run_reader(lambda: weights.load(path))
    assert "object array" in str(error) and str(path) in str(error)
    assert not marker.exists() and not events, events


@pytest.mark.parametrize("k", NPZ_CALLS)
def test_npy_headers_that_are_code_run_under_eval_but_not_under_load(tmp_path, k):
    marker = tmp_path / "marker"
    module, name, args = calls(marker)[k]
    header = (f"{{'descr': __import__({module!r}).{name}(*{args!r}) and '<f4', 'fortran_order': False, "
              "'shape': (1,), }")
    eval(header)  # what a reader that evaluated the header would do
    assert marker.exists()
    marker.unlink()
    path = write_npz(tmp_path / "hostile.npz", _npy(header, b"\x00" * 4))
    error, events = run_reader(lambda: weights.load(path))
    assert str(path) in str(error)
    assert not marker.exists() and not events, events


def test_the_audit_hook_sees_code_run(tmp_path):
    """The hook is what the tests above rely on: a payload under plain pickle, recorded as one
    of our readers would be, shows up."""
    marker = tmp_path / "marker"
    data = payload("GLOBAL REDUCE, protocol 2", calls(marker)[0])

    def unsafe():
        pickle.loads(data)
        raise weights.CheckpointError("ran")
    _, events = run_reader(unsafe)
    assert marker.exists() and [e for e, _ in events] == ["pickle.find_class", "os.system"]
