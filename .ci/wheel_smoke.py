"""Smoke test of an installed predkern wheel, run from outside the source tree: the package and
its compiled CPU extension come from site-packages, every op runs on the cpu backend and agrees
with the reference, a drop-in model trains a step, and the metadata agrees with the package."""
import importlib.metadata
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import torch

import predkern
import predkern.nn as pknn
from predkern import backends

repo = os.path.abspath(sys.argv[1])
assert not os.path.abspath(predkern.__file__).startswith(repo), f"predkern imported from the checkout: {predkern.__file__}"
assert backends.unavailable_reason("cpu", "cpu") is None, backends.unavailable_reason("cpu", "cpu")
assert importlib.metadata.version("predkern") == predkern.__version__
requires = importlib.metadata.requires("predkern")
assert any(r.startswith("torch") and "<" in r for r in requires), requires

g = torch.Generator().manual_seed(0)
def rand(*shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)

calls = {
    "convlstm_gates": lambda: predkern.convlstm_gates(rand(2, 12, 5, 7), rand(2, 3, 5, 7), rand(2, 12, 5, 7)),
    "stlstm_memory": lambda: predkern.stlstm_memory(rand(2, 21, 5, 7), rand(2, 12, 5, 7), rand(2, 9, 5, 7),
                                                    rand(2, 3, 5, 7), rand(2, 3, 5, 7)),
    "stlstm_output": lambda: predkern.stlstm_output(rand(2, 21, 5, 7), rand(2, 12, 5, 7), rand(2, 3, 5, 7),
                                                    rand(2, 3, 5, 7)),
    "decoupling_loss": lambda: predkern.decoupling_loss(rand(4, 3, 5, 7), rand(4, 3, 5, 7)),
    "prednet_error": lambda: predkern.prednet_error(rand(2, 3, 5, 7), rand(2, 3, 5, 7), clip_max=1.0),
}
for name, call in calls.items():
    state = g.get_state()
    with backends.use("cpu"):
        fused = call()
    g.set_state(state)
    with backends.use("reference"):
        ref = call()
    for a, b in zip(fused if isinstance(fused, tuple) else (fused,), ref if isinstance(ref, tuple) else (ref,)):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    print(f"{name}: cpu backend matches the reference")

configs = SimpleNamespace(img_width=8, img_channel=1, patch_size=2, filter_size=3, stride=1, layer_norm=0,
                          input_length=3, total_length=5, reverse_scheduled_sampling=1, decouple_beta=0.1)
model = pknn.PredRNNv2(2, [4, 4], configs)
_, loss = model(torch.rand(2, 5, 4, 4, 4), pknn.reverse_schedule_sampling_exp(1, 2, 3, 5))
loss.backward()
assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
print(f"PredRNNv2 training step: loss {loss.item():.4f}")

info = subprocess.run([os.path.join(os.path.dirname(sys.executable), "predkern"), "info"], capture_output=True,
                      text=True, check=True).stdout
assert f"predkern {predkern.__version__}" in info and re.search(r"cpu\s+available", info), info
print(info.strip())
print("wheel smoke test passed")
