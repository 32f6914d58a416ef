"""Mutators: a valid file in, a hostile one out, as an attacker would write it.

Each mutator is ``mutate(data, rng) -> bytes`` (``rng`` a ``random.Random``; the pickle ones
also take the pickle's parsed opcodes, ``PICKLE_MUTATIONS`` run through ``mutate_pickle``). The generic ones
flip, overwrite, cut and splice bytes of any file; the structure-aware ones parse the file as its
format and change one thing a reader must not trust: a pickle opcode, a zip record field, an
``.npy`` header, a JSON value, an image chunk. A structure-aware mutator raises ``NotApplicable``
when the bytes no longer parse as its format (an earlier mutation broke them); the campaign then
falls back to a generic one.

Why structure-aware at all: a random byte flip in a zip archive almost always fails its CRC or
directory check, which the readers handle; what they can get wrong is a file that is valid on
every level but one, so these mutators keep the rest valid (CRCs recomputed, lengths rewritten,
zip archives rebuilt).
"""
import ast
import io
import json
import pickletools
import struct
import warnings
import zipfile
import zlib

# Numbers readers take as sizes, counts and indices: the edges of each integer width, zero, one,
# negative, and values whose products overflow.
INTERESTING_INTS = (0, 1, -1, 2, 3, 255, 256, 65535, 65536, 2 ** 20, 2 ** 24, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1,
                    2 ** 32, 2 ** 40, 2 ** 53 + 1, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -2 ** 31, -2 ** 63)


# No mutation makes a file larger than this: cases stay quick, and the campaign's own process
# (which parses the files it mutates) stays small.
MAX_BYTES = 8 * 2 ** 20


class NotApplicable(Exception):
    """The bytes do not parse as the mutator's format."""


