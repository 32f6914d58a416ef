"""The fully connected layer, torch's layout: y = x W^T + b.

Shapes: x (..., in), W (out, in), b (out,), y (..., out). The leading axes of x are a batch:
flatten them to rows, X (M, in), Y (M, out) = X W^T + b.

forward    Y_mk = sum_i X_mi W_ki + b_k
backward   dL/dX_mi = sum_k dL/dY_mk W_ki          ->  dL/dX = dL/dY W
           dL/dW_ki = sum_m dL/dY_mk X_mi          ->  dL/dW = dL/dY^T X
           dL/db_k  = sum_m dL/dY_mk               ->  dL/db = column sums of dL/dY
"""
import math

from ..core.autograd import Function


class Linear(Function):
    """y = x W^T + b over any leading axes of x."""

    def forward(self, x, weight, bias=None):
        self.x, self.weight = x, weight
        y = x @ weight.T
        return y if bias is None else y + bias

    def backward(self, g):
        out_features, in_features = self.weight.shape
        m = math.prod(g.shape[:-1])  # the leading axes as one batch of m rows (sizes given: one may be 0)
        rows = g.reshape(m, out_features)
        dx = g @ self.weight if self.needs_input_grad[0] else None
        dw = rows.T @ self.x.reshape(m, in_features) if self.needs_input_grad[1] else None
        db = rows.sum(axis=0) if self.needs_input_grad[2] else None
        return dx, dw, db


def linear(input, weight, bias=None):
    """torch.nn.functional.linear: input (..., in), weight (out, in), bias (out,) -> (..., out)."""
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if input.ndim < 1 or input.shape[-1] != in_features:
        raise ValueError(f"linear: input shape {tuple(input.shape)} does not end in in_features={in_features} "
                         f"of weight shape {tuple(weight.shape)}; flatten the input to (..., {in_features})")
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(f"linear: bias shape {tuple(bias.shape)} must be (out_features,) = ({out_features},)")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"linear: {name} dtype {t.dtype} differs from input dtype {input.dtype}; "
                            f"convert one of them with .astype so that both match")
    return Linear.apply(input, weight, bias)
