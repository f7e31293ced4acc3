import math
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import timer as timer_module
from torch.utils.data import DataLoader

from lightning_bts.errors import ConfigError
from lightning_bts.training.module import SegmentationModule
from lightning_bts.training.optim import KerasAdam
from lightning_bts.training.schedules import BudgetSchedule, time_progress


def keras_adam_update(grads: list[float], lr: float, eps: float) -> float:
    """Keras' Adam on one weight, written out: epsilon added to sqrt(v) before bias correction,
    the bias corrections computed with float32 betas (as TensorFlow does)."""
    b1, b2 = float(np.float32(0.9)), float(np.float32(0.999))
    w = m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w -= lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (math.sqrt(v) + eps)
    return w


@pytest.mark.parametrize("scale", [1e-6, 1.0])
def test_keras_adam_takes_keras_steps(scale):
    # Gradients of 1e-6 (typical for a per-pixel mean loss) are where torch's and Keras' epsilon differ.
    grads = [scale * g for g in (1.0, -0.5, 2.0, 0.25, 1.5)]
    weight = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = KerasAdam([weight], lr=1e-3, eps=1e-7)
    for g in grads:
        weight.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
    assert weight.item() == pytest.approx(keras_adam_update(grads, 1e-3, 1e-7), rel=1e-12)

    stock = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    stock_optimizer = torch.optim.Adam([stock], lr=1e-3, eps=1e-7)
    for g in grads:
        stock.grad = torch.tensor([g], dtype=torch.float64)
        stock_optimizer.step()
    if scale < 1e-3:  # the difference is real where gradients are as small as epsilon
        assert abs(stock.item() - weight.item()) > 0.1 * abs(weight.item())


def test_keras_adam_restores_lr_and_eps_so_schedulers_work():
    weight = torch.zeros(2, requires_grad=True)
    optimizer = KerasAdam([weight], lr=1e-3, eps=1e-7)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    weight.grad = torch.ones(2)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert optimizer.param_groups[0]["eps"] == 1e-7


def test_keras_adam_resumes_its_step_count_from_a_state_dict():
    weight = torch.zeros(1, requires_grad=True)
    optimizer = KerasAdam([weight])
    for _ in range(3):
        weight.grad = torch.ones(1)
        optimizer.step()
    resumed = KerasAdam([torch.zeros(1, requires_grad=True)])
    resumed.load_state_dict(optimizer.state_dict())
    assert resumed.param_groups[0]["keras_step"] == 3


def test_the_module_trains_with_keras_adam_unless_asked_not_to():
    assert type(SegmentationModule(base_filters=4).configure_optimizers()) is KerasAdam
    assert type(SegmentationModule(base_filters=4, keras_adam=False).configure_optimizers()) is torch.optim.Adam


# ---- optimisers and schedules (model.optimizer, model.scheduler, model.warmup_epochs, model.min_lr) ----

TINY = {"base_filters": 4, "depth": 2, "hausdorff": False, "channels_last": False}


