"""Every op of the table (tests/op_table.py) through one set of checks against torch.

For each entry and each dtype it accepts, every sample: the output equal to torch's (float64 to
1e-10, float32 to 1e-5, float16 to 4e-3; NaN and inf where torch has them), with torch's dtype
and shape; the gradient for a random cotangent equal to torch's, on kinks, bounds and ties too;
running statistics updated in place as torch's, every other input left as it was. Then
finite differences in float64 away from the kinks, one-line refusals (and what torch does with
the same input), float16 refused in one line where the op does not take it, every exported op
in the table, and docs/ops.md and chapter 1's kink table as the table generates them. Last, the
fixes the table asked for that a sample cannot show: the pooler's repr and a step with no RoI.
"""
import inspect
import zlib

import numpy as np
import pytest

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from op_table import (CHAPTER, DOCS, ENTRIES, TABLE, cast, chapter_block, chapter_kink_lines, grad_positions,
                      our_args, outputs, refusals_of, render_docs, sample_dtypes, samples_of, wrap)
from tinymaskrcnn.core.gradcheck import numerical_gradient, rel_error

TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5, np.dtype(np.float16): 4e-3}
# gradcheck runs where the inputs that get a gradient hold at most this many numbers (each is
# perturbed twice): the pooler's feature pyramid is left to roi_align's entry
GRADCHECK_SIZE = 400
ids = [e.name for e in TABLE]


# ----- both sides of a call ---------------------------------------------------------------------------


def torch_side(torch, value, requires_grad):
    """torch's copy of an argument; floating arrays that want a gradient become leaves."""
    if isinstance(value, np.ndarray):
        wants = requires_grad and value.dtype.kind == "f"
        return torch.tensor(value, requires_grad=wants)
    if isinstance(value, list):
        return [torch_side(torch, v, requires_grad) for v in value]
    if isinstance(value, dict):
        return {k: torch_side(torch, v, requires_grad) for k, v in value.items()}
    return value


def leaves(value):
    """The tensors (ours or torch's) that require a gradient, in argument order."""
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    return [value] if getattr(value, "requires_grad", False) else []


def flat(result):
    """An op's result (a tensor, a tuple or list of them) as a flat list."""
    if isinstance(result, (list, tuple)):
        return [o for r in result for o in flat(r)]
    return [result]


def assert_same(ours, theirs, dtype, exact, what):
    """Our array against torch's: dtype, shape, and values (NaN and inf at the same places)."""
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype}, torch gives {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape}, torch gives {theirs.shape}"
    if exact or ours.dtype.kind != "f":
        np.testing.assert_array_equal(ours, theirs, err_msg=what)
        return
    a, b = ours.astype(np.float64), theirs.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{what}: NaN at other places than torch's")
    infinite = np.isinf(a) | np.isinf(b)
    np.testing.assert_array_equal(a[infinite], b[infinite], err_msg=f"{what}: inf at other places than torch's")
    finite = np.isfinite(a) & np.isfinite(b)
    err = rel_error(a[finite], b[finite])
    assert err <= TOL[np.dtype(dtype)], f"{what}: relative error {err:.3g} > {TOL[np.dtype(dtype)]:g}"


