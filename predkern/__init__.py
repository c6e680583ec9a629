"""predkern: fused kernels for spatiotemporal recurrent networks (ConvLSTM, PredRNN, PredNet)."""
from predkern import backends, ops, reference
from predkern.ops import convlstm_gates, stlstm_memory, stlstm_output

__version__ = "0.1.0"
__all__ = ["backends", "convlstm_gates", "ops", "reference", "stlstm_memory", "stlstm_output", "__version__"]
