"""A LoRA layer over nn.Linear, 1x1 nn.Conv2d, or a row block of a fused qkv projection.

`ΔW = s·B·A` (DESIGN.md §3): `B` m×r starts at 0, `A` r×n, `s = α/r`. The delta applies to the
output rows `rows` of the base weight (all rows, or the K or the V rows of a ViT qkv), so `m` is
the number of adapted rows and `n` the input width. A 1x1 convolution is the same map over
channels with every pixel a token. A layer may wrap another LoRA layer over the same weight: a
ViT's fused qkv gets a K layer wrapped by a V layer, each with its own A and B (as InfLoRA).

The layer also hosts the hooks the Janus-LoRA components need: an input observer (Online
Estimation adds `XᵀX`) and a gradient sink (Gradient Rectification): in backward it receives the
layer's input tokens X (T×n) and the loss gradient G (T×m) of the adapted output rows, whose
product `Gᵀ X` is the base weight's gradient `∂L/∂W` (m×n). The base weight itself never
requires grad (a weight that does slows the forward convolution by about a quarter here).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

InputObserver = Callable[[torch.Tensor], None]
GradientSink = Callable[[torch.Tensor, torch.Tensor], None]


class LoRALayer(nn.Module):
    """Wraps `base_layer`; adds `s·B·A` to output rows `rows[0]:rows[1]`."""

    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        rows: tuple[int, int] | None = None,
        tag: str = "",
    ) -> None:
        super().__init__()
        root = base_layer.root if isinstance(base_layer, LoRALayer) else base_layer
        if isinstance(root, nn.Conv2d):
            if root.kernel_size != (1, 1) or root.groups != 1:
                raise ValueError("LoRA on Conv2d needs a 1x1 kernel and groups=1")
        elif not isinstance(root, nn.Linear):
            raise TypeError(f"LoRA wraps nn.Linear or 1x1 nn.Conv2d, not {type(root)}")
        self.base_layer = base_layer
        self.root: nn.Linear | nn.Conv2d = root  # the weight every wrapped layer adapts
        self.tag = tag  # "k" / "v" for the two adapters of a fused qkv, else ""
        out_features = root.weight.shape[0]
        self.rows = rows if rows is not None else (0, out_features)
        if not 0 <= self.rows[0] < self.rows[1] <= out_features:
            raise ValueError(f"rows {self.rows} outside the {out_features} output rows")
        self.rank = rank
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.zeros(rank, self.in_features))  # (r, n)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank))  # (m, r)
        self.active = False  # no current-task factors until reset_factors()
        self.observer: InputObserver | None = None
        self.grad_sink: GradientSink | None = None

    @property
    def in_features(self) -> int:
        return int(self.root.weight.shape[1])

    @property
    def out_features(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def weight_2d(self) -> torch.Tensor:
        """The base weight as (out, in); a view, so updates reach the layer."""
        w = self.root.weight
        return w.view(w.shape[0], w.shape[1])

    def reset_factors(self, a: torch.Tensor) -> None:
        """Start a task: `A = a` (r×n) and `B = 0`."""
        with torch.no_grad():
            self.lora_A.copy_(a)
            self.lora_B.zero_()
        self.active = True

    def get_delta_weight(self) -> torch.Tensor:
        """`s·B·A` (m×n) for the adapted rows."""
        return self.scale * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the current factors into the fp32 base weight and deactivate them."""
        if self.active:
            r0, r1 = self.rows
            self.weight_2d[r0:r1] += self.get_delta_weight().to(self.weight_2d.dtype)
            self.lora_B.zero_()
            self.active = False

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs as rows: (..., n) for Linear, (B, n, H, W) → (B·H·W, n) for conv."""
        if isinstance(self.root, nn.Conv2d):
            stride = self.root.stride
            if stride != (1, 1):
                x = x[:, :, :: stride[0], :: stride[1]]
            return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        return x.reshape(-1, x.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = None  # (T, n), formed once for the observer and the sink
        if self.observer is not None:
            tokens = self._tokens(x.detach())
            self.observer(tokens)
        y = self.base_layer(x)
        if not self.active:
            return y
        r0, r1 = self.rows
        if isinstance(self.root, nn.Conv2d):
            stride = self.root.stride
            a = self.lora_A[:, :, None, None]  # (r, n, 1, 1)
            b = self.lora_B[:, :, None, None]  # (m, r, 1, 1)
            delta = F.conv2d(F.conv2d(x, a, stride=stride), b) * self.scale  # (B, m, H', W')
            self._sink_gradient(x, tokens, delta)
            if (r0, r1) == (0, y.shape[1]):
                return y + delta
            return torch.cat([y[:, :r0], y[:, r0:r1] + delta, y[:, r1:]], dim=1)
        delta = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale  # (..., m)
        self._sink_gradient(x, tokens, delta)
        if (r0, r1) == (0, y.shape[-1]):
            return y + delta
        return torch.cat([y[..., :r0], y[..., r0:r1] + delta, y[..., r1:]], dim=-1)

    def _sink_gradient(
        self, x: torch.Tensor, tokens: torch.Tensor | None, delta: torch.Tensor
    ) -> None:
        """In backward, hand (X (T×n), G (T×m)) to the sink; G = ∂L/∂delta = ∂L/∂y of the rows."""
        sink = self.grad_sink
        if sink is None or not delta.requires_grad:
            return
        if tokens is None:
            tokens = self._tokens(x.detach())  # (T, n)
        conv = isinstance(self.root, nn.Conv2d)

        def hook(grad: torch.Tensor) -> None:
            g = grad.permute(0, 2, 3, 1) if conv else grad  # (B, H', W', m) or (..., m)
            sink(tokens, g.reshape(-1, g.shape[-1]))

        delta.register_hook(hook)

    def extra_repr(self) -> str:
        tag = f", tag={self.tag}" if self.tag else ""
        return f"rank={self.rank}, scale={self.scale:g}, rows={self.rows}{tag}"
