"""OpenSTL's ConvLSTM model (`ConvLSTM_Model`) on predkern's fused ConvLSTM cell."""
from __future__ import annotations

from torch import Tensor

from predkern.nn._recurrent import RecurrentFramePredictor
from predkern.nn.convlstm_cell import ConvLSTMCell


class ConvLSTM(RecurrentFramePredictor):
    """Stacked ConvLSTM cells over patch-space frames, ``ConvLSTM(num_layers, num_hidden, configs)``,
    ``forward(frames_tensor, mask_true, return_loss=True) -> (next_frames, loss)``, as OpenSTL's
    ConvLSTM_Model (scheduled or reverse scheduled sampling, MSE loss); layers may differ in
    width. state_dict keys are OpenSTL's (cell_list.{l}.*, conv_last)."""

    cell_class = ConvLSTMCell

    def step(self, net: Tensor, state: dict) -> Tensor:
        h, c = state["h"], state["c"]
        for i, cell in enumerate(self.cell_list):
            h[i], c[i] = cell(net if i == 0 else h[i - 1], h[i], c[i])
        return h[-1]
