"""Every op's tensor arguments (shape and dtype role), one description shared by the fuzz and the
bad-input tests, so a new argument cannot be missed by either."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tensors import laid_out


@dataclass(frozen=True)
class Arg:
    name: str
    shape: Callable  # (B, C, spatial) -> shape
    state: bool = False  # takes the cell-state dtype (float32 allowed beside half gates: autocast)
    optional: bool = False


def _blocks(k):
    return lambda B, C, S: (B, k * C, *S)


OPS = {
    "convlstm_gates": (Arg("gates_x", _blocks(4)), Arg("c", _blocks(1), state=True),
                       Arg("gates_h", _blocks(4), optional=True),
                       Arg("bias", lambda B, C, S: (4 * C,), state=True, optional=True),
                       Arg("peephole", lambda B, C, S: (3, C, *S), state=True, optional=True)),
    "stlstm_memory": (Arg("x_cat", _blocks(7)), Arg("h_cat", _blocks(4)), Arg("m_cat", _blocks(3)),
                      Arg("c", _blocks(1), state=True), Arg("m", _blocks(1), state=True)),
    "stlstm_output": (Arg("x_cat", _blocks(7)), Arg("h_cat", _blocks(4)), Arg("o_conv", _blocks(1)),
                      Arg("last_conv", _blocks(1))),
    "decoupling_loss": (Arg("delta_c", _blocks(1)), Arg("delta_m", _blocks(1))),
    "prednet_error": (Arg("a", _blocks(1)), Arg("a_hat", _blocks(1))),
}


def inputs(op, B=2, C=3, spatial=(4, 5), dtype=torch.float32, state_dtype=None, device="cpu",
           views=None, seed=0, scale=1.5):
    """Random inputs of `op` with every optional argument given; views[name] picks each
    tensor's layout (see tensors.laid_out), contiguous by default."""
    gen = torch.Generator().manual_seed(seed)
    x = {}
    for arg in OPS[op]:
        values = torch.randn(arg.shape(B, C, tuple(spatial)), generator=gen, dtype=torch.float64) * scale
        dt = (state_dtype or dtype) if arg.state else dtype
        x[arg.name] = laid_out(values, (views or {}).get(arg.name, "contiguous"), dt, device)
    return x
