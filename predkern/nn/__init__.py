"""Drop-in cells built on the predkern ops, with the peers' signatures and state_dict keys."""
from predkern.nn.convlstm_cell import ConvLSTMCell, ConvLSTMCellNdrplz
from predkern.nn.stlstm_cell import SpatioTemporalLSTMCell, SpatioTemporalLSTMCellv2

__all__ = ["ConvLSTMCell", "ConvLSTMCellNdrplz", "SpatioTemporalLSTMCell", "SpatioTemporalLSTMCellv2"]
