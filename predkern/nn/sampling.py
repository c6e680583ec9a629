"""PredRNN's input-sampling schedules (thuml/predrnn-pytorch run.py), as torch utilities.

A model step t takes the true frame where the mask is 1 and its own last prediction where it
is 0. Masks here are compact, one value per (sample, step), shape (B, steps), float; the
predkern models take them as they are, and `expand_mask` gives the peers' full
(B, steps, height, width, channels) layout for their models.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def reverse_schedule_probs(itr: int, r_sampling_step_1: float = 25000, r_sampling_step_2: float = 50000,
                           r_exp_alpha: float = 5000) -> tuple[float, float]:
    """(encoder, decoder) probabilities of feeding the true frame at iteration `itr` (PredRNN-V2's
    reverse scheduled sampling): the encoder's rises from 0.5 to 1 exponentially between the two
    steps, the decoder's falls linearly from 0.5 to 0."""
    if itr < r_sampling_step_1:
        return 0.5, 0.5
    if itr < r_sampling_step_2:
        r_eta = 1.0 - 0.5 * math.exp(-float(itr - r_sampling_step_1) / r_exp_alpha)
        eta = 0.5 - (0.5 / (r_sampling_step_2 - r_sampling_step_1)) * (itr - r_sampling_step_1)
        return r_eta, eta
    return 1.0, 0.0


def reverse_schedule_sampling_exp(itr: int, batch_size: int, input_length: int, total_length: int, *,
                                  r_sampling_step_1: float = 25000, r_sampling_step_2: float = 50000,
                                  r_exp_alpha: float = 5000, generator: torch.Generator | None = None,
                                  device=None) -> Tensor:
    """Mask (batch_size, total_length - 2) for a model built with reverse_scheduled_sampling=1:
    column j < input_length - 1 feeds encoder step j + 1 (Bernoulli of the encoder probability),
    the rest the decoder steps (Bernoulli of the decoder probability). thuml's
    ``reserve_schedule_sampling_exp``."""
    _check_lengths(input_length, total_length, minimum=2)
    r_eta, eta = reverse_schedule_probs(itr, r_sampling_step_1, r_sampling_step_2, r_exp_alpha)
    flips = torch.rand(batch_size, total_length - 2, generator=generator).to(device)
    probs = torch.full((total_length - 2,), eta, device=flips.device)
    probs[:input_length - 1] = r_eta
    return (flips < probs).float()


def schedule_sampling(eta: float, itr: int, batch_size: int, input_length: int, total_length: int, *,
                      scheduled_sampling: bool = True, sampling_stop_iter: int = 50000,
                      sampling_changing_rate: float = 0.00002, generator: torch.Generator | None = None,
                      device=None) -> tuple[float, Tensor]:
    """(new eta, mask (batch_size, total_length - input_length - 1)) for PredRNN v1's scheduled
    sampling: eta falls by `sampling_changing_rate` per iteration until `sampling_stop_iter`,
    then is 0; each decoder step feeds the true frame with probability eta. thuml's
    ``schedule_sampling``; with scheduled_sampling off, (0.0, all zeros)."""
    _check_lengths(input_length, total_length, minimum=1)
    steps = total_length - input_length - 1
    if not scheduled_sampling:
        return 0.0, torch.zeros(batch_size, steps, device=device)
    eta = eta - sampling_changing_rate if itr < sampling_stop_iter else 0.0
    flips = torch.rand(batch_size, steps, generator=generator).to(device)
    return eta, (flips < eta).float()


def evaluation_mask(batch_size: int, input_length: int, total_length: int, *,
                    reverse_scheduled_sampling: bool = True, device=None) -> Tensor:
    """The mask thuml's run.py passes at test time (its ``real_input_flag``): with reverse
    scheduled sampling, (batch_size, total_length - 2) with ones for the input_length - 1 encoder
    steps and zeros for the decoder steps; without, (batch_size, total_length - input_length - 1)
    zeros. The model then sees the true input frames and predicts the rest from its own outputs.
    (Not called ``test_mask``: pytest would collect that name wherever it is imported.)"""
    if reverse_scheduled_sampling:
        _check_lengths(input_length, total_length, minimum=2)
        mask = torch.zeros(batch_size, total_length - 2, device=device)
        mask[:, :input_length - 1] = 1.0
        return mask
    _check_lengths(input_length, total_length, minimum=1)
    return torch.zeros(batch_size, total_length - input_length - 1, device=device)


def expand_mask(mask: Tensor, height: int, width: int, channels: int) -> Tensor:
    """The peers' mask layout (B, steps, height, width, channels) from a compact (B, steps) mask
    (a broadcast view: no memory is copied)."""
    if mask.dim() != 2:
        raise ValueError(f"expand_mask: `mask` must be (batch, steps), got shape {list(mask.shape)}")
    return mask[:, :, None, None, None].expand(*mask.shape, height, width, channels)


def _check_lengths(input_length, total_length, minimum):
    if not 1 <= input_length <= total_length - minimum:
        raise ValueError(f"input_length must be in [1, total_length - {minimum}], got input_length="
                         f"{input_length}, total_length={total_length}")
