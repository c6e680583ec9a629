import os

import torch

if not torch.cuda.is_available():  # lets the suite import predkern.triton; it is not timed on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")
