"""DP-SGD clipping backends: vectorised for Sequential MLPs, Opacus' grad samplers for the rest.

For a Linear layer on 2-D input the per-sample gradient of row i is ``g_i a_i^T`` (weight) and
``g_i`` (bias), where ``a_i`` is the layer's input and ``g_i`` the gradient of row i's loss with
respect to the layer's output. Its squared norm is ``|g_i|^2 (|a_i|^2 + 1)``, and the clipped sum
is one matrix product ``(c * G)^T A``. So one ordinary backward pass that keeps the layers' output
gradients (and skips the weight gradients autograd would otherwise compute) gives exactly the
clipped sum Opacus builds from materialised per-sample gradients, at a fraction of the cost for
small tabular models ("ghost clipping" with the book-keeping trick, in one pass).

Scope: an ``nn.Sequential`` of ``nn.Linear`` layers and parameter-free element-wise layers (ReLU,
Tanh, ...) with an optional final row-preserving ``Flatten``, i.e. every model
:mod:`medfed.models.nets` builds. Anything else goes through Opacus' grad samplers
(:func:`attach_opacus`, imported lazily).
Noise, clipping factor and scaling follow Opacus' ``DPOptimizer`` (same formulas; one noise draw
per step for all parameters instead of one per tensor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

import torch
from torch import nn

ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.ELU,
    nn.SiLU,
    nn.Softplus,
    nn.Hardtanh,
    nn.Identity,
)


def supports(model: nn.Module) -> TypeGuard[nn.Sequential]:
    """Whether :func:`attach` can clip ``model`` (see the module docstring for the scope)."""
    if type(model) is not nn.Sequential or len(model) == 0:
        return False
    layers = list(model)
    linears = [layer for layer in layers if type(layer) is nn.Linear]
    for i, layer in enumerate(layers):
        if type(layer) is nn.Linear or type(layer) in ELEMENTWISE:
            continue
        per_row = type(layer) is nn.Flatten and (
            layer.start_dim == 1
            or (layer.start_dim == 0 and linears and linears[-1].out_features == 1)
        )
        if not (per_row and i == len(layers) - 1):
            return False
    return bool(linears) and all(p.requires_grad for p in model.parameters())


class Taps(nn.Module):
    """Runs the wrapped Sequential and keeps each Linear layer's input and output.

    ``inputs``/``outputs`` hold the last forward pass; the outputs keep their ``.grad`` after
    ``backward()``: the per-sample output gradients divided by the batch size (the loss is a
    batch mean). State-dict keys carry a ``_module.`` prefix, as with Opacus' wrappers.
    """

    def __init__(self, module: nn.Sequential) -> None:
        super().__init__()
        self._module = module
        self.layers = [(layer, type(layer) is nn.Linear) for layer in module]
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs, outputs = self.inputs, self.outputs
        inputs.clear()
        outputs.clear()
        for layer, linear in self.layers:
            if not linear:
                x = layer(x)
                continue
            if x.dim() != 2:
                raise ValueError(
                    f"Vectorised DP-SGD needs 2-D inputs to Linear layers, got "
                    f"shape {tuple(x.shape)}; use grad_sample_mode='hooks'."
                )
            inputs.append(x)
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            else:
                x.requires_grad_()
            outputs.append(x)
        return x


def _noise(out: torch.Tensor, std: float, generator: torch.Generator, secure: bool) -> None:
    """Fill ``out`` with N(0, std^2); ``secure`` uses Opacus' floating-point-attack defence."""
    if not secure:
        out.normal_(0.0, std, generator=generator)
        return
    torch.empty(1).normal_(0.0, std, generator=generator)
    out.zero_()
    for _ in range(4):
        out.add_(torch.empty_like(out).normal_(0.0, std, generator=generator))
    out.div_(2.0)


def _grad_views(linears: list[nn.Linear]) -> tuple[torch.Tensor, list[tuple]]:
    """One flat gradient buffer and, per layer, (weight view, bias view or None, bias term)."""
    flat = torch.zeros(sum(p.numel() for m in linears for p in m.parameters()))
    views, offset = [], 0
    for layer in linears:
        out_f, in_f = layer.weight.shape
        weight = flat[offset : offset + out_f * in_f].view(out_f, in_f)
        offset += out_f * in_f
        bias = None if layer.bias is None else flat[offset : offset + out_f]
        offset += 0 if bias is None else out_f
        views.append((weight, bias, 0.0 if bias is None else 1.0))
    return flat, views


