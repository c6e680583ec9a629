"""Peers' checkpoint files: thuml/predrnn-pytorch saves {'net_param': state_dict}; OpenSTL
(PyTorch Lightning) saves {'state_dict': ...} with keys under 'model.'."""
from __future__ import annotations

import os

import torch
from torch import nn


def load_checkpoint(model: nn.Module, checkpoint, strict: bool = True):
    """Load a peer checkpoint (a path, or the loaded dict) into `model`; returns
    load_state_dict's result. Accepts thuml's {'net_param': ...}, a Lightning {'state_dict': ...}
    (its 'model.' key prefix removed) or a bare state_dict."""
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise TypeError(f"load_checkpoint: `checkpoint` must be a path or a dict, got {type(checkpoint).__name__}")
    if "net_param" in checkpoint:
        state = checkpoint["net_param"]
    elif "state_dict" in checkpoint:
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    else:
        state = checkpoint
    return model.load_state_dict(state, strict=strict)


def thuml_checkpoint(model: nn.Module) -> dict:
    """{'net_param': state_dict}, what thuml's Model.save writes and Model.load reads."""
    return {"net_param": model.state_dict()}