def equal_arrays(a, b):
    """Bitwise the same values (NaN equal to NaN), walking lists and dicts."""
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, list):
        return all(equal_arrays(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return all(equal_arrays(a[k], b[k]) for k in a)
    return True


def copies(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return [copies(v) for v in value]
    if isinstance(value, dict):
        return {k: copies(v) for k, v in value.items()}
    return value


def cotangents(entry, index, results):
    rng = np.random.default_rng(zlib.crc32(f"{entry.name} {index}".encode()))
    return [rng.standard_normal(r.shape).astype(r.dtype) for r in results]


def backward(ours_results, cots):
    """Pull the cotangents back through our outputs that are on the tape."""
    terms = [(r * c).sum() for r, c in zip(ours_results, cots) if isinstance(r, tm.Tensor) and r.requires_grad]
    if terms:
        sum(terms[1:], terms[0]).backward()


def grad_array(leaf, torch_leaf=False):
    g = leaf.grad
    if g is None:
        return None
    return g.numpy() if torch_leaf else g


# ----- the generic checks -----------------------------------------------------------------------------


def test_every_exported_op_has_an_entry():
    """A new op cannot skip the table: every function and Module tm.functional and tm.ops
    export (a container such as ops.PastedMasks is no op), and the detector's parts."""
    exported = {f"F.{name}" for name in F.__all__}
    exported |= {f"ops.{name}" for name, value in vars(tm.ops).items() if not name.startswith("_") and
                 (inspect.isfunction(value) or inspect.isclass(value) and issubclass(value, tm.nn.Module))}
    exported |= {"BoxCoder.encode", "BoxCoder.decode", "Matcher", "AnchorGenerator", "fastrcnn_loss",
                 "maskrcnn_loss", "Tensor.clamp"}
    missing = sorted(exported - set(ENTRIES))
    assert not missing, f"exported ops without an entry in tests/op_table.py: {missing}"
    assert len(ENTRIES) == len(TABLE), "two entries share a name"


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=["float64", "float32", "float16"])
@pytest.mark.parametrize("entry", TABLE, ids=ids)
def test_matches_torch(torch, entry, dtype):
    """Every sample: output, dtype and shape, gradient, in-place updates and untouched inputs."""
    if dtype not in entry.dtypes:
        pytest.skip(f"{entry.name} refuses {np.dtype(dtype).name} (test_refused_dtypes)")
    for index, sample in enumerate(samples_of(entry)):
        if dtype not in sample_dtypes(entry, sample):
            continue
        what = f"{entry.name}, {sample.edge or 'random input'}, {np.dtype(dtype).name}"
        args, kwargs = cast(list(sample.args), dtype, sample.layout), cast(sample.kwargs, dtype)
        before = copies(args)
        wanted = grad_positions(entry, sample)
        theirs_args = [torch_side(torch, a, i in wanted) for i, a in enumerate(args)]  # copies, before ours runs
        ours_args = our_args(entry, sample, args)
        ours = flat(entry.op(*ours_args, **kwargs))
        if sample.differs:  # ours parts from torch here on purpose: our own answer, no gradient
            expected = sample.expect(*args)
            for k, (o, e) in enumerate(zip(outputs(ours), expected)):
                assert_same(o, e, dtype, entry.exact, f"{what}, output {k}")
            cots = cotangents(entry, index, outputs(ours))
            backward(ours, cots)
            for leaf in leaves(ours_args):
                assert leaf.grad is None or not leaf.grad.any(), f"{what}: a non-zero gradient"
            continue
        theirs = flat(entry.ref(torch)(*theirs_args, **torch_side(torch, kwargs, False)))
        assert len(ours) == len(theirs), f"{what}: {len(ours)} outputs, torch gives {len(theirs)}"
        for k, (o, t) in enumerate(zip(outputs(ours), theirs)):
            assert_same(o, t.detach().numpy(), dtype, entry.exact, f"{what}, output {k}")
        for i in sample.mutates:  # running statistics: updated as torch updates them
            assert_same(args[i], theirs_args[i].numpy(), dtype, False, f"{what}, argument {i} updated in place")
        if leaves(ours_args):
            cots = cotangents(entry, index, outputs(ours))
            backward(ours, cots)
            pairs = [(t, torch.tensor(c)) for t, c in zip(theirs, cots) if t.requires_grad]
            if pairs:
                torch.autograd.backward(*zip(*pairs))
            for k, (o, t) in enumerate(zip(leaves(ours_args), leaves(theirs_args))):
                g_ours, g_theirs = grad_array(o), grad_array(t, torch_leaf=True)
                if g_ours is None and g_theirs is None:
                    continue
                g_ours = np.zeros_like(o.data) if g_ours is None else g_ours
                g_theirs = np.zeros_like(o.data) if g_theirs is None else g_theirs
                assert_same(g_ours, g_theirs, dtype, False, f"{what}, gradient {k}")
        for i, (a, b) in enumerate(zip(args, before)):
            if i not in sample.mutates:
                assert equal_arrays(a, b), f"{what}: argument {i} was modified"


@pytest.mark.parametrize("entry", [e for e in TABLE if e.differentiable], ids=[e.name for e in TABLE if e.differentiable])
def test_finite_differences(entry):
    """float64, every sample off the kinks with a finite output: backward against central differences."""
    checked = 0
    for index, sample in enumerate(samples_of(entry)):
        if sample.kink or not sample.smooth or sample.differs or np.float64 not in sample_dtypes(entry, sample):
            continue
        args = our_args(entry, sample, cast(list(sample.args), np.float64, sample.layout))
        kwargs = cast(sample.kwargs, np.float64)
        inputs = [t for t in leaves(args) if t.size]
        if not inputs or sum(t.size for t in inputs) > GRADCHECK_SIZE:
            continue
        results = flat(entry.op(*args, **kwargs))
        if not all(np.isfinite(r.data).all() for r in results):
            continue
        cots = cotangents(entry, index, [r.data for r in results])
        backward(results, cots)

        def value():
            with tm.no_grad():
                return np.concatenate([o.ravel() for o in outputs(entry.op(*args, **kwargs))])

        flat_cot = np.concatenate([c.ravel() for c in cots])
        for k, t in enumerate(inputs):
            analytic = t.grad if t.grad is not None else np.zeros_like(t.data)
            numeric = numerical_gradient(value, t.data, flat_cot)
            err = rel_error(analytic, numeric)
            assert err < 1e-7, f"{entry.name}, {sample.edge or 'random input'}, input {k}: relative error {err:.2g}"
        checked += 1
    assert checked, f"{entry.name}: no sample was small and smooth enough for finite differences"


@pytest.mark.filterwarnings("ignore:Using a target size")  # torch's word on the smooth L1 broadcast we refuse
@pytest.mark.parametrize("entry", [e for e in TABLE if refusals_of(e)], ids=[e.name for e in TABLE if refusals_of(e)])
def test_refusals(torch, entry):
    """Each refused input: the declared error, one line, naming the argument and what it
    accepts; and torch refuses it too, or accepts it, as the table says (not run where torch
    would read outside its input)."""
    for refusal in refusals_of(entry):
        args = [wrap(a, entry.differentiable) for a in refusal.args]
        with pytest.raises(refusal.error) as info:
            entry.op(*args, **refusal.kwargs)
        message = str(info.value)
        assert "\n" not in message, f"{entry.name}: a message of more than one line: {message!r}"
        for word in refusal.words:
            assert word in message, f"{entry.name}: {word!r} not in {message!r}"
        theirs = [torch_side(torch, a, False) for a in refusal.args]
        theirs_kwargs = torch_side(torch, refusal.kwargs, False)
        if refusal.torch == "refuses":
            with pytest.raises(Exception):
                entry.ref(torch)(*theirs, **theirs_kwargs)
        elif refusal.torch == "accepts":
            entry.ref(torch)(*theirs, **theirs_kwargs)


@pytest.mark.parametrize("entry", TABLE, ids=ids)
def test_refused_dtypes(torch, entry):
    """A float dtype the op does not take gets one line naming it and the dtypes it takes;
    the dtypes the table says torch takes are the ones torch takes."""
    sample = next(s for s in samples_of(entry) if not s.edge)
    for dtype in (np.float64, np.float32, np.float16):
        args, kwargs = cast(list(sample.args), dtype), cast(sample.kwargs, dtype)
        theirs = [torch_side(torch, a, False) for a in args]
        if dtype in entry.torch_dtypes:
            entry.ref(torch)(*theirs, **torch_side(torch, kwargs, False))
        else:
            with pytest.raises(Exception):
                entry.ref(torch)(*theirs, **torch_side(torch, kwargs, False))
        if dtype in entry.dtypes:
            continue
        with pytest.raises(TypeError) as info:
            entry.op(*our_args(entry, sample, args), **kwargs)
        message = str(info.value)
        assert "\n" not in message and np.dtype(dtype).name in message and "float32" in message, message


def test_docs_are_generated_from_the_table():
    """docs/ops.md and chapter 1's kink table are what the table generates: `python tests/op_table.py`."""
    assert DOCS.read_text() == render_docs(), "docs/ops.md is out of date: run python tests/op_table.py"
    assert chapter_block(CHAPTER.read_text()) == chapter_kink_lines(), \
        "the kink table of notebooks/src/01_tape.py is out of date: run python tests/op_table.py"


# ----- what a sample cannot show ----------------------------------------------------------------------


def test_pooler_repr_shows_its_settings_as_torchvisions(torch):
    from torchvision.ops import MultiScaleRoIAlign as TorchPooler

    for args in ((["0", "1", "2", "3"], 7, 2), (["feat"], (14, 7), -1)):
        assert repr(tm.ops.MultiScaleRoIAlign(*args)) == repr(TorchPooler(*args))


def test_zero_rois_give_zero_losses_and_zero_gradients(rng):
    """A step whose sampler keeps no RoI: both box losses are 0, finite, and the layer that
    made the logits gets a zero gradient (torchvision's fastrcnn_loss gives NaN there)."""
    from tinymaskrcnn.models.roi_heads import fastrcnn_loss

    layer = tm.nn.Linear(6, 3 * 5)
    features = tm.Tensor(np.zeros((0, 6), np.float32))
    out = layer(features)
    class_logits, box_regression = out[:, :3], out[:, 3:]
    losses = fastrcnn_loss(class_logits, box_regression, [np.zeros(0, np.int64)], [np.zeros((0, 4), np.float32)])
    total = losses[0] + losses[1]
    total.backward()
    assert [float(l.item()) for l in losses] == [0.0, 0.0]
    assert total.dtype == np.float32
    for name, p in layer.named_parameters():
        assert p.grad is not None and not p.grad.any(), name