class VectorisedDPOptimizer:
    """Clips, noises and scales like Opacus' ``DPOptimizer``, then steps ``optimizer``.

    ``step()`` sets every parameter's gradient to ``(sum_i c_i grad_i + N(0, (noise clip)^2))
    / batch`` with ``c_i = min(1, clip / (|grad_i| + 1e-6))``; ``noise_step()`` does the same for
    an empty draw (noise only). The step hook (privacy accounting) runs once per step of either
    kind. The gradients live in one buffer that every step overwrites, so ``zero_grad`` does
    nothing.
    """

    def __init__(
        self,
        taps: Taps,
        optimizer: torch.optim.Optimizer,
        *,
        noise: float,
        clip: float,
        batch: float,
        generator: torch.Generator,
        secure: bool,
    ) -> None:
        self.taps, self.optimizer = taps, optimizer
        self.clip, self.batch, self.std = clip, batch, noise * clip / batch
        self.generator, self.secure = generator, secure
        self.linears = [
            layer for layer, linear in taps.layers if linear and isinstance(layer, nn.Linear)
        ]
        self.flat, self.views = _grad_views(self.linears)
        for layer, (weight, bias, _) in zip(self.linears, self.views, strict=True):
            layer.weight.grad = weight
            if bias is not None:
                layer.bias.grad = bias
        self.step_hook: Callable[[Any], None] | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def attach_step_hook(self, fn: Callable[[Any], None]) -> None:
        self.step_hook = fn

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear (see the class docstring)."""

    def _coefficients(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Per-row weight ``c_i * B / batch`` of the stored output gradients (B rows)."""
        squared = None
        for a, g, (_, _, bias) in zip(self.taps.inputs, grads, self.views, strict=True):
            term = torch.linalg.vecdot(g, g).mul_(torch.linalg.vecdot(a, a).add_(bias))
            squared = term if squared is None else squared.add_(term)
        rows = len(grads[0])
        if squared is None:  # unreachable: grads[0] exists, so the loop ran
            raise ValueError("No Linear layer to clip.")
        norms = squared.sqrt_().mul_(rows).add_(1e-6)
        return norms.reciprocal_().mul_(self.clip).clamp_(max=1.0).mul_(rows / self.batch)

    def _finish(self) -> None:
        if self.step_hook is not None:
            self.step_hook(self)
        self.optimizer.step()

    @torch.no_grad()
    def step(self) -> None:
        """One DP-SGD step from the last forward/backward pass."""
        grads = [z.grad if z.grad is not None else torch.zeros_like(z) for z in self.taps.outputs]
        coef = self._coefficients(grads).unsqueeze(1)
        _noise(self.flat, self.std, self.generator, self.secure)
        for a, g, (weight, bias, _) in zip(self.taps.inputs, grads, self.views, strict=True):
            scaled = g.mul_(coef)
            weight.addmm_(scaled.T, a)
            if bias is not None:
                bias.add_(scaled.sum(0))
        self.taps.inputs.clear()
        self.taps.outputs.clear()
        self._finish()

    @torch.no_grad()
    def noise_step(self) -> None:
        """One DP-SGD step for an empty Poisson draw: noise only."""
        _noise(self.flat, self.std, self.generator, self.secure)
        self._finish()

    def detach(self) -> None:
        """Give the model back: trainable again, no gradients or stored activations."""
        for p in self.taps._module.parameters():
            p.requires_grad_(True)
            p.grad = None
        self.taps.inputs.clear()
        self.taps.outputs.clear()


def attach(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise: float,
    clip: float,
    batch: float,
    generator: torch.Generator,
    secure: bool,
) -> tuple[Taps, VectorisedDPOptimizer]:
    """Wrap ``model`` for vectorised DP-SGD; call ``detach()`` on the optimizer when done.

    The parameters stop requiring gradients until then, so autograd computes only the output
    gradients the clipping needs.
    """
    if not supports(model):
        raise ValueError(
            "Vectorised DP-SGD supports an nn.Sequential of Linear and element-wise "
            "layers; use grad_sample_mode='hooks' for this model."
        )
    taps = Taps(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return taps, VectorisedDPOptimizer(
        taps, optimizer, noise=noise, clip=clip, batch=batch, generator=generator, secure=secure
    )


def attach_opacus(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    mode: str,
    *,
    noise: float,
    clip: float,
    batch: float,
    generator: torch.Generator,
    secure: bool,
) -> tuple[nn.Module, Any, Callable[[], None], Callable[[], None]]:
    """Opacus' grad-sample module (``hooks`` or ``functorch``) and ``DPOptimizer``.

    Returns the model to call, the optimizer, a noise-only step for an empty draw, and the
    cleanup that removes Opacus' hooks from ``model``.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator

    ModuleValidator.validate(model, strict=True)
    wrapped = GradSampleModule(model, force_functorch=mode == "functorch")
    dp_opt = DPOptimizer(
        opt,
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=batch,
        generator=generator,
        secure_mode=secure,
    )
    params = list(dp_opt.params)

    def empty_step() -> None:
        dp_opt.zero_grad(set_to_none=True)
        for p in params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        dp_opt.step()
        dp_opt.zero_grad(set_to_none=True)

    return wrapped, dp_opt, empty_step, wrapped._close
