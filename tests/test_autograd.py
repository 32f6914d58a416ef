"""The tape: Tensor arithmetic, reductions, shapes and indexing against torch, and the tape's rules."""
import numpy as np
import pytest
from helpers import assert_matches_torch

import tinymaskrcnn as tm
from tinymaskrcnn.core.gradcheck import gradcheck

DTYPES = [np.float64, np.float32]

# (name, our function, torch function, input shapes): each checked forward and backward.
BINARY = [
    ("add", lambda a, b: a + b, lambda a, b: a + b),
    ("sub", lambda a, b: a - b, lambda a, b: a - b),
    ("mul", lambda a, b: a * b, lambda a, b: a * b),
    ("div", lambda a, b: a / (b * b + 0.5), lambda a, b: a / (b * b + 0.5)),
]
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 5), (3, 1)), ((1, 4), (3, 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES)
@pytest.mark.parametrize("name,ours,theirs", BINARY, ids=[b[0] for b in BINARY])
def test_binary_broadcasting_matches_torch(torch, rng, dtype, shapes, name, ours, theirs):
    arrays = [rng.standard_normal(s) for s in shapes]
    assert_matches_torch(ours, theirs, arrays, dtype)


UNARY = [
    ("exp", lambda x: x.exp(), lambda x: x.exp()),
    ("log", lambda x: (x * x + 0.1).log(), lambda x: (x * x + 0.1).log()),
    ("pow", lambda x: (x * x + 0.2) ** 1.5, lambda x: (x * x + 0.2) ** 1.5),
    ("sqrt", lambda x: (x * x + 0.2).sqrt(), lambda x: (x * x + 0.2).sqrt()),
    ("neg_rsub", lambda x: 2.0 - (-x), lambda x: 2.0 - (-x)),
    ("rdiv", lambda x: 1.0 / (x * x + 1.0), lambda x: 1.0 / (x * x + 1.0)),
    ("sum_all", lambda x: x.sum(), lambda x: x.sum()),
    ("sum_axis", lambda x: x.sum(axis=1), lambda x: x.sum(dim=1)),
    ("sum_axes_keep", lambda x: x.sum(axis=(0, 2), keepdims=True), lambda x: x.sum(dim=(0, 2), keepdim=True)),
    ("mean", lambda x: x.mean(), lambda x: x.mean()),
    ("mean_axis", lambda x: x.mean(axis=-1), lambda x: x.mean(dim=-1)),
    ("reshape", lambda x: x.reshape(5, -1) * 2.0, lambda x: x.reshape(5, -1) * 2.0),
    ("flatten", lambda x: x.flatten(1), lambda x: x.flatten(1)),
    ("transpose", lambda x: x.transpose(2, 0, 1), lambda x: x.permute(2, 0, 1)),
    ("slice", lambda x: x[1:, ::2, -3:], lambda x: x[1:, ::2, -3:]),
    ("gather_repeats", lambda x: x[np.array([0, 1, 0, 0])], lambda x: x[[0, 1, 0, 0]]),
    # basic indexing's backward assigns, advanced indexing's adds: both kinds inside one tuple
    ("basic_int_none_ellipsis", lambda x: x[np.int64(1), None, ..., 2:4], lambda x: x[1, None, ..., 2:4]),
    ("slice_then_repeats", lambda x: x[:, np.array([0, 2, 0])], lambda x: x[:, [0, 2, 0]]),
    ("mask", lambda x: x[x.data > 0], lambda x: x[x > 0]),
    ("matmul", lambda x: x.reshape(6, 5) @ x.reshape(5, 6), lambda x: x.reshape(6, 5) @ x.reshape(5, 6)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,ours,theirs", UNARY, ids=[u[0] for u in UNARY])
def test_unary_matches_torch(torch, rng, dtype, name, ours, theirs):
    assert_matches_torch(ours, theirs, [rng.standard_normal((2, 3, 5))], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cat_and_stack_match_torch(torch, rng, dtype):
    arrays = [rng.standard_normal((2, 3)), rng.standard_normal((4, 3)), rng.standard_normal((2, 3))]
    assert_matches_torch(lambda a, b, c: tm.cat([a, b, c], dim=0) * tm.cat([c, b, a], dim=0),
                         lambda a, b, c: torch.cat([a, b, c], 0) * torch.cat([c, b, a], 0), arrays, dtype)
    arrays = [rng.standard_normal((2, 3)) for _ in range(3)]
    assert_matches_torch(lambda a, b, c: tm.stack([a, b, c], dim=1) ** 2,
                         lambda a, b, c: torch.stack([a, b, c], 1) ** 2, arrays, dtype)


def test_cat_with_constant_gives_gradient_only_to_tensors(rng):
    a = tm.Tensor(rng.standard_normal((2, 2)), requires_grad=True)
    out = tm.cat([a, np.ones((1, 2))], dim=0)
    out.backward(np.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(a.grad, [[0.0, 1.0], [2.0, 3.0]])


def test_reused_tensor_accumulates_gradient(torch, rng):
    # x feeds three paths; its gradient is the sum of all three.
    f = lambda x: (x * x + x.exp() * x).sum(axis=0) / (x[0] + 3.0)
    assert_matches_torch(f, f, [rng.standard_normal((4, 3))], np.float64)


def test_leaf_gradients_accumulate_across_backward_calls(rng):
    x = tm.Tensor(rng.standard_normal(5), requires_grad=True)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 3.0 + 2 * x.data, rtol=1e-15)
    x.zero_grad()
    assert x.grad is None


def test_finite_differences_through_a_composite_expression(rng):
    a = tm.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = tm.Tensor(rng.standard_normal((4,)), requires_grad=True)

    def f(a, b):
        h = (a * b - b / (a * a + 1.0)).exp()[:, 1:]
        return tm.stack([h.sum(axis=1), h.mean(axis=1) ** 2], dim=0) @ h.T

    for err in gradcheck(f, [a, b]):
        assert err < 1e-8


def test_no_grad_records_nothing(rng):
    x = tm.Tensor(rng.standard_normal(3), requires_grad=True)
    with tm.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.is_leaf
    assert (x * 2.0).requires_grad  # the flag is restored on exit

    @tm.no_grad()
    def double(t):
        return t * 2.0

    assert not double(x).requires_grad


def test_detach_and_constants_stop_gradients(rng):
    x = tm.Tensor(rng.standard_normal(3), requires_grad=True)
    y = (x.detach() * x).sum()
    y.backward()
    np.testing.assert_array_equal(x.grad, x.data)


def test_retain_grad_keeps_an_intermediate_gradient(rng):
    x = tm.Tensor(rng.standard_normal(3), requires_grad=True)
    h = (x * 2.0).retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad, 2 * h.data)


def test_second_backward_needs_retain_graph(rng):
    x = tm.Tensor(rng.standard_normal(3), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_backward_errors_are_clear(rng):
    x = tm.Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match="one-element"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        (x * 2.0).backward(np.ones((3, 2)))
    with pytest.raises(RuntimeError, match="does not require grad"):
        tm.Tensor(np.ones(2)).sum().backward()
    with pytest.raises(TypeError, match="floating"):
        tm.Tensor(np.arange(3), requires_grad=True)


def test_deep_tape_has_no_recursion_limit():
    x = tm.Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):  # deeper than Python's default recursion limit
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 1.0001 ** 5000, rtol=1e-12)


def test_dtypes_are_kept():
    assert tm.Tensor([1.0, 2.0]).dtype == np.float32  # Python floats: the default dtype
    x = tm.Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = (x * 2.5 + 1).sum()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32
    z = x.astype(np.float64)
    assert z.dtype == np.float64
    z.sum().backward()
    assert x.grad.dtype == np.float32


def test_tape_does_not_keep_intermediate_arrays_alive(rng):
    import gc
    import weakref

    x = tm.Tensor(rng.standard_normal(1000), requires_grad=True)
    h = x * 2.0           # Mul saves x and the constant, not its own output
    alive = weakref.ref(h.data)
    y = h.sum()           # Sum saves only a shape
    del h
    gc.collect()
    assert alive() is None  # the tape holds nodes, not the intermediate's array
    y.backward()
    np.testing.assert_array_equal(x.grad, np.full(1000, 2.0))