def copies(piece_length, wanted):
    """How many copies of a piece of ``piece_length`` bytes to add: ``wanted``, within MAX_BYTES."""
    return max(1, min(wanted, MAX_BYTES // max(piece_length, 1)))


# ---------------------------------------------------------------------------------------------
# Generic byte mutations
# ---------------------------------------------------------------------------------------------

def _span(data, rng, longest=64):
    start = rng.randrange(len(data) + 1)
    return start, min(len(data), start + rng.randint(1, longest))


def flip_bits(data, rng):
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_bytes(data, rng):
    """A byte, or a 2/4/8-byte integer in either byte order, set to an edge value."""
    if not data:
        return data
    width = rng.choice((1, 2, 4, 8))
    value = rng.choice(INTERESTING_INTS) % (1 << (8 * width))
    at = rng.randrange(len(data))
    return data[:at] + value.to_bytes(width, rng.choice(("little", "big"))) + data[at + width:]


def truncate(data, rng):
    return data[:rng.randrange(len(data) + 1)]


def delete_span(data, rng):
    start, stop = _span(data, rng, 4096)
    return data[:start] + data[stop:]


def insert_bytes(data, rng):
    at = rng.randrange(len(data) + 1)
    fill = rng.choice((b"\x00", b"\xff", bytes([rng.randrange(256)])))
    return data[:at] + (rng.randbytes(rng.randint(1, 64)) if rng.random() < 0.5 else fill * rng.randint(1, 4096)) \
        + data[at:]


def duplicate_span(data, rng):
    start, stop = _span(data, rng, 4096)
    return data[:stop] + data[start:stop] * copies(stop - start, rng.randint(1, 16)) + data[stop:]


def copy_span(data, rng):
    """A piece of the file written over another place of it (a header over a header...)."""
    start, stop = _span(data, rng, 256)
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[start:stop] + data[at + stop - start:]


GENERIC = (flip_bits, set_bytes, truncate, delete_span, insert_bytes, duplicate_span, copy_span)


def splice(data, other, rng):
    """The head of one file and the tail of another (two seeds of one format)."""
    return data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]


# ---------------------------------------------------------------------------------------------
# Pickles: opcode by opcode
# ---------------------------------------------------------------------------------------------

def p_int(n):
    """The opcode that pushes the int ``n``."""
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + n.to_bytes(2, "little")
    if -2 ** 31 <= n < 2 ** 31:
        return b"J" + n.to_bytes(4, "little", signed=True)
    raw = pickle_long(n)
    return (b"\x8a" + bytes([len(raw)]) if len(raw) < 256 else b"\x8b" + len(raw).to_bytes(4, "little")) + raw


def pickle_long(n):
    """``n`` as pickle's LONG1 payload: little-endian two's complement, as short as it goes."""
    length = (n.bit_length() + 8) // 8
    return n.to_bytes(length, "little", signed=True)


def p_str(s):
    raw = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return b"X" + len(raw).to_bytes(4, "little") + raw


def p_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


# Names a pickle may ask for: the allowed ones (reached with wrong arguments), torch's storage types
# (including ones the reader does not map), and what an attacker wants.
GLOBALS = (("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
           ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
           ("torch", "FloatStorage"), ("torch", "BFloat16Storage"), ("torch", "UntypedStorage"),
           ("torch", "QInt8Storage"), ("torch", "Tensor"), ("torch.nn.modules.conv", "Conv2d"),
           ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "exec"),
           ("builtins", "getattr"), ("subprocess", "Popen"), ("__builtin__", "open"), ("numpy", "frombuffer"),
           ("numpy.core.multiarray", "_reconstruct"), ("collections", "defaultdict"), ("torch._utils", "__dict__"),
           ("", ""), ("collections\x00", "OrderedDict"), ("\udcff", "x"))


def _p_global_any(module, name):
    raw = p_str(module) + p_str(name) + b"\x93"  # STACK_GLOBAL
    try:
        return p_global(module, name) if "\n" not in module + name else raw
    except UnicodeEncodeError:
        return raw


def pickle_ops(data, start=0):
    """[(opcode name, argument, start, end)] of the one pickle at ``data[start:]``, ending at STOP."""
    try:
        ops = list(pickletools.genops(io.BytesIO(data[start:])))
    except Exception as e:
        raise NotApplicable(f"not a pickle: {e}") from e
    bounds = [pos + start for _, _, pos in ops] + [start + ops[-1][2] + 1]
    return [(op.name, arg, bounds[i], bounds[i + 1]) for i, (op, arg, _) in enumerate(ops)]


def _memo_ops(ops):
    return [o for o in ops if o[0] in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE")]


def _replace(data, op, new):
    return data[:op[2]] + new + data[op[3]:]


def _insert(data, op, new, after=False):
    at = op[3] if after else op[2]
    return data[:at] + new + data[at:]


def _pick(ops, rng, names):
    chosen = [o for o in ops if o[0] in names]
    if not chosen:
        raise NotApplicable(f"no {names} opcode")
    return rng.choice(chosen)


def _pushes(ops):
    # opcodes after which one object is on top of the stack, so a PUT or DUP may follow
    return [o for o in ops if o[0] not in ("PROTO", "STOP", "MARK", "FRAME", "POP", "POP_MARK", "SETITEM", "SETITEMS",
                                            "APPEND", "APPENDS", "BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE")]


def memo_index(data, ops, rng):
    """A memo store at a huge index (the memo is a list the unpickler grows to the index), or a
    fetch from an index never stored."""
    index = rng.choice((2 ** 20, 2 ** 24, 2 ** 27, 2 ** 30, 2 ** 31 - 1, 2 ** 32 - 1, rng.randrange(2 ** 32)))
    if rng.random() < 0.6:
        op = rng.choice(_memo_ops(ops) or _pushes(ops) or ops[:1])
        put = b"r" + index.to_bytes(4, "little")
        return _replace(data, op, put) if op[0] in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE") \
            else _insert(data, op, put, after=True)
    op = rng.choice(_pushes(ops) or ops[:1])
    get = rng.choice((b"j" + index.to_bytes(4, "little"), b"h" + bytes([rng.randrange(256)])))
    return _insert(data, op, get, after=True)


def memo_get(data, ops, rng):
    """A fetch of another memo entry than the one stored (an object where a tensor belongs...)."""
    op = _pick(ops, rng, ("BINGET", "LONG_BINGET"))
    stored = [o[1] for o in _memo_ops(ops) if o[1] is not None] or [0]
    return _replace(data, op, b"j" + rng.choice(stored).to_bytes(4, "little"))


def global_name(data, ops, rng):
    op = _pick(ops, rng, ("GLOBAL", "STACK_GLOBAL"))
    return _replace(data, op, _p_global_any(*rng.choice(GLOBALS)))


def _payload(rng):
    """A classic call payload: GLOBAL, arguments, and REDUCE / INST / OBJ / NEWOBJ / BUILD / EXT."""
    module, name = rng.choice(GLOBALS)
    args = b"(" + p_str("touch /tmp/tinymaskrcnn-fuzz-pwned") + b"t"
    kind = rng.randrange(8)
    if kind == 0:
        return _p_global_any(module, name) + args + b"R"
    if kind == 1:
        return b"(" + p_str("x") + b"i" + (module + "\n" + name + "\n").encode("utf-8", "surrogatepass")  # INST
    if kind == 2:
        return b"(" + _p_global_any(module, name) + p_str("x") + b"o"                     # OBJ
    if kind == 3:
        return _p_global_any(module, name) + args + b"\x81"                              # NEWOBJ
    if kind == 4:
        return _p_global_any(module, name) + b")" + b"}" + b"\x92"                        # NEWOBJ_EX
    if kind == 5:
        return b"}" + b"}" + p_str("__setstate__") + _p_global_any(module, name) + b"s" + b"b"  # BUILD
    if kind == 6:
        return rng.choice((b"\x82" + bytes([rng.randrange(256)]), b"\x83\x01\x00", b"\x84\xff\xff\xff\x7f"))  # EXT
    return p_str("x") + rng.choice((b"Q", b"P" + b"storage\n"))                          # persistent ids


def call_opcodes(data, ops, rng):
    """A payload inserted before a random opcode: the stack around it stays as it was, so what
    follows still runs unless the payload is refused."""
    op = rng.choice(ops[1:-1] or ops)
    payload = _payload(rng)
    return _insert(data, op, payload + (b"0" if rng.random() < 0.7 else b""))  # POP its result, or leave it


def ints(data, ops, rng):
    """A number (a storage's element count, a size, a stride, an offset) set to an edge value."""
    op = _pick(ops, rng, ("BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG", "LONG4"))
    if rng.random() < 0.1:  # a decimal LONG past Python's 4300-digit limit for int(str)
        return _replace(data, op, b"L" + b"9" * 5000 + b"L\n")
    value = rng.choice(INTERESTING_INTS + (2 ** 1000, -2 ** 1000))
    if isinstance(op[1], int) and rng.random() < 0.3:
        value = op[1] + rng.choice((-1, 1, 2, 1000))
    return _replace(data, op, p_int(value))


def strings(data, ops, rng):
    """A string (a storage key, a location, a dict key, 'storage') replaced."""
    op = _pick(ops, rng, ("BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINSTRING", "SHORT_BINSTRING",
                          "BINBYTES", "SHORT_BINBYTES"))
    keys = [o[1] for o in ops if isinstance(o[1], str)]
    choice = rng.choice(("", "x" * 100_000, "../../x", "\udcff", "0", "storage", "module", "cuda:7", "meta",
                         rng.choice(keys) if keys else "k", "archive/data.pkl", "data/0"))
    if rng.random() < 0.2:
        return _replace(data, op, b"C\x04\xff\xfe\x00\x80")  # SHORT_BINBYTES, not text
    return _replace(data, op, p_str(choice))


def length_claims(data, ops, rng):
    """A length field no file could fill: the unpickler reads (and may allocate) what it claims."""
    claim = rng.choice((2 ** 31 - 1, 2 ** 32 - 1, 2 ** 40, 2 ** 62))
    op = rng.choice(ops[1:-1] or ops)
    kind = rng.randrange(4)
    if kind == 0:
        new = b"X" + min(claim, 2 ** 32 - 1).to_bytes(4, "little") + b"abc"          # BINUNICODE
    elif kind == 1:
        new = b"\x8d" + claim.to_bytes(8, "little") + b"abc"                         # BINUNICODE8
    elif kind == 2:
        new = b"\x8e" + claim.to_bytes(8, "little") + b"abc"                         # BINBYTES8
    else:
        new = b"\x95" + claim.to_bytes(8, "little")                                  # FRAME
    return _insert(data, op, new) if rng.random() < 0.5 else data[:op[2]] + new


def structure(data, ops, rng):
    """Opcodes deleted, repeated, swapped, cut off, or the object nested deeply."""
    inner = ops[1:-1] or ops
    kind = rng.randrange(6)
    if kind == 0:
        op = rng.choice(inner)
        return _replace(data, op, b"")
    if kind == 1:
        op = rng.choice(inner)
        return _insert(data, op, data[op[2]:op[3]] * copies(op[3] - op[2], rng.randint(2, 100)))
    if kind == 2 and len(inner) > 1:
        i = rng.randrange(len(inner) - 1)
        a, b = inner[i], inner[i + 1]
        return data[:a[2]] + data[b[2]:b[3]] + data[a[2]:a[3]] + data[b[3]:]
    if kind == 3:
        return data[:rng.choice(inner)[2]]
    depth = rng.choice((100, 1000, 10_000, 100_000))
    start, stop = ops[1][2] if ops[0][0] == "PROTO" else ops[0][2], ops[-1][2]
    if kind == 4:  # {'model': {'model': ... the object ...}}
        return data[:start] + (b"}" + p_str("model")) * depth + data[start:stop] + b"s" * depth + data[stop:]
    return data[:start] + b"]" * depth + data[start:stop] + b"a" * depth + data[stop:]  # [[[... object]]]


def top_level(data, ops, rng):
    """The whole object replaced: a tuple, None, an int, a list, a dict with a non-string key."""
    start = ops[1][2] if ops[0][0] == "PROTO" else ops[0][2]
    body = data[start:ops[-1][2]]
    new = rng.choice((b"N", p_int(7), b"(" + body + b"t", b"]" + body + b"a", b"}" + p_int(3) + body + b"s",
                      b"}" + p_str("model") + b"N" + b"s", b"}" + p_str("state_dict") + body + b"s",
                      b"\x88", b"G" + struct.pack(">d", float("nan"))))
    return data[:start] + new + data[ops[-1][2]:]


PICKLE_MUTATIONS = (memo_index, memo_get, global_name, call_opcodes, ints, strings, length_claims, structure,
                    top_level)


def mutate_pickle(data, rng, start=0):
    """One PICKLE_MUTATIONS mutation of the pickle at ``data[start:]`` (the rest kept)."""
    ops = pickle_ops(data, start)
    end = ops[-1][3]
    for _ in range(8):
        mutation = rng.choice(PICKLE_MUTATIONS)
        try:
            return mutation(data[:end], ops, rng) + data[end:]
        except NotApplicable:
            continue
    raise NotApplicable("no pickle mutation applies")


# ---------------------------------------------------------------------------------------------
# Zip archives: rebuilt after changing an entry, or one record field changed in place
# ---------------------------------------------------------------------------------------------

def zip_entries(data):
    """[(name, bytes)] of a zip archive that zipfile reads, or NotApplicable; also for one whose
    records claim more than MAX_BYTES together (overlapping records, a deflated bomb): this
    runs in the campaign's own process."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            if sum(info.file_size for info in infos) > MAX_BYTES:
                raise NotApplicable("the records claim too much to unpack here")
            return [(info.filename, archive.read(info)) for info in infos]
    except NotApplicable:
        raise
    except Exception as e:
        raise NotApplicable(f"not a readable zip: {e}") from e


def build_zip(entries, deflate=()):
    """A zip of ``entries`` [(name, bytes)], every record stored but those named in ``deflate``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a repeated name is the point of some mutations
        for name, content in entries:
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), content,
                             zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED)
    return buffer.getvalue()


