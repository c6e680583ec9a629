"""The predkern ops: argument checks, backend dispatch and autograd, one file per op."""
from predkern.ops.convlstm_gates import convlstm_gates

__all__ = ["convlstm_gates"]
