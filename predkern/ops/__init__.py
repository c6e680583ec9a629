"""The predkern ops: argument checks, backend dispatch and autograd, one file per op."""
from predkern.ops.convlstm_gates import convlstm_gates
from predkern.ops.decoupling_loss import decoupling_loss
from predkern.ops.prednet_error import prednet_error
from predkern.ops.stlstm_memory import stlstm_memory
from predkern.ops.stlstm_output import stlstm_output

__all__ = ["convlstm_gates", "decoupling_loss", "prednet_error", "stlstm_memory", "stlstm_output"]