@pytest.mark.parametrize("name,kind", [("keras_adam", KerasAdam), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_each_optimizer_is_built_and_takes_a_step(name, kind):
    torch.manual_seed(0)
    module = SegmentationModule(**TINY, optimizer=name, weight_decay=1e-4, momentum=0.9)
    optimizer = module.configure_optimizers()
    assert type(optimizer) is kind and optimizer.param_groups[0]["weight_decay"] == 1e-4
    if name == "sgd":
        assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.9
    before = module.net.head.weight.detach().clone()
    batch = {"image": torch.rand(2, 3, 16, 16) * 255, "mask": (torch.rand(2, 1, 16, 16) > 0.5).float()}
    module.loss_fn(module(batch["image"]), batch["mask"]).backward()
    optimizer.step()
    assert not torch.equal(before, module.net.head.weight) and torch.isfinite(module.net.head.weight).all()


def test_old_keras_adam_flag_still_chooses_and_conflicts_are_named():
    assert type(SegmentationModule(**TINY, keras_adam=False, optimizer=None).configure_optimizers()) is torch.optim.Adam
    with pytest.raises(ConfigError, match="model.keras_adam"):
        SegmentationModule(**TINY, keras_adam=False, optimizer="keras_adam")
    with pytest.raises(ConfigError, match="adamw"):
        SegmentationModule(**TINY, optimizer="lion")
    with pytest.raises(ConfigError, match="model.momentum"):
        SegmentationModule(**TINY, optimizer="sgd", momentum=0.0).configure_optimizers()
    with pytest.raises(ConfigError, match="poly"):
        SegmentationModule(**TINY, scheduler="step")
    with pytest.raises(ConfigError, match="model.min_lr"):
        SegmentationModule(**TINY, min_lr=1.0)


def lrs_of(schedule: BudgetSchedule, steps: int) -> list[float]:
    """The learning rate each of ``steps`` optimizer steps runs at."""
    rates = []
    for _ in range(steps):
        rates.append(schedule.optimizer.param_groups[0]["lr"])
        schedule.optimizer.step()
        schedule.step()
    return rates


def schedule(kind: str, total: float, warmup: int = 0, min_lr: float = 0.0, time_spent=None) -> BudgetSchedule:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    return BudgetSchedule(optimizer, kind, total, warmup, min_lr, time_spent)


def test_cosine_and_poly_follow_their_formulas_and_end_at_the_last_step():
    cosine = lrs_of(schedule("cosine", 11, min_lr=0.001), 11)
    expected = [0.001 + 0.099 * (1 + math.cos(math.pi * i / 10)) / 2 for i in range(11)]
    assert cosine == pytest.approx(expected, rel=1e-12) and cosine[-1] == pytest.approx(0.001, abs=1e-15)
    poly = lrs_of(schedule("poly", 11), 11)
    assert poly == pytest.approx([0.1 * (1 - i / 10) ** 0.9 for i in range(11)], rel=1e-12) and poly[-1] == 0


def test_warmup_ramps_linearly_then_the_decay_takes_over():
    rates = lrs_of(schedule("cosine", 21, warmup=4), 21)
    decay = [0.1 * (1 + math.cos(math.pi * i / 20)) / 2 for i in range(21)]
    assert rates[:4] == pytest.approx([decay[i] * (i + 1) / 5 for i in range(4)], rel=1e-12)
    assert rates[4:] == pytest.approx(decay[4:], rel=1e-12) and rates[-1] == 0
    assert lrs_of(schedule("none", math.inf, warmup=3), 6) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_plateau_keeps_its_reductions_after_the_warmup():
    warm = schedule("plateau", math.inf, warmup=2)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(warm.optimizer, mode="max", factor=0.5, patience=0)
    lrs_of(warm, 3)
    plateau.step(0.5)
    plateau.step(0.4)  # no improvement: halve
    assert lrs_of(warm, 3) == pytest.approx([0.05] * 3)


def test_time_progress_extrapolates_one_step_and_never_passes_one():
    # equal steps, a budget of 10 steps: before step i, i/10 of the time is spent; step 9 must run at the end
    assert [time_progress(i / 10, i) for i in range(10)] == pytest.approx([i / 9 for i in range(10)])
    assert time_progress(0.99, 3) == 1.0 and time_progress(0.0, 0) == 0.0


def test_schedule_state_saves_without_its_clock(tmp_path):
    timed = schedule("cosine", math.inf, time_spent=lambda: 0.5)
    lrs_of(timed, 3)
    torch.save(timed.state_dict(), tmp_path / "s.pt")  # a closure would not pickle
    resumed = schedule("cosine", math.inf, time_spent=lambda: 0.75)
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=False))
    assert resumed.last_epoch == 3 and resumed.time_spent() == 0.75


def tiny_loader(batches: int = 3, batch_size: int = 2, size: int = 16) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, size, size, generator=generator) * 255,
              "mask": (torch.rand(1, size, size, generator=generator) > 0.7).float()}
             for _ in range(batches * batch_size)]
    return DataLoader(items, batch_size=batch_size)


class RecordLR(pl.Callback):
    """The learning rate of every optimizer step; optionally advances a fake clock by 1 s per step."""

    def __init__(self, clock: list[float] | None = None) -> None:
        self.rates: list[float] = []
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.clock is not None:
            self.clock[0] += 1.0
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit_recording(tmp_path, module_kwargs, **trainer_kwargs) -> list[float]:
    torch.manual_seed(0)
    recorder = RecordLR(trainer_kwargs.pop("clock", None))
    module = SegmentationModule(**TINY, loss="bce", lr=0.01, min_lr=1e-4, **module_kwargs)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[recorder],
                         default_root_dir=tmp_path, **trainer_kwargs)
    trainer.fit(module, train_dataloaders=tiny_loader())
    assert len(recorder.rates) == trainer.global_step
    return recorder.rates


