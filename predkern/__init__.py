"""predkern: fused kernels for spatiotemporal recurrent networks (ConvLSTM, PredRNN, PredNet)."""
from predkern import backends, ops, reference
from predkern.ops import convlstm_gates, decoupling_loss, prednet_error, stlstm_memory, stlstm_output
from predkern.patch import patch, unpatch

__version__ = "0.1.0"
__all__ = ["backends", "convlstm_gates", "decoupling_loss", "ops", "patch", "prednet_error", "reference",
           "stlstm_memory", "stlstm_output", "unpatch", "__version__"]
