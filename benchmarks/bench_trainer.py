"""Training throughput of `Trainer` against a minimal hand-written loop, on CPU.

Run: ``.venv/bin/python benchmarks/bench_trainer.py`` (about 1 minute on 2 cores), or
``--quick`` for a smoke run. Prints a Markdown table; the ratio is Trainer / bare loop
measured in the same run (absolute numbers vary by +-20 % between runs and machines).

What is compared: the same model (our from-scratch ``UNet``, base 16, depth 4, 2 classes),
the same loss (``DiceCELoss``), optimiser (AdamW, lr 1e-3), data (in-memory 1x96x96
images of bright discs, batch 16, shuffled, ``num_workers=0``) and number of epochs:

- ``bare loop``: ``zero_grad, forward, loss, backward, step`` plus ``loss.item()`` per
  batch (every real loop tracks its loss);
- ``Trainer (core)``: `Trainer.fit` without run directory, progress bars or the data check:
  the cost of the loop itself (NaN check, scheduler step, epoch bookkeeping);
- ``Trainer (as used)``: with a cosine scheduler, ``history.csv`` and ``last.pt`` written
  every epoch and (hidden) tqdm bars. Its data check runs once before the timed epochs.

Epochs here are short (8 steps), so the per-epoch checkpoint write weighs more than in a
real run (hundreds of steps per epoch); its cost is printed under the table.

Validation is off in all three (the bare loop has none). Variants are run in interleaved
rounds (A, B, C, A, B, C, ...) after a warm-up, and the median epoch time per variant is
reported, so a background load spike hits all of them alike. On a machine shared with other
jobs, use ``--clock cpu`` with ``OMP_NUM_THREADS=1``: epochs are then timed in CPU seconds
of this process (`time.process_time`), which waiting for a core does not inflate.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg_helpers.losses import DiceCELoss  # noqa: E402
from medseg_helpers.networks import build_model  # noqa: E402
from medseg_helpers.training.schedules import build_optimizer, build_scheduler  # noqa: E402
from medseg_helpers.training.trainer import Trainer  # noqa: E402

_clock = time.perf_counter  # epoch timer; --clock cpu switches to time.process_time


class _DictDataset(TensorDataset):
    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label = super().__getitem__(index)
        return {"image": image, "label": label}


def make_data(num_images: int, size: int, seed: int = 0) -> _DictDataset:
    """Bright discs in noise: image (N, 1, S, S) float32, label (N, 1, S, S) int64."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size), dtype=np.float32)
    labels = np.zeros((num_images, 1, size, size), np.int64)
    for n in range(num_images):
        cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
        radius = rng.uniform(0.1 * size, 0.25 * size)
        labels[n, 0] = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    images = labels.astype(np.float32) + rng.normal(0, 0.3, labels.shape).astype(np.float32)
    return _DictDataset(torch.from_numpy(images), torch.from_numpy(labels))


def make_setup(dataset: _DictDataset, batch_size: int):
    torch.manual_seed(0)
    model = build_model("unet", 2, 1, 2, base_channels=16, depth=4)
    optimizer = build_optimizer(model.parameters(), "adamw", lr=1e-3)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    return model, DiceCELoss(), optimizer, loader


def bare_loop(dataset: _DictDataset, batch_size: int, epochs: int) -> list[float]:
    model, loss_fn, optimizer, loader = make_setup(dataset, batch_size)
    model.train()
    times = []
    for _ in range(epochs):
        start, total = _clock(), 0.0
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            total += loss.item()
        times.append(_clock() - start)
    return times


def trainer_run(dataset: _DictDataset, batch_size: int, epochs: int, as_used: bool) -> list[float]:
    model, loss_fn, optimizer, loader = make_setup(dataset, batch_size)
    times: list[float] = []

    class Timer:
        def on_train_begin(self, trainer):
            self.start = _clock()

        def on_epoch_end(self, trainer, logs):
            now = _clock()
            times.append(now - self.start)
            self.start = now

        def on_train_end(self, trainer, metrics):
            pass

    with tempfile.TemporaryDirectory() as run_dir:
        scheduler = (build_scheduler(optimizer, "cosine", total_steps=epochs * len(loader),
                                     warmup_steps=len(loader)) if as_used else None)
        trainer = Trainer(model, loss_fn, optimizer, loader, None, num_classes=2,
                          scheduler=scheduler, max_epochs=epochs, device="cpu",
                          run_dir=run_dir if as_used else None, progress=as_used,
                          tensorboard=False, check_data=as_used, callbacks=[Timer()])
        stderr, sys.stderr = sys.stderr, io.StringIO()  # hide the bars, keep their cost
        try:
            trainer.fit()
        finally:
            sys.stderr = stderr
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time epochs in wall-clock or process CPU seconds")
    args = parser.parse_args()
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    size, num_images, batch, epochs, rounds = ((64, 64, 16, 1, 1) if args.quick
                                               else (96, 128, 16, 2, 4))
    dataset = make_data(num_images, size)
    variants = {
        "bare loop": lambda: bare_loop(dataset, batch, epochs),
        "Trainer (core)": lambda: trainer_run(dataset, batch, epochs, as_used=False),
        "Trainer (as used)": lambda: trainer_run(dataset, batch, epochs, as_used=True),
    }
    bare_loop(dataset, batch, 1)  # warm-up: allocator, oneDNN kernels, imports
    trainer_run(dataset, batch, 1, as_used=True)
    epoch_times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            epoch_times[name] += run()
    steps = -(-num_images // batch)
    base = statistics.median(epoch_times["bare loop"])
    print(f"\nTrainer vs bare loop: UNet(base 16, depth 4), batch {batch} x 1x{size}x{size}, "
          f"{steps} steps/epoch, {rounds} rounds x {epochs} epochs, "
          f"{torch.get_num_threads()} threads, {args.clock} clock, torch {torch.__version__}\n")
    print("| variant | images/s | ms/step | epoch time / bare loop |")
    print("|---|---|---|---|")
    for name, times in epoch_times.items():
        median = statistics.median(times)
        print(f"| {name} | {num_images / median:.1f} | {1000 * median / steps:.1f} | "
              f"{median / base:.3f} |")
    seconds, megabytes = checkpoint_cost(dataset, batch)
    print(f"\none last.pt write (model + AdamW state + RNG): {1000 * seconds:.0f} ms, "
          f"{megabytes:.1f} MB = {seconds / base:.1%} of one bare-loop epoch here")


def checkpoint_cost(dataset: _DictDataset, batch_size: int) -> tuple[float, float]:
    """Median time and size of writing the "as used" Trainer's checkpoint (5 writes)."""
    from medseg_helpers.training.checkpoint import save_checkpoint

    model, loss_fn, optimizer, loader = make_setup(dataset, batch_size)
    trainer = Trainer(model, loss_fn, optimizer, loader, None, num_classes=2, device="cpu",
                      progress=False, check_data=False)
    trainer.train_step(next(iter(loader)))  # creates the AdamW moments
    with tempfile.TemporaryDirectory() as folder:
        path, times = Path(folder) / "last.pt", []
        for _ in range(5):
            start = time.perf_counter()
            save_checkpoint(trainer.state_dict(), path)
            times.append(time.perf_counter() - start)
        return statistics.median(times), path.stat().st_size / 1e6


if __name__ == "__main__":
    main()