@pytest.mark.parametrize("kind", ["cosine", "poly"])
@pytest.mark.parametrize("budget", [{"max_epochs": 3}, {"max_steps": 7}])
def test_the_last_step_runs_at_the_end_value_for_epoch_and_step_budgets(tmp_path, kind, budget):
    rates = fit_recording(tmp_path, {"scheduler": kind, "warmup_epochs": 1.0}, **budget)
    assert len(rates) == (9 if "max_epochs" in budget else 7)
    assert rates[0] == pytest.approx(0.01 / 4, rel=1e-6)  # one epoch = 3 steps of warm-up: 1/4, 2/4, 3/4
    assert rates[-1] == pytest.approx(1e-4, rel=1e-9) and rates[-2] > 1e-4 * 1.5


@pytest.mark.parametrize("kind", ["cosine", "poly"])
def test_a_time_budget_ends_the_schedule_when_time_runs_out(tmp_path, monkeypatch, kind):
    clock = [0.0]  # a fake clock for Lightning's Timer: 1 s per training step, no real waiting
    monkeypatch.setattr(timer_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    rates = fit_recording(tmp_path, {"scheduler": kind}, max_epochs=-1, max_time={"seconds": 8}, clock=clock)
    assert len(rates) == 8  # the Timer stops the run after the step that reaches 8 s
    assert rates[-1] == pytest.approx(1e-4, rel=1e-9) and rates[-2] > 1e-4 * 1.5
    assert rates == sorted(rates, reverse=True)


def _one_weight_step(name: str, weight_decay: float, lr: float = 0.1) -> float:
    """The weight after one step from w = 1 with a zero loss gradient: only weight decay moves it."""
    from lightning_bts.training.optim import build_optimizer

    weight = torch.ones(1, requires_grad=True)
    optimizer = build_optimizer(name, [weight], lr=lr, weight_decay=weight_decay, momentum=0.9)
    (0 * weight).sum().backward()
    optimizer.step()
    return weight.item()


def test_weight_decay_is_decoupled_for_adamw_and_an_l2_gradient_otherwise():
    assert _one_weight_step("adamw", 0.01) == pytest.approx(1 - 0.1 * 0.01)  # w -= lr * wd * w
    # L2 in the gradient (g = wd * w): Adam normalises it to a step of ~lr whatever its size
    assert _one_weight_step("adam", 0.01) == pytest.approx(1 - 0.1, rel=1e-4)
    assert _one_weight_step("keras_adam", 0.01) == pytest.approx(1 - 0.1, rel=1e-3)
    assert _one_weight_step("sgd", 0.01) == pytest.approx(1 - 0.1 * 0.01 * (1 + 0.9))  # Nesterov: g (1 + m)
    for name in ("adamw", "adam", "keras_adam", "sgd"):
        assert _one_weight_step(name, 0.0) == 1.0
    with pytest.raises(ConfigError, match="weight_decay"):
        _one_weight_step("adamw", -0.1)


@pytest.mark.parametrize("kind,warmup,expected", [
    ("none", 0.0, []),
    ("cosine", 0.0, [("BudgetSchedule", "step")]),
    ("poly", 0.0, [("BudgetSchedule", "step")]),
    ("none", 0.5, [("BudgetSchedule", "step")]),  # warm-up alone: a constant rate after it
    ("plateau", 0.0, [("ReduceLROnPlateau", "epoch")]),
    ("plateau", 0.5, [("BudgetSchedule", "step"), ("ReduceLROnPlateau", "epoch")]),
])
def test_each_scheduler_branch_gives_lightning_its_configs(kind, warmup, expected):
    from lightning_bts.training.schedules import lightning_schedulers

    trainer = SimpleNamespace(train_dataloader=object(), num_training_batches=10, accumulate_grad_batches=1,
                              estimated_stepping_batches=100, callbacks=[])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    configs = lightning_schedulers(optimizer, trainer, kind, warmup_epochs=warmup, monitor="val/dice")
    assert [(type(c["scheduler"]).__name__, c["interval"]) for c in configs] == expected
    schedules = [c["scheduler"] for c in configs if isinstance(c["scheduler"], BudgetSchedule)]
    if schedules:
        assert schedules[0].warmup_steps == round(warmup * 10) and schedules[0].total_steps == 100
    if kind == "plateau":
        assert configs[-1]["monitor"] == "val/dice"
