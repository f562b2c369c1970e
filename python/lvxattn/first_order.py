"""Backward passes without a derivative of their own, refused loudly when differentiated.

The package's autograd Functions (attention, K/V projection, recompute, shared visual
features) compute their gradients in C++ kernels or in place, so those gradients have
no autograd history: under ``create_graph=True`` they would come back as constants
and a second-order term (a gradient penalty on dQ, say) would silently be zero.
``first_order_only`` makes such a backward run without recording and, when the
caller asked for a graph, returns gradients whose own backward raises a
RuntimeError that says double backward is not supported (as torch's fused
attention does). torch's ``once_differentiable`` is not enough: it marks the
gradients only when an incoming gradient requires grad, and dQ depends on Q, K, V
through the saved tensors even when it does not.
"""

from __future__ import annotations

import functools

import torch


class _RefuseDoubleBackward(torch.autograd.Function):
    """Identity on a backward's gradients, attached to a leaf that requires grad so
    that they do too; differentiating them raises."""

    @staticmethod
    def forward(ctx, name, anchor, *grads):
        ctx.name = name
        return tuple(None if g is None else g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(
            f"lvxattn: double backward through {ctx.name} is not supported: its backward is not "
            "differentiable (gradients taken with create_graph=True have no second derivative "
            f"through {ctx.name}). Differentiate those gradients only along paths that avoid it.")


def first_order_only(name: str):
    """Decorator for an autograd Function's ``backward`` (see the module docstring);
    ``name`` names the Function in the error."""

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grad_outputs):
            with torch.no_grad():
                grads = backward(ctx, *grad_outputs)
            if not torch.is_grad_enabled():  # create_graph=False: the usual case
                return grads
            single = not isinstance(grads, tuple)
            grads = (grads,) if single else grads
            tensors = [g if isinstance(g, torch.Tensor) else None for g in grads]
            anchor = torch.zeros((), requires_grad=True)
            marked = _RefuseDoubleBackward.apply(name, anchor, *tensors)
            out = tuple(m if isinstance(g, torch.Tensor) else g for m, g in zip(marked, grads))
            return out[0] if single else out

        return wrapper

    return decorate
