"""Drop-in cells and models built on the predkern ops, with the peers' signatures and state_dict keys."""
from predkern.nn.checkpoint import load_checkpoint, thuml_checkpoint
from predkern.nn.convlstm import ConvLSTM
from predkern.nn.convlstm_cell import ConvLSTMCell, ConvLSTMCellNdrplz
from predkern.nn.patches import reshape_patch, reshape_patch_back
from predkern.nn.prednet import PredNet, prednet_loss
from predkern.nn.predrnn import PredRNN, PredRNNv2
from predkern.nn.sampling import (evaluation_mask, expand_mask, reverse_schedule_probs, reverse_schedule_sampling_exp,
                                  schedule_sampling)
from predkern.nn.stlstm_cell import SpatioTemporalLSTMCell, SpatioTemporalLSTMCellv2

__all__ = ["ConvLSTM", "ConvLSTMCell", "ConvLSTMCellNdrplz", "PredNet", "PredRNN", "PredRNNv2", "SpatioTemporalLSTMCell",
           "SpatioTemporalLSTMCellv2", "evaluation_mask", "expand_mask", "load_checkpoint", "prednet_loss", "reshape_patch", "reshape_patch_back",
           "reverse_schedule_probs", "reverse_schedule_sampling_exp", "schedule_sampling", "thuml_checkpoint"]
