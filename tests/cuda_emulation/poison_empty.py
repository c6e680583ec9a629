"""pytest plugin (`-p poison_empty`): every tensor torch.empty makes, the kernels' outputs among
them, starts as NaN (integers: their largest value), so an output element a kernel never writes
fails the comparison with the reference instead of passing on whatever the memory held."""
import torch
import torch.utils.deterministic

torch.use_deterministic_algorithms(True, warn_only=True)
torch.utils.deterministic.fill_uninitialized_memory = True
