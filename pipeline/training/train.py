"""Training: an explicit loop over cached uint8 images, in the spirit of torchvision's reference script.

Speed on a small CPU comes from three choices: images are decoded once (the cache) and augmented
as whole batches with one affine_grid/grid_sample call; convolutions run in bfloat16 autocast
where the CPU has native bf16 (AVX-512 BF16 / AMX) or on CUDA; tensors are channels_last, the
layout oneDNN's fast kernels want.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline import timing
from pipeline.settings import config
from pipeline.data import dataset, preprocess
from pipeline.data import training_data
from pipeline.evaluation import evaluate
from pipeline.training import gate_fit
from pipeline.training.augment import augment
from pipeline.model import artifacts
from pipeline.model.network import ARCH, build_model
from pipeline.settings.params import Params, Train
from pipeline.inference.predict import Predictor
from pipeline.evaluation.quality import fit_and_score


@dataclass
class TrainResult:
    checkpoint: Path
    out_dir: Path
    metrics: dict                 # held-out test metrics at the chosen threshold
    history: list[dict]
    dataset: dict
    system: dict
    plots: list[Path] = field(default_factory=list)
    validation_report: Path | None = None
    gate_metrics: dict = field(default_factory=dict)  # pipeline.training.gate_fit.fit: thresholds and val rates
    splits: dataset.Splits | None = None                  # the patients of each split (MLflow's dataset input)


class MemoryCeilingExceeded(MemoryError):
    pass


class StopTraining(Exception):
    """Raised by an on_step hook to end training early."""


def bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting, device: torch.device) -> bool:
    setting = str(setting).lower()
    if setting in ("on", "true"):
        return True
    if setting in ("off", "false"):
        return False
    return bf16_available(device)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 1% of the peak rate."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # Decay conv/linear weights only: decaying BatchNorm scales and biases only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _check_memory(limit_gb: float) -> None:
    rss = psutil.Process().memory_info().rss
    if limit_gb and rss > limit_gb * 2**30:
        raise MemoryCeilingExceeded(
            f"training uses {rss / 2**30:.1f} GiB > train.memory_limit_gb={limit_gb}: "
            f"lower train.batch_size or preprocess.image_size"
        )


def _batches(n: int, batch_size: int, perm: torch.Tensor | None = None):
    order = perm if perm is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size].numpy()


def _scores(model, images: np.ndarray, device, bf16: bool, batch_size: int, mode: str) -> np.ndarray:
    """Logits of the model on uint8 images (used for the per-epoch validation score)."""
    model.eval()
    out = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for idx in _batches(len(images), batch_size):
            x = torch.from_numpy(images[idx]).to(device).unsqueeze(1)
            x = preprocess.model_input(x, mode).contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().squeeze(1).cpu())
    return torch.cat(out).numpy()


class WeightAverage:
    """Exponential moving average of the weights (and BatchNorm statistics): a flatter, more
    robust solution than the last SGD iterate, at the cost of one lerp per step. The decay warms up
    as (1 + t) / (10 + t), so short runs (quick mode, tests) average recent weights, not the
    random initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, cur in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur, 1.0 - decay)
            else:
                avg.copy_(cur)


@dataclass
class Loop:
    """What every step of training shares (the torchvision reference passes these one by one)."""
    model: torch.nn.Module
    ema: WeightAverage | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: torch.nn.Module
    device: torch.device
    bf16: bool
    mode: str                 # preprocess.intensity
    tp: Train                 # params.train
    gen: torch.Generator
    step: int = 0

    @property
    def scored(self) -> torch.nn.Module:
        """The weights validation judges and training keeps: the EMA when there is one."""
        return self.ema.model if self.ema is not None else self.model


