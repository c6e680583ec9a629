"""PredRNN and PredRNN-V2 (thuml/predrnn-pytorch `RNN`, OpenSTL `PredRNN_Model` /
`PredRNNv2_Model`) on predkern's fused ST-LSTM cells and decoupling loss."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from predkern import ops
from predkern.nn._recurrent import RecurrentFramePredictor, _zeros
from predkern.nn.stlstm_cell import SpatioTemporalLSTMCell, SpatioTemporalLSTMCellv2


class PredRNN(RecurrentFramePredictor):
    """PredRNN, ``PredRNN(num_layers, num_hidden, configs)``, ``forward(frames_tensor, mask_true)
    -> (next_frames, loss)``: ST-LSTM layers whose spatiotemporal memory m zigzags up the stack
    within a step and from the top layer to the bottom one across steps. `configs` is thuml's
    or OpenSTL's (see FrameConfig); state_dict keys are theirs (cell_list.{l}.*, conv_last), so
    their checkpoints load with strict=True (predkern.nn.load_checkpoint unwraps thuml's
    {'net_param': ...})."""

    cell_class = SpatioTemporalLSTMCell

    def __init__(self, num_layers: int, num_hidden, configs, **kwargs):
        super().__init__(num_layers, num_hidden, configs)
        if len(set(self.num_hidden)) != 1:
            raise ValueError(f"{type(self).__name__}: every layer needs the same width, because the "
                             f"spatiotemporal memory passes from layer to layer; got num_hidden={self.num_hidden}")

    def initial_state(self, B, H, W, like, layout):
        state = super().initial_state(B, H, W, like, layout)
        state["memory"] = _zeros(B, self.num_hidden[0], H, W, like, layout)
        return state

    def step(self, net: Tensor, state: dict) -> Tensor:
        h, c = state["h"], state["c"]
        for i, cell in enumerate(self.cell_list):
            h[i], c[i], state["memory"], *deltas = cell(net if i == 0 else h[i - 1], h[i], c[i], state["memory"])
            self.collect_deltas(state, *deltas)
        return h[-1]

    def collect_deltas(self, state, *deltas):
        pass


class PredRNNv2(PredRNN):
    """PredRNN-V2: PredRNN with v2 cells, whose increments delta_c = i*g and delta_m = i'*g' are
    pushed apart by the memory decoupling loss, loss = MSE + decouple_beta * mean over layers and
    steps of mean |cos(adapter(delta_c), adapter(delta_m))| (the shared 1x1 `adapter` as in the
    peers). Here, for training, the deltas of every layer and step are stacked, the adapter runs
    once over each stack and predkern's fused decoupling loss runs once: the same mean as the
    peers' per-term loop, since every term has the same (batch, channels) rows. Without autograd
    (evaluation) each term is taken as its step ends and its deltas dropped, as the peers do: the
    stacks would hold every step's deltas and adapter outputs at once (813 MiB against the plain
    model's 110 MiB at the Moving MNIST config on an H200)."""

    cell_class = SpatioTemporalLSTMCellv2

    def __init__(self, num_layers: int, num_hidden, configs, **kwargs):
        super().__init__(num_layers, num_hidden, configs)
        self.adapter = nn.Conv2d(self.num_hidden[0], self.num_hidden[0], 1, stride=1, padding=0, bias=False)

    def initial_state(self, B, H, W, like, layout):
        return {**super().initial_state(B, H, W, like, layout), "delta_c": [], "delta_m": [], "terms": []}

    def collect_deltas(self, state, delta_c, delta_m):
        if torch.is_grad_enabled():
            state["delta_c"].append(delta_c)
            state["delta_m"].append(delta_m)
        else:
            state["terms"].append(ops.decoupling_loss(self.adapter(delta_c), self.adapter(delta_m)))

    def extra_loss(self, state):
        # the mean over all terms: those taken one by one, and the stacked ones (one loss for all)
        n_terms, n_stacked = len(state["terms"]), len(state["delta_c"])
        if n_stacked:
            # two stacks, not one split in two: a split's backward would copy both gradients into one
            # each list dropped once stacked: its steps' deltas are not needed again
            delta_c = self.adapter(torch.cat(state.pop("delta_c")))
            delta_m = self.adapter(torch.cat(state.pop("delta_m")))
            stacked = ops.decoupling_loss(delta_c, delta_m)
            if not n_terms:
                return self.frame.decouple_beta * stacked
        total = torch.stack(state["terms"]).sum() + (n_stacked * stacked if n_stacked else 0.0)
        return self.frame.decouple_beta * total / (n_terms + n_stacked)
