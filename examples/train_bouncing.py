#!/usr/bin/env python
"""Train PredRNN-V2 (default) or PredNet from predkern.nn on synthetic bouncing shapes.

The data are made on the fly, nothing is downloaded: each sequence holds one or two bright
shapes (balls, or digit glyphs from a 5x7 bitmap font defined below) moving at constant
velocity and bouncing off the walls, values in [0, 1], one channel. Every training batch is
new; the validation batch is fixed.

    PYTHONPATH=. python examples/train_bouncing.py                    # PredRNN-V2, ~1.5 min on 2 CPU cores
    PYTHONPATH=. python examples/train_bouncing.py --model prednet

Writes to --out (default examples/out): loss_curve.png (training loss; validation MSE against
two trivial predictors, copying the last frame seen and blank frames) and predictions.png (one
validation sequence: ground truth on top, the model's predictions below).

PredRNN-V2 follows thuml/predrnn-pytorch's recipe (patch space, reverse scheduled sampling,
memory decoupling loss) with the sampling schedule scaled to --iters. PredNet predicts the next
frame, as coxlab/prednet's does, but is trained on the MSE of its predictions by default:
coxlab's L1 losses on the error units (--prednet-loss L_0 or L_all) collapse to black frames on
this sparse data (see PredNetRunner). With --prednet-extrap it is trained and evaluated to
extrapolate from --input-frames on, as in coxlab's fine-tuning.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import predkern
import predkern.backends
import predkern.nn

# ---------------------------------------------------------------------------------------------
# Data: bouncing balls and digit glyphs
# ---------------------------------------------------------------------------------------------

# A 5x7 bitmap font for the digits 0-9, one string per row ('#' = on).
_FONT = {
    0: [" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "],
    1: ["  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
    2: [" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"],
    3: ["#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "],
    4: ["   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "],
    5: ["#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "],
    6: ["  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "],
    7: ["#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "],
    8: [" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "],
    9: [" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "],
}


def digit_glyphs(scale: int) -> torch.Tensor:
    """(10, 7*scale, 5*scale) float glyphs of the digits, each font pixel a scale x scale block."""
    bitmaps = torch.tensor([[[ch == "#" for ch in row] for row in _FONT[d]] for d in range(10)],
                           dtype=torch.float32)
    return bitmaps.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def _bounce(start: torch.Tensor, velocity: torch.Tensor, T: int, span: torch.Tensor) -> torch.Tensor:
    """Positions (..., T) in [0, span] of a point moving at `velocity` from `start` and
    reflecting off 0 and `span`: the triangle wave of the free motion."""
    t = torch.arange(T, dtype=start.dtype)
    free = start[..., None] + velocity[..., None] * t
    span = span[..., None]
    return span - (free.remainder(2 * span) - span).abs()


class BouncingShapes:
    """Batches (B, T, H, W, 1) in [0, 1] of `min_shapes`..`max_shapes` shapes bouncing in an
    H x W box; `kind` "balls", "digits" or "mixed" (each shape a ball or a digit at random)."""

    def __init__(self, img_size: int, frames: int, kind: str = "mixed", min_shapes: int = 1, max_shapes: int = 2,
                 seed: int = 0):
        if kind not in ("balls", "digits", "mixed"):
            raise ValueError(f"kind must be balls, digits or mixed, got {kind!r}")
        self.H = self.W = img_size
        self.T, self.kind = frames, kind
        self.min_shapes, self.max_shapes = min_shapes, max_shapes
        self.generator = torch.Generator().manual_seed(seed)
        self.glyphs = digit_glyphs(max(1, img_size // 16))  # 32x32 -> 10x14 digits, 64x64 -> 20x28
        self.glyph_h, self.glyph_w = self.glyphs.shape[1:]
        if self.glyph_h >= img_size:
            raise ValueError(f"img_size={img_size} is too small for the {self.glyph_h}-pixel-high digits")
        self.radius_range = (max(1.5, img_size / 16), max(2.0, img_size / 9))  # 32x32: radius 2 to 3.6

    def _rand(self, *shape):
        return torch.rand(*shape, generator=self.generator)

    def batch(self, batch_size: int) -> torch.Tensor:
        B, T, H, W, S = batch_size, self.T, self.H, self.W, self.max_shapes
        g = self.generator
        present = torch.arange(S) < torch.randint(self.min_shapes, S + 1, (B, 1), generator=g)  # (B, S)
        if self.kind == "mixed":
            is_ball = self._rand(B, S) < 0.5
        else:
            is_ball = torch.full((B, S), self.kind == "balls")
        digit = torch.randint(0, 10, (B, S), generator=g)
        lo, hi = self.radius_range
        radius = lo + (hi - lo) * self._rand(B, S)
        # bounding box of each shape: a ball's is its 2r x 2r square, a digit's its glyph
        box_h = torch.where(is_ball, 2 * radius, torch.tensor(float(self.glyph_h)))
        box_w = torch.where(is_ball, 2 * radius, torch.tensor(float(self.glyph_w)))
        span_y, span_x = H - box_h, W - box_w
        speed = H / 16 + (H / 10 - H / 16) * self._rand(B, S)  # 2 to 3.2 pixels per frame at 32x32
        angle = 2 * math.pi * self._rand(B, S)
        top = _bounce(span_y * self._rand(B, S), speed * torch.sin(angle), T, span_y)   # (B, S, T)
        left = _bounce(span_x * self._rand(B, S), speed * torch.cos(angle), T, span_x)

        ys = torch.arange(H, dtype=torch.float32)
        xs = torch.arange(W, dtype=torch.float32)
        # balls: anti-aliased discs around the box centre
        cy = (top + radius[..., None])[..., None, None]                              # (B, S, T, 1, 1)
        cx = (left + radius[..., None])[..., None, None]
        dist = ((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2).sqrt()            # (B, S, T, H, W)
        balls = (radius[..., None, None, None] + 0.5 - dist).clamp(0, 1)
        # digits: the glyph pasted at the rounded box corner (gathered, no Python loop)
        rows = ys.long() - top.round().long()[..., None]                               # (B, S, T, H)
        cols = xs.long() - left.round().long()[..., None]                              # (B, S, T, W)
        inside = ((rows >= 0) & (rows < self.glyph_h))[..., :, None] \
            & ((cols >= 0) & (cols < self.glyph_w))[..., None, :]                     # (B, S, T, H, W)
        flat = self.glyphs.reshape(10, -1)[digit]                                      # (B, S, gh*gw)
        index = rows.clamp(0, self.glyph_h - 1)[..., :, None] * self.glyph_w \
            + cols.clamp(0, self.glyph_w - 1)[..., None, :]
        digits = torch.gather(flat[:, :, None, :].expand(B, S, T, -1), 3, index.reshape(B, S, T, H * W))
        digits = digits.reshape(B, S, T, H, W) * inside
        shapes = torch.where(is_ball[..., None, None, None], balls, digits) * present[..., None, None, None]
        return shapes.amax(dim=1)[..., None]                                           # (B, T, H, W, 1)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

class PredRNNv2Runner:
    """thuml/predrnn-pytorch's PredRNN-V2 training step: patch space, reverse scheduled
    sampling (its schedule scaled to the run length), MSE + memory decoupling loss."""

    name = "PredRNN-V2"

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.configs = SimpleNamespace(
            img_width=args.img_size, img_channel=1, patch_size=args.patch_size, filter_size=args.filter_size,
            stride=1, layer_norm=0, input_length=args.input_frames, total_length=args.frames,
            reverse_scheduled_sampling=1, decouple_beta=args.decouple_beta)
        self.model = predkern.nn.PredRNNv2(args.layers, [args.hidden] * args.layers, self.configs).to(device)
        # thuml's MNIST run: 80k iterations, r_sampling_step_1=25k, r_sampling_step_2=50k, r_exp_alpha=2.5k
        self.schedule = dict(r_sampling_step_1=args.iters * 25 / 80, r_sampling_step_2=args.iters * 50 / 80,
                             r_exp_alpha=max(1.0, args.iters * 2.5 / 80))
        self.mask_generator = torch.Generator().manual_seed(args.seed + 2)

    def train_loss(self, frames, itr):
        a = self.args
        mask = predkern.nn.reverse_schedule_sampling_exp(itr, frames.shape[0], a.input_frames, a.frames,
                                                         generator=self.mask_generator, device=self.device,
                                                         **self.schedule)
        _, loss = self.model(predkern.nn.reshape_patch(frames, a.patch_size), mask)
        return loss

    @torch.no_grad()
    def predict(self, frames):
        """(predictions of frames input_frames..T-1, their index of the first one)."""
        a = self.args
        # thuml's test-time mask: true frames for the encoder steps, its own predictions after
        mask = predkern.nn.evaluation_mask(frames.shape[0], a.input_frames, a.frames, device=self.device)
        next_frames, _ = self.model(predkern.nn.reshape_patch(frames, a.patch_size), mask, return_loss=False)
        next_frames = predkern.nn.reshape_patch_back(next_frames, a.patch_size)  # frames 1..T-1
        return next_frames[:, a.input_frames - 1:].clamp(0, 1), a.input_frames


class PredNetRunner:
    """coxlab/prednet's PredNet on channels-first frames, predicting the next frame; with
    --prednet-extrap, extrapolating from input_frames on (coxlab's fine-tuning mode).

    --prednet-loss: "L_0" / "L_all" are coxlab's losses, prednet_loss on the error units (with
    --prednet-extrap, coxlab's extrapolation loss 0.5 * mean |prediction - frame| instead); "mse"
    (the default here) is the MSE of the predictions of frames 1..T-1. Why not coxlab's: its
    losses are L1 (the error units are relu(A_hat - A) and relu(A - A_hat)), whose best guess
    for a pixel is the median, and on these sparse frames (about 3% of the pixels lit) the
    median of anything uncertain is black; the ReLU predictions (relu(conv(R)), near zero at
    initialisation) then fall below zero within ~10 iterations, and a dead ReLU has no gradient
    to come back. MSE's best guess is the mean, which stays above zero."""

    name = "PredNet"

    def __init__(self, args, device):
        from predkern.nn import PredNet, prednet_loss

        self.args, self.device, self.prednet_loss = args, device, prednet_loss
        L = args.layers
        if args.img_size % 2 ** (L - 1):
            raise ValueError(f"PredNet with {L} layers needs --img-size divisible by {2 ** (L - 1)}")
        # coxlab's KITTI net is (3, 48, 96, 192): here the top layer gets --hidden channels, halving below
        stack = (1,) + tuple(max(4, args.hidden >> (L - 1 - l)) for l in range(1, L))
        self.extrap = args.input_frames if args.prednet_extrap else None
        self.model = PredNet(stack, stack, A_filt_sizes=(3,) * (L - 1), Ahat_filt_sizes=(3,) * L,
                             R_filt_sizes=(3,) * L, pixel_max=1.0,
                             output_mode="prediction" if args.prednet_loss == "mse" else "all",
                             extrap_start_time=self.extrap).to(device)

    def _run(self, frames):
        """frames (B, T, C, H, W) -> (predictions (B, T, C, H, W), errors (B, T, L) or None)."""
        out = self.model(frames)
        return out if isinstance(out, tuple) else (out, None)

    def train_loss(self, frames, itr):
        frames = frames.permute(0, 1, 4, 2, 3)  # (B, T, H, W, C) -> (B, T, C, H, W)
        predictions, errors = self._run(frames)
        if self.args.prednet_loss == "mse":
            return F.mse_loss(predictions[:, 1:], frames[:, 1:])
        if self.extrap is None:
            return self.prednet_loss(errors, self.args.prednet_loss)  # coxlab kitti_train.py
        return 0.5 * (predictions[:, 1:] - frames[:, 1:]).abs().mean()  # coxlab kitti_extrap_finetune.py

    @torch.no_grad()
    def predict(self, frames):
        predictions, _ = self._run(frames.permute(0, 1, 4, 2, 3))
        first = self.extrap if self.extrap is not None else 1  # step 0's prediction has seen nothing
        return predictions.permute(0, 1, 3, 4, 2)[:, first:], first


RUNNERS = {"predrnn_v2": PredRNNv2Runner, "prednet": PredNetRunner}


# ---------------------------------------------------------------------------------------------
# Progress, evaluation, plots
# ---------------------------------------------------------------------------------------------

class Progress:
    """tqdm when it is installed, else a plain carriage-return line."""

    def __init__(self, total, desc, enabled=True):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.n, self.start, self.postfix, self.bar = 0, time.perf_counter(), "", None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, **postfix):
        self.n += 1
        self.postfix = ", ".join(f"{k}={v}" for k, v in postfix.items())
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix, refresh=False)
            self.bar.update(1)
            return
        elapsed = time.perf_counter() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        filled = int(30 * self.n / self.total)
        print(f"\r{self.desc} [{'#' * filled}{'.' * (30 - filled)}] {self.n}/{self.total} "
              f"{rate:.2f} it/s, eta {eta:4.0f}s, {self.postfix}   ", end="", file=sys.stderr, flush=True)

    def write(self, line):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print("\r" + line.ljust(100), file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def evaluate(runner, frames):
    """(MSE of the predictions against the true frames, the MSEs of two trivial predictors,
    the predictions, the index of the first predicted frame). The trivial predictors: "copy"
    repeats the last frame seen (the previous frame for next-frame prediction, the last input
    frame for extrapolation), "blank" predicts black frames (on these sparse frames, the level
    a model reaches by blurring everything away)."""
    runner.model.eval()
    predictions, first = runner.predict(frames)
    runner.model.train()
    target = frames[:, first:]
    copy = frames[:, :-1] if first == 1 else frames[:, first - 1:first].expand_as(target)
    baselines = {"copy": F.mse_loss(copy, target).item(), "blank": target.square().mean().item()}
    return F.mse_loss(predictions, target).item(), baselines, predictions, first


def save_loss_curve(path, losses, evals, baselines, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(range(1, len(losses) + 1), losses, lw=0.7, alpha=0.5, label="per iteration")
    k = max(1, len(losses) // 20)
    if len(losses) >= 2 * k > 1:
        smooth = torch.tensor(losses).unfold(0, k, 1).mean(dim=1)
        ax1.plot(range(k, len(losses) + 1), smooth.tolist(), lw=1.5, label=f"mean of {k}")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("training loss")
    ax1.set_yscale("log")
    ax1.legend()
    ax1.set_title("training loss")
    if evals:
        ax2.plot([i for i, _ in evals], [m for _, m in evals], "o-", label="model")
    ax2.axhline(baselines["copy"], color="gray", ls="--", label="copy last seen frame")
    ax2.axhline(baselines["blank"], color="gray", ls=":", label="blank frame")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("validation MSE")
    ax2.set_yscale("log")
    ax2.legend()
    ax2.set_title("validation MSE of the predicted frames")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_strip(path, truth, predictions, first, title):
    """truth (T, H, W), predictions (T - first, H, W): two rows, predictions under their frames."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T, H, W = truth.shape
    gap = 2
    canvas = torch.full((2 * H + gap, T * (W + gap) - gap), 0.35)
    for t in range(T):
        x = t * (W + gap)
        canvas[:H, x:x + W] = truth[t]
        if t >= first:
            canvas[H + gap:, x:x + W] = predictions[t - first]
    fig, ax = plt.subplots(figsize=(max(4.0, T * 0.75), 2.0))
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([t * (W + gap) + W / 2 for t in range(T)], [str(t) for t in range(T)], fontsize=7)
    ax.set_yticks([H / 2, H + gap + H / 2], ["ground truth", "prediction"], fontsize=8)
    if first > 1:
        ax.axvline(first * (W + gap) - gap / 2 - 0.5, color="red", lw=1)
    ax.set_xlabel("frame", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=sorted(RUNNERS), default="predrnn_v2")
    p.add_argument("--iters", type=int, default=200, help="training iterations (one fresh batch each)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=32, help="frames are img-size x img-size, one channel")
    p.add_argument("--frames", type=int, default=20, help="frames per sequence, input + output")
    p.add_argument("--input-frames", type=int, default=None, help="observed frames; None = --frames // 2")
    p.add_argument("--shapes", choices=("balls", "digits", "mixed"), default="mixed")
    p.add_argument("--hidden", type=int, default=32,
                   help="PredRNN-V2: channels of every layer; PredNet: channels of the top layer (halved below)")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--patch-size", type=int, default=4, help="PredRNN-V2 patch size (32x32 -> 8x8x16)")
    p.add_argument("--filter-size", type=int, default=3, help="PredRNN-V2 conv kernel size (thuml: 5)")
    p.add_argument("--decouple-beta", type=float, default=0.1, help="PredRNN-V2 decoupling loss weight")
    p.add_argument("--prednet-extrap", action="store_true",
                   help="PredNet: train and evaluate extrapolation from --input-frames on (coxlab's fine-tuning "
                        "mode) instead of next-frame prediction")
    p.add_argument("--prednet-loss", choices=("mse", "L_0", "L_all"), default="mse",
                   help="PredNet: MSE of the predictions, or coxlab's L1 losses on the error units (which collapse "
                        "to black frames on this sparse data; see PredNetRunner)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=None, help="validate every N iterations; None = iters // 10")
    p.add_argument("--val-size", type=int, default=8, help="sequences in the fixed validation batch")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=predkern.backends.BACKENDS, default=None,
                   help="force a predkern backend; None = the automatic choice")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads, 0 = torch's default (one per core). 1 is the default because on a "
                        "small machine shared with other jobs, more threads than free cores stall at every op")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.input_frames is None:
        args.input_frames = args.frames // 2
    if not 2 <= args.input_frames < args.frames:
        p.error(f"need 2 <= --input-frames < --frames, got {args.input_frames} and {args.frames}")
    if args.iters < 1:
        p.error("--iters must be >= 1")
    return args


def main(argv=None) -> dict:
    """Train, validate, plot. Returns {"losses", "evals" [(iter, val MSE)], "baselines" {"copy", "blank"},
    "val_mse", "seconds", "loss_curve", "predictions"} (paths of the two PNGs)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    data = BouncingShapes(args.img_size, args.frames, args.shapes, seed=args.seed)
    val = BouncingShapes(args.img_size, args.frames, args.shapes, seed=args.seed + 1).batch(args.val_size).to(device)
    eval_every = args.eval_every or max(1, args.iters // 10)
    args.out.mkdir(parents=True, exist_ok=True)

    with contextlib.ExitStack() as stack:
        if args.threads > 0 and device.type == "cpu":  # process-wide: restored on the way out
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(args.threads)
        if args.backend:
            stack.enter_context(predkern.backends.use(args.backend))
        runner = RUNNERS[args.model](args, device)
        model = runner.model
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        n_params = sum(p.numel() for p in model.parameters())
        backend = args.backend or predkern.backends.select(device.type)
        log = Progress(args.iters, runner.name, enabled=not args.quiet)
        log.write(f"{runner.name}: {n_params / 1e3:.1f}k parameters, {args.frames} frames of "
                  f"{args.img_size}x{args.img_size} ({args.input_frames} observed), batch {args.batch_size}, "
                  f"{args.iters} iterations on {device} (predkern backend: {backend})")
        val_mse, baselines, _, _ = evaluate(runner, val)
        reference = f"(copy last frame {baselines['copy']:.5f}, blank {baselines['blank']:.5f})"
        losses, evals = [], [(0, val_mse)]
        start = time.perf_counter()
        for itr in range(1, args.iters + 1):
            frames = data.batch(args.batch_size).to(device)
            loss = runner.train_loss(frames, itr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                log.close()
                raise FloatingPointError(f"loss is {losses[-1]} at iteration {itr}")
            if itr % eval_every == 0 or itr == args.iters:
                val_mse, _, predictions, first = evaluate(runner, val)
                evals.append((itr, val_mse))
                log.write(f"iter {itr:5d}  train loss {losses[-1]:.5f}  val MSE {val_mse:.5f} {reference}")
            log.update(loss=f"{losses[-1]:.4f}")
        seconds = time.perf_counter() - start
        log.close()

    mode = "next-frame" if first == 1 else f"frames {first}..{args.frames - 1} from {first} observed"
    title = f"{runner.name}, {args.iters} iterations, {args.shapes} shapes ({mode})"
    loss_curve, strip = args.out / "loss_curve.png", args.out / "predictions.png"
    save_loss_curve(loss_curve, losses, evals, baselines, title)
    save_strip(strip, val[0, ..., 0].cpu(), predictions[0, ..., 0].float().cpu(), first,
               f"{title}\nval MSE {val_mse:.4f} (copy last seen frame {baselines['copy']:.4f}, "
               f"blank {baselines['blank']:.4f})")
    k = max(1, min(10, len(losses) // 10))
    print(f"{runner.name}: {args.iters} iterations in {seconds:.1f}s ({args.iters / seconds:.2f} it/s); "
          f"training loss {sum(losses[:k]) / k:.5f} (first {k}) -> {sum(losses[-k:]) / k:.5f} (last {k}); "
          f"val MSE {val_mse:.5f} {reference}")
    print(f"wrote {loss_curve} and {strip}")
    return {"losses": losses, "evals": evals, "baselines": baselines, "val_mse": val_mse, "seconds": seconds,
            "loss_curve": loss_curve, "predictions": strip}


if __name__ == "__main__":
    main()