def train_one_epoch(loop: Loop, x_train: np.ndarray, y_train: np.ndarray, epoch: int, epochs: int,
                    progress: bool = True, on_step=None) -> tuple[dict, bool]:
    """One pass over the training images in a seeded order. Returns ({train_loss, seen, seconds},
    stopped: on_step raised StopTraining)."""
    tp, model = loop.tp, loop.model
    batch_size, smoothing = tp.batch_size, tp.label_smoothing
    model.train()
    t_epoch, seen, loss_sum, stopped = time.time(), 0, 0.0, False
    perm = torch.randperm(len(x_train), generator=loop.gen)
    bar = tqdm(_batches(len(x_train), batch_size, perm), total=math.ceil(len(x_train) / batch_size),
               disable=not progress, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False)
    for idx in bar:
        x = augment(torch.from_numpy(x_train[idx]).unsqueeze(1), tp.augment, loop.gen)
        x = preprocess.model_input(x, loop.mode).to(loop.device).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(y_train[idx]).float().to(loop.device)
        y = y * (1 - smoothing) + 0.5 * smoothing
        with torch.autocast(loop.device.type, dtype=torch.bfloat16, enabled=loop.bf16):
            logits = model(x)
        loss = loop.loss_fn(logits.float().squeeze(1), y)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        loop.scheduler.step()
        if loop.ema is not None:
            loop.ema.update(model)
        seen += len(idx)
        loss_sum += loss.item() * len(idx)
        _check_memory(tp.memory_limit_gb)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{seen / (time.time() - t_epoch):.1f}")
        loop.step += 1
        if on_step:
            try:
                on_step(loop.step, loop.scored)
            except StopTraining:
                stopped = True
                break
            model.train()
    return {"train_loss": loss_sum / seen, "seen": seen, "seconds": time.time() - t_epoch}, stopped