def zip_entry_mutation(data, rng):
    """An entry dropped, repeated under the same name, renamed, emptied, grown, or deflated (a
    compressed record can claim any size), the archive rebuilt valid around it."""
    entries = zip_entries(data)
    if not entries:
        raise NotApplicable("empty zip")
    k = rng.randrange(len(entries))
    name, content = entries[k]
    kind = rng.randrange(7)
    if kind == 0:
        del entries[k]
    elif kind == 1:
        entries.insert(rng.randrange(len(entries) + 1), (name, rng.choice((content, content[: len(content) // 2]))))
    elif kind == 2:
        prefix = name.split("/")[0]
        entries[k] = (rng.choice((name + "x", prefix + "/constants.pkl", "../" + name, "a/b/" + name,
                                  prefix + "/data.pkl", name.upper(), "\u00e9" + name)), content)
    elif kind == 3:
        entries[k] = (name, b"")
    elif kind == 4:
        tail = content[-rng.randint(1, 64):]
        entries[k] = (name, content + tail * copies(len(tail), rng.randint(1, 1000)))
    elif kind == 5:
        return build_zip(entries, deflate=(name,))
    else:  # a deflated record whose uncompressed size is far beyond the file
        entries[k] = (name, content + b"\x00" * rng.choice((2 ** 20, 2 ** 24, 2 ** 27)))
        return build_zip(entries, deflate=(name,))
    return build_zip(entries)


def _records(data):
    """Offsets of every local header, central directory entry and end record in ``data``."""
    found = {b"PK\x03\x04": [], b"PK\x01\x02": [], b"PK\x05\x06": [], b"PK\x06\x06": []}
    for sig, positions in found.items():
        at = data.find(sig)
        while at >= 0:
            positions.append(at)
            at = data.find(sig, at + 1)
    return found


# (offset, width) of the fields worth lying about, per record
_CENTRAL_FIELDS = ((8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (42, 4))
_LOCAL_FIELDS = ((6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2))
_END_FIELDS = ((8, 2), (10, 2), (12, 4), (16, 4), (20, 2))


def zip_record_field(data, rng):
    """One field of a central directory entry, a local header or the end record set to an edge
    value, or to another record's value (a header offset pointing at another entry: overlap)."""
    records = _records(data)
    kinds = [(sig, fields) for sig, fields in ((b"PK\x01\x02", _CENTRAL_FIELDS), (b"PK\x03\x04", _LOCAL_FIELDS),
                                               (b"PK\x05\x06", _END_FIELDS)) if records[sig]]
    if not kinds:
        raise NotApplicable("no zip records")
    sig, fields = rng.choice(kinds)
    at = rng.choice(records[sig])
    offset, width = rng.choice(fields)
    if sig == b"PK\x01\x02" and offset == 42 and records[b"PK\x03\x04"] and rng.random() < 0.5:
        value = rng.choice(records[b"PK\x03\x04"]) + rng.choice((0, 0, 1, -1))  # another entry's header
    elif offset in (8, 6) and width == 2 and rng.random() < 0.5:
        value = rng.choice((0x1, 0x8, 0x40, 0x800, 0x2000))  # encrypted, data descriptor, strong, UTF-8
    else:
        value = rng.choice(INTERESTING_INTS)
    value %= 1 << (8 * width)
    return data[:at + offset] + value.to_bytes(width, "little") + data[at + offset + width:]


def zip_name_bytes(data, rng):
    """An entry name that is not UTF-8 (with the UTF-8 flag set, so it must decode as UTF-8), or
    far longer than any real one, in the central directory (and its local header)."""
    records = _records(data)
    if not records[b"PK\x01\x02"]:
        raise NotApplicable("no central directory")
    at = rng.choice(records[b"PK\x01\x02"])
    name_len = int.from_bytes(data[at + 28:at + 30], "little")
    if name_len == 0:
        raise NotApplicable("empty name")
    out = bytearray(data)
    flags = int.from_bytes(out[at + 8:at + 10], "little") | 0x800
    out[at + 8:at + 10] = flags.to_bytes(2, "little")
    k = at + 46 + rng.randrange(name_len)
    out[k] = rng.choice((0xFF, 0xC3, 0x80, 0xED, 0x00))
    return bytes(out)


def zip_duplicate_central(data, rng):
    """A central directory entry repeated (the same name twice, or two entries on one record)."""
    records = _records(data)
    if not records[b"PK\x01\x02"] or len(records[b"PK\x05\x06"]) != 1:
        raise NotApplicable("no plain central directory")
    end = records[b"PK\x05\x06"][0]
    at = rng.choice(records[b"PK\x01\x02"])
    n, m, k = (int.from_bytes(data[at + o:at + o + 2], "little") for o in (28, 30, 32))
    entry = data[at:at + 46 + n + m + k]
    copies = rng.choice((1, 1, 100, 10_000))
    count = (int.from_bytes(data[end + 10:end + 12], "little") + copies) % 65536
    size = (int.from_bytes(data[end + 12:end + 16], "little") + copies * len(entry)) % 2 ** 32
    eocd = data[end:end + 8] + count.to_bytes(2, "little") * 2 + size.to_bytes(4, "little") + data[end + 16:]
    return data[:end] + entry * copies + eocd


def _local_header(name, size, crc):
    return (b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 0, 0, 0x21, crc, size, size, len(name), 0) + name)


def _central_entry(name, size, crc, offset):
    return (b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 0, 0, 0x21, crc, size, size, len(name),
                                        0, 0, 0, 0, 0, offset) + name)


def _end_record(count, cd_size, cd_offset):
    return b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count, cd_size, cd_offset, 0)


def overlapping_zip(head, chain_names, prefix_of, tail=b""):
    """A zip whose records overlap: each record of ``chain_names`` is stored and holds
    ``prefix_of(n)`` (n: the bytes that follow the prefix) then every later record, header and
    all; ``head(sizes)`` gives the ordinary records [(name, bytes)] before the chain, knowing the
    chain records' sizes (a pickle that names them, say). All CRCs and sizes are
    right, so each record passes every check, yet reading them all reads the file's bytes once per
    record: quadratic in the file's size. (The stored cousin of D. Fifield's overlapping zip bomb.)
    """
    count = len(chain_names)
    names = [n.encode() for n in chain_names]
    # lengths first, back to front: a record's data is its prefix plus all later records
    data_len, prefixes = [0] * count, [b""] * count
    after = len(tail)
    for k in range(count - 1, -1, -1):
        prefixes[k] = prefix_of(after)
        data_len[k] = len(prefixes[k]) + after
        after = data_len[k] + 30 + len(names[k])
    head = head(data_len)
    head_bytes, central, offset = b"", b"", 0
    for name, content in head:
        raw, crc = name.encode(), zlib.crc32(content)
        central += _central_entry(raw, len(content), crc, offset)
        record = _local_header(raw, len(content), crc) + content
        head_bytes += record
        offset += len(record)
    chain_start = offset
    buffer = bytearray(after + len(head_bytes))
    buffer[:len(head_bytes)] = head_bytes
    buffer[len(buffer) - len(tail):] = tail
    # then the bytes, back to front: each CRC covers the later records, whose CRCs are known by then
    position = len(buffer) - len(tail)
    starts, crcs = [0] * count, [0] * count
    for k in range(count - 1, -1, -1):
        position -= len(prefixes[k])
        buffer[position:position + len(prefixes[k])] = prefixes[k]
        crcs[k] = zlib.crc32(memoryview(buffer)[position:position + data_len[k]])
        header = _local_header(names[k], data_len[k], crcs[k])
        position -= len(header)
        buffer[position:position + len(header)] = header
        starts[k] = position
    assert position == chain_start
    central += b"".join(_central_entry(names[k], data_len[k], crcs[k], starts[k]) for k in range(count))
    return bytes(buffer) + central + _end_record(len(head) + count, len(central), len(buffer))


# ---------------------------------------------------------------------------------------------
# .npy headers (the entries of an .npz)
# ---------------------------------------------------------------------------------------------

SHAPES = ("()", "(0,)", f"({2 ** 62},)", f"(0, {2 ** 62})", f"({2 ** 31}, {2 ** 31})",
          "(-1,)", "(1.5,)", "('a',)", "(" + "1, " * 64 + ")", "((1,),)", "[3]", "(" + "9" * 5000 + ",)", "(3, 0, 7)",
          f"({2 ** 40},)", "(1, 1, 1, 1)")
DESCRS = ("'|O'", "'<U1000000000'", "'|V0'", "'|V2147483647'", "'<f4'", "'>f8'", "'float32'",
          "[('a', '<f4'), ('b', '|O')]", "('<f4', (1000, 1000))", f"('<f4', ({2 ** 31}, {2 ** 31}))", "'|S0'",
          "'<m8[D]'", "'zz'", "'<c32'", "[('a', '<f4', (2**40,))]", "'<u2'", "'|b1'", "[]", "'<U0'")
HEADER_TEXTS = ("{", "''''", "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'extra': 1}",
                "__import__('os').system('true')", "(" * 10_000 + ")" * 10_000, "{'descr': '<f4'}", "\x00",
                "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "(" * 500 + ")" * 500 + ",)}", "\u00e9",
                "{'descr': " + "[" * 200 + "]" * 200 + ", 'fortran_order': False, 'shape': ()}")


def npy_parts(content):
    """(version, header dict text, array bytes) of an .npy file's bytes."""
    if content[:6] != b"\x93NUMPY" or len(content) < 10:
        raise NotApplicable("not an .npy")
    version = content[6]
    if version == 1:
        length, start = int.from_bytes(content[8:10], "little"), 10
    elif version in (2, 3):
        length, start = int.from_bytes(content[8:12], "little"), 12
    else:
        raise NotApplicable("unknown .npy version")
    return version, content[start:start + length].decode("latin-1"), content[start + length:]


def npy_bytes(header, body, version=None):
    """An .npy file of the header text ``header`` (padded as numpy pads) and ``body``; version 1
    has a 2-byte header length, any other a 4-byte one (as 2 and 3 do)."""
    raw = header.encode("latin-1", "replace")
    version = version or (1 if len(raw) < 65000 else 2)
    width = 2 if version == 1 else 4
    pad = -(10 + (width - 2) + len(raw) + 1) % 64
    raw = raw + b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + (len(raw) % 2 ** (8 * width)).to_bytes(width, "little") + raw + body


def _npy_field(header, key, value):
    try:
        fields = ast.literal_eval(header.strip())
    except Exception as e:
        raise NotApplicable("header is not a literal") from e
    if not isinstance(fields, dict):
        raise NotApplicable("header is not a dict")
    parts = [f"'{k}': {value if k == key else repr(v)}" for k, v in fields.items()]
    return "{" + ", ".join(parts) + "}"


def npy_header(content, rng):
    """An .npy header with one field changed (shape, dtype, fortran_order), or replaced whole;
    the body sometimes resized to what the new header claims, so the size check passes."""
    version, header, body = npy_parts(content)
    kind = rng.randrange(5)
    if kind == 0:
        header = _npy_field(header, "shape", rng.choice(SHAPES))
    elif kind == 1:
        header = _npy_field(header, "descr", rng.choice(DESCRS))
    elif kind == 2:
        header = _npy_field(header, "fortran_order", rng.choice(("True", "1", "'yes'", "None")))
    elif kind == 3:
        header = rng.choice(HEADER_TEXTS)
    else:
        header = header[:rng.randrange(len(header) + 1)]
    if rng.random() < 0.3:
        body = body[:rng.randrange(len(body) + 1)] if rng.random() < 0.5 else body + b"\x00" * rng.randint(1, 4096)
    if rng.random() < 0.2:
        version = rng.choice((1, 2, 3, 9))
    return npy_bytes(header, body, version)


# ---------------------------------------------------------------------------------------------
# JSON: values, types and nesting
# ---------------------------------------------------------------------------------------------

JSON_VALUES = (0, -1, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 53 + 1, 2 ** 63, 10 ** 30, 1e308, -0.0, 1.5,
               float("nan"), float("inf"), "", "x", "1", None, True, False, [], {}, [1, 2, 3], {"a": 1},
               [[1, 2], [3, 4]], {"__array__": "nope"}, {"__tuple__": 5}, {"__dict__": [[1]]},
               {"__odict__": {"a": 1}, "x": 2}, {"__scalar__": "x"})


def json_nodes(doc, path=()):
    """Every (path, value) in a parsed JSON document, the root first."""
    yield path, doc
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from json_nodes(value, path + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from json_nodes(value, path + (i,))


def json_set(doc, path, value):
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


# Values that cannot be built as Python objects and dumped (json.dumps recurses into nesting, and
# refuses integers past the 4300-digit limit): a placeholder string, expanded once the document
# is text by ``dump_json``.
_PLACEHOLDER = "\x00fuzz:"


def deep(depth):
    return f"{_PLACEHOLDER}deep:{depth}"


def huge_int(digits):
    return f"{_PLACEHOLDER}int:{digits}"


def json_value(doc, rng, nodes=None):
    """One node of the parsed document replaced: an edge value, another node's value, deep
    nesting, a huge integer (past Python's 4300-digit limit), a long string; or a key removed, a
    list element repeated, two values swapped."""
    nodes = nodes if nodes is not None else list(json_nodes(doc))
    path, value = rng.choice(nodes)
    kind = rng.randrange(9)
    if kind == 0:
        return json_set(doc, path, rng.choice(JSON_VALUES))
    if kind == 1:
        return json_set(doc, path, json.loads(json.dumps(rng.choice(nodes)[1])))
    if kind == 2:
        return json_set(doc, path, deep(rng.choice((50, 1000, 10_000, 100_000))))
    if kind == 3:
        return json_set(doc, path, huge_int(rng.choice((4301, 5000, 100_000))))
    if kind == 4:
        return json_set(doc, path, "x" * rng.choice((1000, 100_000, 1_000_000)))
    if kind == 5 and isinstance(value, dict) and value:
        del value[rng.choice(list(value))]
        return doc
    if kind == 6 and isinstance(value, list) and value:
        item = value[rng.randrange(len(value))]
        value.extend([item] * copies(len(json.dumps(item)), rng.choice((1, 2, 100, 10_000))))
        return doc
    if kind == 7 and path:
        return json_set(doc, path, rng.choice(([value], {"a": value}, str(value)[:100])))
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        value[rng.choice((key + "x", "", "\ud800", "__proto__", "id"))] = value.pop(key)
        return doc
    return json_set(doc, path, rng.choice(JSON_VALUES))


def dump_json(doc, rng):
    """The text of ``doc``, its placeholders expanded: deep nesting, huge integers."""
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    marker = json.dumps(_PLACEHOLDER)[:-1]  # the placeholder's opening as json.dumps writes it
    while marker in text:
        at = text.index(marker)
        end = text.index('"', at + 1)
        kind, number = text[at + len(marker):end].split(":")
        if kind == "deep":
            depth = int(number)
            value = ("[" * depth + "]" * depth) if rng.random() < 0.5 else ('{"a":' * depth + "1" + "}" * depth)
        else:
            value = "9" * int(number)
        text = text[:at] + value + text[end + 1:]
    return text


def parse_json(data):
    try:
        return json.loads(data.decode("utf-8"))
    except Exception as e:
        raise NotApplicable("not JSON") from e


def json_text(data, rng):
    """The text of a JSON file damaged as text: another encoding, a byte order mark, invalid
    UTF-8, a duplicated key, nesting around the whole document, cut at a token."""
    kind = rng.randrange(6)
    if kind == 0:
        return data.decode("utf-8", "replace").encode(rng.choice(("utf-16", "utf-32", "latin-1")), "replace")
    if kind == 1:
        return b"\xef\xbb\xbf" + data
    if kind == 2:
        at = rng.randrange(len(data) + 1)
        return data[:at] + rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80")) + data[at:]
    if kind == 3 and data.startswith(b"{"):
        return b'{"images": 5, ' + data[1:]
    if kind == 4:
        depth = rng.choice((1000, 100_000))
        return b"[" * depth + data + b"]" * depth
    cuts = [i for i, c in enumerate(data) if c in b",:[]{}"]
    return data[:rng.choice(cuts)] if cuts else data


# ---------------------------------------------------------------------------------------------
# Images: PNG chunks, JPEG markers, the dimensions of the rest
# ---------------------------------------------------------------------------------------------

def png_chunks(data):
    """[(type, body)] of a PNG, or NotApplicable."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise NotApplicable("not a PNG")
    chunks, at = [], 8
    while at + 8 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.append((data[at + 4:at + 8], data[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def png_bytes(chunks, fix_crc=True):
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in chunks:
        crc = zlib.crc32(kind + body) if fix_crc else 0
        out += len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")
    return out


_BOMBS = {}


def _zero_idat(width, height, channels):
    """IDAT bytes of an all-zero image (filter 0 each row): megabytes of pixels in kilobytes."""
    key = (width, height, channels)
    if key not in _BOMBS:
        compressor = zlib.compressobj(9)
        row = b"\x00" * (1 + width * channels)
        parts = [compressor.compress(row) for _ in range(height)]
        _BOMBS[key] = b"".join(parts) + compressor.flush()
    return _BOMBS[key]


def png_mutation(data, rng):
    """A PNG with one chunk changed and the CRCs right: the header's size, bit depth or colour
    type; a bad or missing palette; a chunk cut short or claiming more than the file holds; a
    compressed text or profile of megabytes; an APNG frame count; an all-zero image whose
    header claims tens of millions of pixels (under Pillow's bomb limit)."""
    chunks = png_chunks(data)
    header = next((i for i, (kind, _) in enumerate(chunks) if kind == b"IHDR"), None)
    if header is None or len(chunks[header][1]) < 13:
        raise NotApplicable("no IHDR")
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[header][1][:13])
    kind = rng.randrange(10)
    if kind == 0:
        width, height = rng.choice(((65500, 65500), (2 ** 31 - 1, 1), (0, height), (width, 0), (1, 2 ** 31 - 1),
                                    (65500, height), (width, 65500), (100_000, 100_000)))
    elif kind == 1:
        depth, colour = rng.choice((1, 2, 4, 8, 16, 3, 32)), rng.choice((0, 2, 3, 4, 6, 1, 5, 7))
    elif kind == 2:
        interlace = rng.choice((1, 2, 255))
    elif kind == 3:  # palettes
        plte = [i for i, (k, _) in enumerate(chunks) if k == b"PLTE"]
        if plte and rng.random() < 0.5:
            i = plte[0]
            chunks[i] = (b"PLTE", rng.choice((b"", b"\x00\x00", chunks[i][1][:3], chunks[i][1] * 2)))
        else:
            colour, depth = 3, 8
            chunks.insert(header + 1, (b"tRNS", b"\x00" * rng.choice((1, 300))))
    elif kind == 4:  # a chunk cut, or its length claiming more than there is
        i = rng.randrange(len(chunks))
        cut = png_bytes(chunks[:i])
        body = chunks[i][1]
        claimed = rng.choice((len(body) + 1, 2 ** 31 - 1, 2 ** 32 - 1))
        return cut + claimed.to_bytes(4, "big") + chunks[i][0] + body[:rng.randrange(len(body) + 1)]
    elif kind == 5:  # ancillary chunks that decompress or parse
        text = zlib.compress(b"x" * rng.choice((10 ** 6, 2 * 10 ** 6, 2 ** 24)))
        extra = rng.choice(((b"zTXt", b"k\x00\x00" + text), (b"iTXt", b"k\x00\x01\x00\x00\x00" + text),
                            (b"iCCP", b"p\x00\x00" + text), (b"iCCP", b"p\x00\x00" + zlib.compress(b"junk")),
                            (b"acTL", struct.pack(">II", 2 ** 31 - 1, 0)),
                            (b"fcTL", struct.pack(">IIIIIHHBB", 0, 2 ** 31, 2 ** 31, 0, 0, 1, 1, 0, 0)),
                            (b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01"
                                      + rng.choice((0, 9, 65535)).to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"),
                            (b"sBIT", b"\x00" * 9), (b"gAMA", b"\x00" * 4), (b"pHYs", b"\xff" * 9),
                            (b"aBCD", b"critical?")))
        chunks.insert(rng.randint(header + 1, len(chunks)), extra)
    elif kind == 6:  # the image data damaged inside a valid chunk
        idat = [i for i, (k, _) in enumerate(chunks) if k == b"IDAT"]
        if not idat:
            raise NotApplicable("no IDAT")
        i = rng.choice(idat)
        chunks[i] = (b"IDAT", rng.choice(GENERIC)(chunks[i][1], rng))
    elif kind == 7:  # a zero-filled image of tens of millions of pixels, a few kilobytes compressed
        width, height = rng.choice(((9000, 9000), (6000, 6000), (8000, 4000)))
        depth, colour, interlace = 8, rng.choice((0, 2)), 0
        chunks = [c for c in chunks if c[0] not in (b"IDAT", b"PLTE", b"tRNS")]
        header = next(i for i, (k, _) in enumerate(chunks) if k == b"IHDR")
        chunks.insert(header + 1, (b"IDAT", _zero_idat(width, height, 1 if colour == 0 else 3)))
    elif kind == 8:  # chunks dropped or repeated
        i = rng.randrange(len(chunks))
        if rng.random() < 0.5:
            del chunks[i]
        else:
            chunks.insert(i, chunks[i])
        return png_bytes(chunks)
    else:
        return png_bytes(chunks, fix_crc=False)
    chunks[header] = (b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, comp, filt, interlace))
    return png_bytes(chunks)


def jpeg_segments(data):
    """[(marker, body)] of a JPEG up to its scan; the entropy-coded rest as a last (None, bytes)."""
    if data[:2] != b"\xff\xd8":
        raise NotApplicable("not a JPEG")
    segments, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        length = int.from_bytes(data[at + 2:at + 4], "big")
        segments.append((marker, data[at + 4:at + 2 + length]))
        at += 2 + length
        if marker == 0xDA:
            break
    segments.append((None, data[at:]))
    return segments


def jpeg_bytes(segments):
    out = b"\xff\xd8"
    for marker, body in segments:
        out += body if marker is None else bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body
    return out


def _exif_orientation(value, ifd_count=1, offset=8):
    return (b"Exif\x00\x00MM\x00*" + offset.to_bytes(4, "big") + ifd_count.to_bytes(2, "big")
            + b"\x01\x12\x00\x03\x00\x00\x00\x01" + value.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x08")


def jpeg_mutation(data, rng):
    """A JPEG with one segment changed: the frame header's size, precision or components; a
    quantisation or Huffman table; the scan header; the scan cut or padded; an EXIF orientation
    (read when a photo is turned upright) that is no orientation, or an IFD that loops."""
    segments = jpeg_segments(data)
    frames = [i for i, (m, _) in enumerate(segments) if m in (0xC0, 0xC1, 0xC2)]
    kind = rng.randrange(7)
    if kind == 0 and frames:
        i = rng.choice(frames)
        marker, body = segments[i]
        height, width = rng.choice(((65500, 65500), (65500, 640), (0, 8), (8, 0), (65535, 1), (1, 65535)))
        body = body[:1] + struct.pack(">HH", height, width) + body[5:]
        segments[i] = (marker, body)
    elif kind == 1 and frames:
        i = rng.choice(frames)
        marker, body = segments[i]
        body = bytearray(body)
        field = rng.choice((0, 5) + tuple(range(6, len(body))))
        body[field] = rng.choice((0, 1, 3, 4, 5, 12, 16, 0x11, 0x44, 0xFF))
        segments[i] = (marker, bytes(body))
    elif kind == 2:
        tables = [i for i, (m, _) in enumerate(segments) if m in (0xDB, 0xC4, 0xDA, 0xDD)]
        if not tables:
            raise NotApplicable("no tables")
        i = rng.choice(tables)
        segments[i] = (segments[i][0], rng.choice(GENERIC)(segments[i][1], rng))
    elif kind == 3:
        marker, scan = segments[-1]
        segments[-1] = (None, rng.choice((scan[:rng.randrange(len(scan) + 1)], scan + b"\x00" * 100_000,
                                          scan.replace(b"\xff\xd9", b""), b"\xff\xd0" + scan)))
    elif kind == 4:
        value = rng.choice((0, 9, 65535, 5, 6, 7, 8))
        exif = rng.choice((_exif_orientation(value), _exif_orientation(value, ifd_count=65535),
                           _exif_orientation(value, offset=2 ** 31), _exif_orientation(value)[:20]))
        segments.insert(0, (0xE1, exif))
    elif kind == 5:
        i = rng.randrange(len(segments) - 1) if len(segments) > 1 else 0
        segments.insert(i, segments[i])
    else:
        segments.insert(0, (0xE2, b"ICC_PROFILE\x00\x01\x01" + rng.randbytes(rng.choice((16, 200, 60000)))))
    return jpeg_bytes(segments)


def image_dimensions(data, rng):
    """BMP, GIF and TIFF headers' width and height set to edge values (where each format keeps them)."""
    big = rng.choice((0, 1, 65535, 65500, 2 ** 31 - 1, 2 ** 32 - 1, 100_000))
    if data[:2] == b"BM":
        at = rng.choice((18, 22))
        return data[:at] + (big % 2 ** 32).to_bytes(4, "little") + data[at + 4:]
    if data[:3] == b"GIF":
        at = rng.choice((6, 8))
        return data[:at] + (big % 65536).to_bytes(2, "little") + data[at + 2:]
    if data[:2] in (b"II", b"MM"):
        order = "little" if data[:2] == b"II" else "big"
        for tag in (256, 257):  # ImageWidth, ImageLength
            at = data.find(tag.to_bytes(2, order))
            if at > 0 and rng.random() < 0.7:
                data = data[:at + 8] + (big % 2 ** 32).to_bytes(4, order) + data[at + 12:]
        return data
    raise NotApplicable("not a BMP, GIF or TIFF")
