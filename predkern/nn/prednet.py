"""coxlab/prednet's PredNet (Lotter et al. 2016; Keras prednet.py, kitti_train.py) on predkern's fused ops."""
from __future__ import annotations

import operator
import re
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from predkern import ops
from predkern.nn.stlstm_cell import autocast_dtype
from predkern.ops import _checks

NAME = "PredNet"
OUTPUT_MODES = ("error", "prediction", "all")
_LAYER_MODE = re.compile(r"^(R|E|A|Ahat)(\d+)$")
LAYER_WEIGHTS = {"L_0": 0.0, "L_all": 0.1}  # weight of every layer above 0; layer 0 weighs 1


class PredNet(nn.Module):
    """PredNet with coxlab's equations, channels first: ``forward(frames (B, T, C, H, W))``.

    Per step, top-down, a ConvLSTM per layer on ``cat(R_{t-1}, E_{t-1}, upsample2(R^{l+1}))`` with
    gates i, f, o = hard_sigmoid (Keras' clamp(0.2x+0.5, 0, 1)) and candidate tanh, every conv
    with a bias and 'same' padding; then bottom-up ``A_hat = relu(conv_ahat(R))`` (clipped at
    ``pixel_max`` at layer 0; None: no clip), ``E = [relu(A_hat - A), relu(A - A_hat)]`` and
    ``A^{l+1} = maxpool2(relu(conv_a(E)))``. States start at zero.

    Parameters are coxlab's separate convs, named ``conv_i.{l}``, ``conv_f.{l}``, ``conv_c.{l}``
    (the candidate), ``conv_o.{l}``, ``conv_ahat.{l}`` and ``conv_a.{l}`` (l < nb_layers - 1), each
    with ``weight`` (out, in, k, k) and ``bias``; the gate convs' input channels are ordered
    [R, E, upsampled R^{l+1}] as coxlab concatenates them. Initialised as Keras does (Glorot
    uniform, zero bias). Keras weights map onto them conv by conv once their kernels are in
    PyTorch's (out, in, kh, kw) cross-correlation form (kernels trained under Theano, whose conv
    flips them, also need ``w.flip(-2, -1)``).

    ``output_mode`` picks what ``forward`` returns, always every step (Keras' return_sequences=True):
      - ``"error"``: (B, T, nb_layers), the mean of each layer's E units (Keras' layer error);
        the input of :func:`prednet_loss`.
      - ``"prediction"``: (B, T, C, H, W), step t's A_hat of layer 0, made from R of step t,
        i.e. before frame t is seen: the prediction of frame t.
      - ``"all"``: the tuple (prediction, error) (Keras concatenates them flattened instead).
      - ``"R{l}"``, ``"E{l}"``, ``"A{l}"``, ``"Ahat{l}"``: that unit of layer l, (B, T, ch, H/2^l, W/2^l).
    ``extrap_start_time``: from that step on, the previous step's prediction replaces the input
    frame (coxlab's extrapolation fine-tuning); gradients flow through it as in Keras.

    Frame sizes must be divisible by 2**(nb_layers - 1). Differences from the Keras layer: the
    error, A and A_hat activations are fixed to coxlab's defaults (relu; LSTM tanh/hard_sigmoid),
    and conv_a takes the 2*stack_sizes[l] channels that E^l has (coxlab's build declares
    2*R_stack_sizes[l], which works only when the two are equal, as in every coxlab config).
    """

    def __init__(self, stack_sizes: Sequence[int], R_stack_sizes: Sequence[int], A_filt_sizes: Sequence[int],
                 Ahat_filt_sizes: Sequence[int], R_filt_sizes: Sequence[int], pixel_max: Optional[float] = 1.0,
                 output_mode: str = "error", extrap_start_time: Optional[int] = None):
        super().__init__()
        stack_sizes = _sizes("stack_sizes", stack_sizes)
        L = len(stack_sizes)
        if L < 1:
            raise ValueError(f"{NAME}: `stack_sizes` must have at least one layer, got {list(stack_sizes)}")
        sizes = {}
        for name, given, n in (("R_stack_sizes", R_stack_sizes, L), ("A_filt_sizes", A_filt_sizes, L - 1),
                               ("Ahat_filt_sizes", Ahat_filt_sizes, L), ("R_filt_sizes", R_filt_sizes, L)):
            sizes[name] = _sizes(name, given)
            if len(sizes[name]) != n:
                want = "len(stack_sizes) - 1" if name == "A_filt_sizes" else "len(stack_sizes)"
                raise ValueError(f"{NAME}: `{name}` must have {want} = {n} entries, got {len(sizes[name])}: "
                                 f"{list(sizes[name])}")
        pixel_max = _checks.real(NAME, "pixel_max", pixel_max, none_ok=True)
        m = _LAYER_MODE.match(output_mode) if isinstance(output_mode, str) else None
        if output_mode not in OUTPUT_MODES and not (m and int(m.group(2)) < L):
            raise ValueError(f"{NAME}: `output_mode` must be one of {OUTPUT_MODES} or R/E/A/Ahat followed by a "
                             f"layer number below {L}, got {output_mode!r}")
        if extrap_start_time is not None and (isinstance(extrap_start_time, bool)
                                              or not isinstance(extrap_start_time, int) or extrap_start_time < 0):
            raise ValueError(f"{NAME}: `extrap_start_time` must be None or an int >= 0, got {extrap_start_time!r}")

        self.stack_sizes, self.R_stack_sizes = stack_sizes, sizes["R_stack_sizes"]
        self.A_filt_sizes, self.Ahat_filt_sizes = sizes["A_filt_sizes"], sizes["Ahat_filt_sizes"]
        self.R_filt_sizes = sizes["R_filt_sizes"]
        self.nb_layers = L
        self.pixel_max = None if pixel_max is None else float(pixel_max)
        self.output_mode = output_mode
        self.output_layer = (m.group(1), int(m.group(2))) if output_mode not in OUTPUT_MODES else None
        self.extrap_start_time = extrap_start_time

        def conv(cin, cout, k):
            return nn.Conv2d(cin, cout, k, padding="same")

        gate_in = [2 * self.stack_sizes[l] + self.R_stack_sizes[l] + (self.R_stack_sizes[l + 1] if l < L - 1 else 0)
                   for l in range(L)]
        for gate in "ifco":
            setattr(self, f"conv_{gate}", nn.ModuleList(
                conv(gate_in[l], self.R_stack_sizes[l], self.R_filt_sizes[l]) for l in range(L)))
        self.conv_ahat = nn.ModuleList(conv(self.R_stack_sizes[l], self.stack_sizes[l], self.Ahat_filt_sizes[l])
                                       for l in range(L))
        self.conv_a = nn.ModuleList(conv(2 * self.stack_sizes[l], self.stack_sizes[l + 1], self.A_filt_sizes[l])
                                    for l in range(L - 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras' Convolution2D defaults: Glorot-uniform kernels, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def _gate_params(self):
        """Per layer, the four gate convs as one: weights and biases stacked in order i, f, c, o
        ("ifgo", c being the candidate g). Built once per forward and reused by every step, so the
        copy costs one cat of the gate weights per forward, against a conv launch saved per gate,
        layer and step; autograd routes the gradients back to the four separate parameters."""
        convs = [self.conv_i, self.conv_f, self.conv_c, self.conv_o]
        weights = [torch.cat([c[l].weight for c in convs]) for l in range(self.nb_layers)]
        biases = [torch.cat([c[l].bias for c in convs]) for l in range(self.nb_layers)]
        return weights, biases

    def forward(self, frames: Tensor):
        """frames (B, T, C, H, W) -> the output of ``output_mode`` for every step (see the class)."""
        B, T, _, H, W = self._check_frames(frames)
        L = self.nb_layers
        weights, biases = self._gate_params()
        zeros = [(B, ch, H >> l, W >> l) for l, ch in enumerate(self.R_stack_sizes)]
        r = [frames.new_zeros(s) for s in zeros]
        c = [frames.new_zeros(s) for s in zeros]
        e = [frames.new_zeros(B, 2 * ch, H >> l, W >> l) for l, ch in enumerate(self.stack_sizes)]
        want_errors = self.output_mode in ("error", "all")
        unit, unit_layer = self.output_layer or (None, -1)
        prediction = frames.new_zeros(frames[:, 0].shape)  # the "previous prediction" of extrapolation at t = 0
        predictions, errors, units = [], [], []
        for t in range(T):
            a = frames[:, t]
            if self.extrap_start_time is not None and t >= self.extrap_start_time:
                a = prediction
            r_up = None
            for l in reversed(range(L)):  # top-down: the representation units
                if t == 0:
                    gates = _first_step_gates(weights[l], r_up, like=r[l])
                else:
                    x = torch.cat([r[l], e[l]] if r_up is None else [r[l], e[l], r_up], dim=1)
                    gates = F.conv2d(x, weights[l], padding="same")
                r[l], c[l] = ops.convlstm_gates(gates, c[l], bias=biases[l], gate_order="ifgo",
                                                gate_act="hard_sigmoid")
                if l > 0:
                    r_up = F.interpolate(r[l], scale_factor=2.0, mode="nearest")
            layer_errors = []
            for l in range(L):  # bottom-up: predictions, errors, targets
                ahat_pre = self.conv_ahat[l](r[l])
                if ahat_pre.dtype != a.dtype:  # autocast: frames in float32, conv output in half
                    ahat_pre = ahat_pre.to(a.dtype)
                e[l], ahat, *e_mean = ops.prednet_error(a, ahat_pre, relu_a_hat=True,
                                                        clip_max=self.pixel_max if l == 0 else None,
                                                        first="pred", return_mean=want_errors)
                layer_errors += e_mean
                if l == 0:
                    prediction = ahat
                if l == unit_layer:
                    units.append({"R": r[l], "E": e[l], "A": a, "Ahat": ahat}[unit])
                if l < L - 1:
                    a = F.max_pool2d(F.relu(self.conv_a[l](e[l])), 2)
            predictions.append(prediction)
            if want_errors:
                errors.append(torch.stack(layer_errors, dim=1))
        if unit is not None:
            return torch.stack(units, dim=1)
        if self.output_mode == "prediction":
            return torch.stack(predictions, dim=1)
        errors = torch.stack(errors, dim=1)
        return (torch.stack(predictions, dim=1), errors) if self.output_mode == "all" else errors

    def _check_frames(self, frames):
        _checks.tensor(NAME, "frames", frames)
        if frames.dim() != 5:
            raise ValueError(f"{NAME}: `frames` must have shape (B, T, C, H, W), got {frames.dim()} dims "
                             f"{list(frames.shape)}")
        B, T, C, H, W = frames.shape
        if C != self.stack_sizes[0]:
            raise ValueError(f"{NAME}: `frames` must have stack_sizes[0] = {self.stack_sizes[0]} channels "
                             f"(dim 2 of (B, T, C, H, W)), got {C}")
        f = 2 ** (self.nb_layers - 1)
        if H % f or W % f:
            raise ValueError(f"{NAME}: `frames` height and width must be divisible by 2**(nb_layers - 1) = {f}, "
                             f"got {H}x{W}")
        if T < 1:
            raise ValueError(f"{NAME}: `frames` must have at least one time step, got shape {list(frames.shape)}")
        return B, T, C, H, W

    def extra_repr(self) -> str:
        return (f"stack_sizes={self.stack_sizes}, R_stack_sizes={self.R_stack_sizes}, "
                f"pixel_max={self.pixel_max}, output_mode={self.output_mode!r}, "
                f"extrap_start_time={self.extrap_start_time}")


def _first_step_gates(weight: Tensor, r_up: Optional[Tensor], like: Tensor) -> Tensor:
    """The gate convs' output, bias aside, at t = 0, where R and E are zeros: only the upsampled
    R of the layer above (the last input channels) reaches them, so the conv runs on it alone;
    the top layer, which has none, gets zeros (in the dtype its conv would give). Exact, and a
    conv's work saved per layer, most of the first step's gate convs (PredNet's R_0 = E_0 = 0)."""
    if r_up is not None:
        return F.conv2d(r_up, weight[:, -r_up.shape[1]:], padding="same")
    dtype = autocast_dtype(like.device.type) or like.dtype
    return like.new_zeros((like.shape[0], weight.shape[0], *like.shape[2:]), dtype=dtype)


def prednet_loss(errors: Tensor, layer_weights: Union[str, Sequence[float], Tensor] = "L_0",
                 time_weights: Union[None, Sequence[float], Tensor] = None) -> Tensor:
    """kitti_train.py's loss from PredNet's "error" output ``errors (B, T, nb_layers)``:
    ``mean_b sum_t time_weights[t] * sum_l layer_weights[l] * errors[b, t, l]``.

    layer_weights: "L_0" = [1, 0, 0, ...] (coxlab's default), "L_all" = [1, .1, .1, ...], or one
    weight per layer. time_weights: None = coxlab's 0 at t = 0 (the first prediction has seen
    nothing) and 1/(T-1) after, or one weight per step. Keras computes this as two frozen Dense
    layers and a mean absolute error against zero; with non-negative weights the absolute value
    changes nothing, so it is left out.
    """
    if not isinstance(errors, Tensor):
        _checks.tensor("prednet_loss", "errors", errors)
    if errors.dim() != 3:
        raise ValueError(f"prednet_loss: `errors` must have shape (B, T, nb_layers), got {errors.dim()} dims "
                         f"{list(errors.shape)}")
    _, T, L = errors.shape
    if isinstance(layer_weights, str):
        if layer_weights not in LAYER_WEIGHTS:
            raise ValueError(f"prednet_loss: `layer_weights` must be one of {tuple(LAYER_WEIGHTS)} or one weight "
                             f"per layer, got {layer_weights!r}")
        layer_weights = [1.0] + [LAYER_WEIGHTS[layer_weights]] * (L - 1)
    if time_weights is None:
        if T < 2:
            raise ValueError(f"prednet_loss: the default `time_weights` (0, then 1/(T-1)) need T >= 2 steps in "
                             f"`errors`, got T = {T}")
        time_weights = [0.0] + [1.0 / (T - 1)] * (T - 1)
    lw = _weights("layer_weights", layer_weights, L, "nb_layers = errors.size(2)", errors)
    tw = _weights("time_weights", time_weights, T, "T = errors.size(1)", errors)
    return ((errors * lw).sum(dim=2) * tw).sum(dim=1).mean()


def _weights(name, w, n, what, like):
    w = torch.as_tensor(w, dtype=like.dtype, device=like.device)
    if w.shape != (n,):
        raise ValueError(f"prednet_loss: `{name}` must have {what} = {n} entries, got shape {list(w.shape)}")
    return w


def _sizes(name, sizes) -> tuple:
    """A tuple of positive ints from a list, tuple or 1-d array (coxlab passes tuples)."""
    try:
        if isinstance(sizes, (str, bytes)):
            raise TypeError
        out = tuple(operator.index(s) for s in sizes)
    except TypeError:
        out = None
    if out is None or any(s < 1 for s in out):
        raise ValueError(f"{NAME}: `{name}` must be a sequence of positive ints, got {sizes!r}")
    return out