def validate(loop: Loop, x_val: np.ndarray, y_val: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(loss, AUC) of the kept weights on the validation images."""
    val_logits = _scores(loop.scored, x_val, loop.device, loop.bf16, batch_size, loop.mode)
    val_loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(val_logits), torch.from_numpy(y_val).float()))
    return val_loss, evaluate.roc_auc(y_val, val_logits)


def make_loop(params: Params, y_train: np.ndarray, device: torch.device, gen: torch.Generator,
              init: str | Path | None = None) -> Loop:
    """Model (params model.init, or `init`: its model.pt), EMA, AdamW with warm-up + cosine, class-balanced loss."""
    tp = params.train
    model = build_model(init or params.model.init).to(device, memory_format=torch.channels_last)
    decay = tp.ema_decay
    steps_per_epoch = math.ceil(len(y_train) / tp.batch_size)
    epochs = tp.epochs
    optimizer = make_optimizer(model, tp.lr, tp.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        int(tp.warmup_epochs * steps_per_epoch), max(1, epochs * steps_per_epoch)))
    n_pos = int(y_train.sum())
    pos_weight = (len(y_train) - n_pos) / max(1, n_pos) if tp.class_weighting == "balanced" else 1.0
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
    return Loop(model, WeightAverage(model, decay) if decay > 0 else None, optimizer, scheduler, loss_fn, device,
                use_bf16(tp.bf16, device), params.preprocess.intensity, tp, gen)


def train(params: Params, data_root: str | Path, out_dir: str | Path,
          on_epoch_end: Callable[[dict], None] | None = None, progress: bool = True,
          on_step: Callable[[int, torch.nn.Module], None] | None = None,
          init: str | Path | None = None) -> TrainResult:
    """Validate and split the data at data_root, train, pick the threshold, score the held-out set.

    Writes to out_dir: model.pt, metrics.json, history.json, split.json, validation_report.json,
    plots/*.png. on_epoch_end receives each epoch's record (MLflow logging hooks in there);
    on_step(global_step, model) runs after every optimiser step with the weights training keeps (the
    EMA's when there is one; benchmarks probe with it; raising StopTraining ends training early,
    keeping the best model so far).
    """
    start = time.time()
    tp, out_dir = params.train, Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(tp.threads or os.cpu_count() or 1)
    gen = seed_everything(params.data.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    with timing.step("load data"):
        splits, report, cache = training_data.load(data_root, params)
        report.save(out_dir / "validation_report.json")
        (out_dir / "split.json").write_text(json.dumps(splits.to_dict(Path(data_root)), indent=1))
        x_train, y_train = dataset.arrays(splits.train, cache)
        x_val, y_val = dataset.arrays(splits.val, cache)

    loop = make_loop(params, y_train, device, gen, init)
    with timing.step("epochs"):
        history = fit(loop, x_train, y_train, x_val, y_val, params, progress, on_epoch_end, on_step)
    del x_train
    model = loop.model

    # Calibration, threshold and held-out scores come from the float32 Predictor: the numbers serving reproduces.
    predictor = Predictor(model, params.preprocess.image_size, 0.5, device=str(device), intensity=loop.mode)
    quality = fit_and_score(predictor, splits, params, cache, out_dir)
    metrics = quality["metrics"]
    metrics["val_auc"] = float(max((h["val_auc"] for h in history), default=-1.0))
    metrics["best_epoch"] = max(history, key=lambda h: h["val_auc"])["epoch"] if history else 0
    # input gate: fitted on training X-rays, thresholds on validation ones (pipeline.inference.gate)
    gp = params.gate
    gate_state, gate_metrics = None, {}
    if gp.enabled:
        with timing.step("gate fit"):
            gate_state, gate_metrics = gate_fit.fit(predictor, dataset.arrays(splits.train, cache)[0], x_val,
                                                    gp.target_false_refusal, gp.max_fit_images,
                                                    params.data.seed, gp.distance_margin,
                                                    (quality["val_outputs"].z, quality["val_outputs"].features))

    data_info = {"root": str(data_root), "fingerprint": dataset.dataset_fingerprint(
        splits.train + splits.val + splits.test), "counts": splits.counts(),
        "rejected": len(report.rejected), "duplicates": len(report.duplicates),
        "golden": report.golden, "golden_excluded": len(report.golden_excluded),
        "golden_excluded_patients": len({g["patient"] for g in report.golden_excluded})}
    system = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
              "bf16": loop.bf16, "channels_last": True, "cpu": platform.processor() or platform.machine(),
              "python": platform.python_version(), "wall_time_s": round(time.time() - start, 1)}
    checkpoint = save_checkpoint(out_dir / artifacts.CHECKPOINT_FILE, predictor, params, metrics, data_info["fingerprint"], gate_state)
    plots = evaluate.save_plots(quality["y_test"], quality["p_test"], predictor.threshold, history, out_dir / "plots")
    plots += quality["plots"]
    evaluate.save_metrics(metrics, out_dir / "metrics.json")
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    system["wall_time_s"] = round(time.time() - start, 1)
    return TrainResult(checkpoint, out_dir, metrics, history, data_info, system,
                       plots, out_dir / "validation_report.json", gate_metrics, splits)


def fit(loop: Loop, x_train, y_train, x_val, y_val, params: Params, progress: bool = True,
        on_epoch_end=None, on_step=None) -> list[dict]:
    """Epochs with validation and early stopping on validation AUC; leaves the best weights (the
    EMA's when there is one) in loop.model. Returns one record per epoch."""
    tp = loop.tp
    epochs = tp.epochs
    history: list[dict] = []
    best_auc, best_state, stale = -1.0, copy.deepcopy(loop.model.state_dict()), 0
    for epoch in range(1, epochs + 1):
        t_epoch = time.time()
        trained, stopped = train_one_epoch(loop, x_train, y_train, epoch, epochs, progress, on_step)
        val_loss, val_auc = validate(loop, x_val, y_val, params.evaluate.batch_size)
        record = {"epoch": epoch, "train_loss": trained["train_loss"], "val_loss": val_loss, "val_auc": val_auc,
                  "lr": loop.optimizer.param_groups[0]["lr"], "seconds": time.time() - t_epoch,
                  "images_per_s": trained["seen"] / trained["seconds"]}
        history.append(record)
        tqdm.write(  # one line per epoch, also in non-interactive logs (Airflow, CI)
            f"epoch {epoch}/{epochs}: train_loss {record['train_loss']:.4f}  val_loss {val_loss:.4f}"
            f"  val_auc {val_auc:.4f}  {record['images_per_s']:.1f} img/s  {record['seconds']:.0f}s")
        if on_epoch_end:
            on_epoch_end(record)
        if val_auc > best_auc:
            best_auc, best_state, stale = val_auc, copy.deepcopy(loop.scored.state_dict()), 0
        else:
            stale += 1
            if stale >= tp.patience:
                tqdm.write(f"early stop: no validation AUC gain for {stale} epochs")
                break
        if stopped:
            break
    loop.model.load_state_dict(best_state)
    return history


def save_checkpoint(path: Path, predictor: Predictor, params: Params, metrics: dict, fingerprint: str,
                    gate_state: dict | None) -> Path:
    """model.pt: the weights and everything an answer depends on (size, intensity, calibration,
    threshold, gate), with the params and metrics it came from."""
    torch.save({"state_dict": {k: v.cpu() for k, v in predictor.model.state_dict().items()}, "arch": ARCH,
                "in_channels": 1, "image_size": params.preprocess.image_size,
                "threshold": predictor.threshold, "classes": list(config.CLASSES), "params": params.to_dict(),
                "intensity": predictor.intensity, "calibration": predictor.calibration.to_dict(),
                "threshold_rule": params.evaluate.threshold_rule,
                "metrics": metrics, "dataset_fingerprint": fingerprint,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(), "gate": gate_state}, path)
    return path
