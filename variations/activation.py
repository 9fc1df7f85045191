"""Activation functions (used inside the `mlp` feed-forward block): `--activation_variant NAME`.

Every class takes `(config)` and maps a tensor to a tensor of the same shape and dtype; `cost(n)`
counts the operations for n elements (variations/cost.py). Most activations are stateless and
elementwise: they subclass `_Elementwise` and state their cost for ONE element in `PER_ELEMENT`.

Counting conventions for one element (what a hardware designer would build):
    exp      one per transcendental unit: exp, tanh, erf, sigmoid's exp, softplus (one each, as in
             cost.py; a general power x^p = exp(p ln x) also counts one)
    cmp      max/min/clamp/abs/sign selects (ReLU is one, a two-sided clamp two)
    elementwise  other adds and multiplies, constant scalings included
    div      true divisions (division by a constant is a multiply by its reciprocal: elementwise)
    act_mem  1: the input (or output) kept for the backward pass; 0 for the identity
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError
from variations.cost import Cost
from variations.registry import knob, register

LEAKY_RELU_SLOPE = knob("leaky_relu_slope", 0.01, "leaky_relu: slope for negative inputs")
PRELU_INIT = knob("prelu_init", 0.25, "prelu: initial value of the learned negative slope")
RELU_POWER_EXPONENT = knob("relu_power_exponent", 2.0, "relu_power: exponent p of max(x, 0)^p (must be > 0)")
ELU_ALPHA = knob("elu_alpha", 1.0, "elu: saturation value -alpha for large negative inputs", minimum=0.0)
CELU_ALPHA = knob("celu_alpha", 1.0, "celu: alpha of alpha (exp(x / alpha) - 1) for negative inputs (must be > 0)")


class _Elementwise(nn.Module):
    """Base of the elementwise activations: `(config)` constructor, `cost(n)` = n x PER_ELEMENT."""

    PER_ELEMENT = Cost(act_mem=1)  # operations for one element; subclasses override

    def __init__(self, config):
        super().__init__()

    def cost(self, n: int) -> Cost:
        c = self.PER_ELEMENT.repeat(n)
        c.params = sum(p.numel() for p in self.parameters())  # learned constants, not per element
        return c


# ---------------------------------------------------------------- ReLU family

@register("activation", "relu")
class ReLU(_Elementwise):
    """ReLU: max(x, 0) (Nair & Hinton, 2010)."""

    PER_ELEMENT = Cost(cmp=1, act_mem=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


@register("activation", "relu6")
class ReLU6(_Elementwise):
    """ReLU6: min(max(x, 0), 6) (Krizhevsky, 2010; MobileNet, Howard et al., 2017)."""

    PER_ELEMENT = Cost(cmp=2, act_mem=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x)


@register("activation", "leaky_relu", knobs=[LEAKY_RELU_SLOPE])
class LeakyReLU(_Elementwise):
    """Leaky ReLU: x if x > 0 else slope x, slope --leaky_relu_slope (Maas et al., 2013)."""

    PER_ELEMENT = Cost(elementwise=1, cmp=1, act_mem=1)

    def __init__(self, config):
        super().__init__(config)
        self.slope = float(config.leaky_relu_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.slope)


@register("activation", "prelu", knobs=[PRELU_INIT])
class PReLU(_Elementwise):
    """PReLU: x if x > 0 else a x, one learned scalar a initialised to --prelu_init (He et al., 2015).

    One slope shared by every channel of the layer (He et al.'s "channel-shared" form). The slope is
    a 0-dim parameter, so it gets no weight decay (model.configure_optimizers).
    """

    PER_ELEMENT = Cost(elementwise=1, cmp=1, act_mem=1)

    def __init__(self, config):
        super().__init__(config)
        self.slope = nn.Parameter(torch.tensor(float(config.prelu_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a 0-dim fp32 slope times a bf16/fp16 x stays in x's dtype (type promotion favours x)
        return torch.where(x > 0, x, x * self.slope)


@register("activation", "squared_relu")
class SquaredReLU(_Elementwise):
    """Squared ReLU: max(x, 0)^2 (Primer, So et al., 2021)."""

    PER_ELEMENT = Cost(elementwise=1, cmp=1, act_mem=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


@register("activation", "relu_power", knobs=[RELU_POWER_EXPONENT])
class ReLUPower(_Elementwise):
    """ReLU to a power: max(x, 0)^p, p = --relu_power_exponent > 0 (generalises Primer's p = 2, So et al., 2021).

    Cost: an integer p is p - 1 multiplies; any other p is one power unit, x^p = exp(p ln x), counted
    as one exp and one multiply. For p < 1 the derivative at 0+ is unbounded; at x <= 0 it is 0.
    """

    def __init__(self, config):
        super().__init__(config)
        p = float(config.relu_power_exponent)
        if not p > 0 or not math.isfinite(p):
            raise UserError(f"--relu_power_exponent must be a finite number > 0, got {config.relu_power_exponent}")
        self.p = p
        if p.is_integer():
            self.PER_ELEMENT = Cost(elementwise=int(p) - 1, cmp=1, act_mem=1)
        else:
            self.PER_ELEMENT = Cost(elementwise=1, exp=1, cmp=1, act_mem=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).pow(self.p)


# ---------------------------------------------------------------- smooth gates: GELU, SiLU, Mish

@register("activation", "gelu")
class GELU(_Elementwise):
    """GELU, exact erf form: x * Phi(x) (Hendrycks & Gimpel, 2016)."""

    PER_ELEMENT = Cost(elementwise=3, exp=1, act_mem=1)  # 0.5 x (1 + erf(x / sqrt 2)): erf counted as one exp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


@register("activation", "gelu_tanh")
class GELUTanh(_Elementwise):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (Hendrycks & Gimpel, 2016; GPT-2)."""

    # x^3 (2), * 0.044715, + x, * sqrt(2/pi), 1 + tanh, * x, * 0.5: 8 multiplies/adds, one tanh
    PER_ELEMENT = Cost(elementwise=8, exp=1, act_mem=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


@register("activation", "squared_gelu")
class SquaredGELU(_Elementwise):
    """Squared GELU: (x * Phi(x))^2 with exact erf GELU; smooth analogue of Primer's squared ReLU (So et al., 2021)."""

    PER_ELEMENT = Cost(elementwise=4, exp=1, act_mem=1)  # GELU's 3 + the square

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x).square()


@register("activation", "silu")
class SiLU(_Elementwise):
    """SiLU / swish: x * sigmoid(x) (Elfwing et al., 2017; Ramachandran et al., 2017)."""

    PER_ELEMENT = Cost(elementwise=1, exp=1, div=1, act_mem=1)  # x / (1 + exp(-x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


@register("activation", "mish")
class Mish(_Elementwise):
    """Mish: x * tanh(softplus(x)) = x tanh(ln(1 + e^x)) (Misra, 2019)."""

    PER_ELEMENT = Cost(elementwise=2, exp=2, act_mem=1)  # softplus (one unit, + 1), tanh, * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(x)


# ---------------------------------------------------------------- exponential linear units

@register("activation", "elu", knobs=[ELU_ALPHA])
class ELU(_Elementwise):
    """ELU: x if x > 0 else alpha (e^x - 1), alpha = --elu_alpha (Clevert et al., 2015)."""

    PER_ELEMENT = Cost(elementwise=2, exp=1, cmp=1, act_mem=1)  # select, exp, - 1, * alpha

    def __init__(self, config):
        super().__init__(config)
        self.alpha = float(config.elu_alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x, self.alpha)


@register("activation", "selu")
class SELU(_Elementwise):
    """SELU: lambda (x if x > 0 else alpha (e^x - 1)), lambda ~ 1.0507, alpha ~ 1.6733 (Klambauer et al., 2017)."""

    PER_ELEMENT = Cost(elementwise=3, exp=1, cmp=1, act_mem=1)  # ELU's select, exp, - 1, * alpha, then * lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.selu(x)


@register("activation", "celu", knobs=[CELU_ALPHA])
class CELU(_Elementwise):
    """CELU: max(0, x) + min(0, alpha (exp(x / alpha) - 1)), alpha = --celu_alpha > 0 (Barron, 2017).

    With alpha = 1 (the default) it equals ELU; unlike ELU its derivative is continuous for any alpha.
    """

    PER_ELEMENT = Cost(elementwise=3, exp=1, cmp=1, act_mem=1)  # select, x * (1/alpha), exp, - 1, * alpha

    def __init__(self, config):
        super().__init__(config)
        alpha = float(config.celu_alpha)
        if not alpha > 0:
            raise UserError(f"--celu_alpha must be > 0 (it divides x), got {config.celu_alpha}")
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.celu(x, self.alpha)


# ---------------------------------------------------------------- saturating and piecewise curves

@register("activation", "softplus")
class Softplus(_Elementwise):
    """Softplus: ln(1 + e^x), a smooth ReLU (Dugas et al., 2001)."""

    PER_ELEMENT = Cost(elementwise=1, exp=1, act_mem=1)  # one softplus unit (cost.py), the + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x)


@register("activation", "sigmoid")
class Sigmoid(_Elementwise):
    """Sigmoid: 1 / (1 + e^-x), the logistic unit of early backprop networks (Rumelhart et al., 1986)."""

    PER_ELEMENT = Cost(elementwise=1, exp=1, div=1, act_mem=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


@register("activation", "tanh")
class Tanh(_Elementwise):
    """Tanh: (e^x - e^-x) / (e^x + e^-x), zero-centred sigmoid (LeCun et al., 1998, "Efficient BackProp")."""

    PER_ELEMENT = Cost(exp=1, act_mem=1)  # one tanh unit (cost.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


@register("activation", "softsign")
class Softsign(_Elementwise):
    """Softsign: x / (1 + abs(x)) (Turian et al., 2009; Glorot & Bengio, 2010)."""

    PER_ELEMENT = Cost(elementwise=1, div=1, cmp=1, act_mem=1)  # |x| (a sign select), + 1, divide

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softsign(x)


@register("activation", "hardswish")
class Hardswish(_Elementwise):
    """Hard swish: x * min(max(x + 3, 0), 6) / 6 (MobileNetV3, Howard et al., 2019)."""

    PER_ELEMENT = Cost(elementwise=3, cmp=2, act_mem=1)  # + 3, two-sided clamp, * x, * (1/6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardswish(x)


@register("activation", "identity")
class Identity(_Elementwise):
    """Identity: x unchanged; an ablation without nonlinearity (the MLP becomes one linear map, c_proj c_fc)."""

    PER_ELEMENT = Cost()  # nothing computed, nothing kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
