"""Throughput benchmark: the lab's pipeline against the bare model and a conventional pipeline.

Measured in one process on one machine (CUDA events on a GPU, ``perf_counter`` on a CPU):
the backbone's bare forward+backward on random tensors (the ceiling), a Finetune epoch with the
lab's on-device pipeline, the same epoch through a torchvision DataLoader with PIL transforms,
the R-DFCIL RRL step against the sum of its parts timed alone, the refinement step, ABD's
training step, the inversion step against its parts, evaluation, and peak memory.
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.nn import functional as F

from . import losses as L
from .config import resolve
from .data import dataset_spec, load_benchmark
from .distributed import pick_device
from .engine import evaluate, run_model, train_phase, training_step
from .graphs import compile_seconds, fused_optimizer
from .inversion import BatchNormStatistics, build_generator, frozen_copy, generator_step, inversion_losses, loss_weights
from .io import write_json
from .methods import ABD, RDFCIL, Finetune, Task
from .precision import PRECISIONS, autocast_for, pick_fastest


class Timer:
    """Seconds per call of ``fn`` after ``warmup`` calls (CUDA events when on a GPU)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn, steps: int = 10, warmup: int = 2) -> float:
        for _ in range(warmup):
            fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1000.0 / steps
        started = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - started) / steps


def sgd_step(model, optimizer, x, y, autocast):
    with autocast:
        loss = F.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def conventional_loader(bench, classes: range, batch_size: int, workers: int):
    """The published pipeline's shape: a Dataset of PIL images, torchvision transforms, workers,
    batches in pinned memory when the model is on CUDA."""
    from torchvision import transforms as T
    spec = bench.spec
    steps = [T.ToPILImage()]
    if spec.crop_padding:
        steps.append(T.RandomCrop(spec.image_size, padding=spec.crop_padding))
    if spec.flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    transform = T.Compose(steps)
    index = bench.train.indices(classes).cpu()
    images, labels = bench.train.images[index].cpu(), bench.train.labels[index].cpu()

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return transform(images[i]), labels[i]
    return torch.utils.data.DataLoader(Images(), batch_size=batch_size, shuffle=True, drop_last=True,
                                       num_workers=workers, persistent_workers=workers > 0,
                                       pin_memory=bench.train.device.type == "cuda")


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(config, steps: int = 10, workers: int = 2) -> dict:
    """Every throughput of the module docstring for ``config`` (two tasks of its split)."""
    device = pick_device(config.device)
    bench = load_benchmark(config, device)
    spec, b = bench.spec, config.batch_size
    autocast = autocast_for(device, config.precision)
    timer = Timer(device)
    torch.manual_seed(0)
    model = run_model(config, spec, device)  # channels-last on CUDA, as a run's
    model.head.add_task(len(bench.tasks[0]))
    out: dict = {"device": str(device), "dataset": config.dataset, "backbone": config.backbone,
                 "batch_size": b, "precision": config.precision, "rrl_forward": config.rrl_forward,
                 "torch": str(torch.__version__)}

    # 1. ceiling: forward + backward + SGD on random tensors already on the device
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(b, spec.channels, spec.image_size, spec.image_size, device=device)
    y = torch.randint(0, len(bench.tasks[0]), (b,), device=device)
    out["ceiling_s"] = timer(lambda: sgd_step(model, optimizer, x, y, autocast), steps)

    # 2. a Finetune epoch with the lab's pipeline (task 0's data, on-device batches + augmentation)
    task0 = Task(0, bench.tasks[0], 2)
    phase = Finetune(config, model, spec).phases(task0)[0]
    phase.epochs, phase.milestones = 1, []
    n_epoch = bench.train.num_batches(task0.classes, b, drop_last=True) * b
    generator = torch.Generator().manual_seed(0)
    compiling = compile_seconds()
    train_phase(model, phase, bench, config, generator, 0, None, None)  # warm-up
    compile_s = {"base": compile_seconds() - compiling}
    started = time.perf_counter()
    train_phase(model, phase, bench, config, generator, 0, None, None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out["lab_epoch_s"], out["epoch_images"] = time.perf_counter() - started, n_epoch

    # 3. the same epoch through a conventional DataLoader + PIL transforms
    loader = conventional_loader(bench, task0.classes, b, workers)
    model.train()
    for xb, yb in loader:  # warm-up epoch (starts the workers)
        break
    started = time.perf_counter()
    for xb, yb in loader:
        sgd_step(model, optimizer, xb.to(device, non_blocking=True), yb.to(device), autocast)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out["conventional_epoch_s"] = time.perf_counter() - started
    out["conventional_workers"] = workers

    # 4. R-DFCIL: freeze, a generator, task 1's RRL and refinement steps and their parts
    method, task1 = incremental_setup(RDFCIL, config, model, bench)
    xr, yr = next(bench.train.batches(task1.classes, b, shuffle=True, augment=True, generator=generator))
    rrl, refine = method.phases(task1)
    out.update(time_rrl(model, method, rrl, refine, xr, yr, timer, config.precision, config.graphs, steps, compile_s))
    abd, _ = incremental_setup(ABD, config, model, bench, like=method)  # the paper table's other method
    model.train()
    compiling = compile_seconds()
    out["abd_train_s"] = timer(phase_step(abd.phases(task1)[0], lambda: (xr, yr), config.precision, config.graphs,
                                          config.momentum), steps)
    compile_s["train"] = compile_seconds() - compiling
    compiling = compile_seconds()
    out.update(time_inversion(method, config, spec, device, timer, config.precision, steps))
    compile_s["inversion"] = compile_seconds() - compiling
    out["compile_s"] = compile_s  # seconds torch compiled each phase's step (graphs; 0 without)

    # 5. evaluation on the test images of the seen classes
    seen = range(0, bench.tasks[1].stop)
    n_test = len(bench.test.indices(seen))
    out["eval_s"], out["eval_images"] = timer(lambda: evaluate(model, bench, seen, config.eval_batch_size), 3, 1), n_test
    out["peak_memory_mb"] = peak_memory_mb(device)
    return out


def incremental_setup(method_class, config, model, bench, like=None):
    """``method_class`` at task 1 of ``bench`` after task 0 on ``model``, and task 1: the old
    model frozen, a generator (untrained) for its synthetic batches (those of the method
    ``like``, if given)."""
    device = model.device
    method = method_class(config, model, bench.spec)
    method.old_model = like.old_model if like else frozen_copy(model)
    method.inversion.generator = like.inversion.generator if like else build_generator(config, bench.spec, device).eval()
    task1 = Task(1, bench.tasks[1], 2)
    if len(model.head.sizes) < 2:
        model.head.add_task(task1.n_new)
    method.begin_task(task1)
    return method, task1


def phase_step(phase, batch, precision: str, graphs: bool, momentum: float = 0.9):
    """One step of ``phase`` as a call without arguments, on the batch ``batch()`` returns: the
    engine's own step function (:func:`engine.training_step`, so under ``graphs`` the compiled
    one) with SGD, the phase's extra modules in training mode."""
    device = phase.parameters[0].device
    optimizer = torch.optim.SGD(phase.parameters, lr=1e-3, momentum=momentum, **fused_optimizer(device, graphs))
    step = training_step(phase, optimizer, device, precision, graphs)
    for module in phase.modules:
        module.train()

    def one_step():
        return step(*batch())
    one_step.ready = getattr(batch, "ready", lambda n: None)  # see BatchStream
    return one_step


def time_rrl(model, method, rrl, refine, x, y, timer, precision, graphs, steps, compile_s: dict | None = None) -> dict:
    """The RRL step and its parts: sampling, old-model forwards, current fwd+bwd, RKD angles;
    the seconds each step's compile took go to ``compile_s["rrl"]``, ``compile_s["refine"]``."""
    compile_s = {} if compile_s is None else compile_s
    autocast = autocast_for(x.device, precision)
    optimizer = torch.optim.SGD(rrl.parameters, lr=1e-3, momentum=0.9)
    model.train()
    compiling = compile_seconds()
    rrl_s = timer(phase_step(rrl, lambda: (x, y), precision, graphs), steps)
    compile_s["rrl"], compiling = compile_seconds() - compiling, compile_seconds()
    model.eval()
    refine_s = timer(phase_step(refine, lambda: (x, y), precision, graphs), steps)
    compile_s["refine"] = compile_seconds() - compiling
    model.train()
    replay = method.inversion.replay
    xs, ys, _ = replay.batch()

    def old_forwards():
        with torch.no_grad(), autocast:
            method.old_model.features(x)
            if replay.pool is None:
                method.old_model(xs)

    def current():
        with autocast:
            logits, _, logits_s = method.forward_real_and_synthetic(x, xs)  # as the RRL step does
            loss = F.cross_entropy(logits.float(), y) + F.cross_entropy(logits_s.float(), ys)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    f = torch.randn(len(x), model.feature_dim, device=x.device)
    f_old = torch.randn_like(f)

    def angles():
        p, p_old = method.projections(f.requires_grad_(), f_old)
        L.rkd_angle(p, p_old).backward()
    parts = {"rrl_part_sampling_s": timer(replay.batch, steps),
             "rrl_part_old_forward_s": timer(old_forwards, steps),
             "rrl_part_current_fwd_bwd_s": timer(current, steps),
             "rrl_part_rkd_angles_s": timer(angles, steps)}
    return {"rrl_s": rrl_s, "refine_s": refine_s, **parts}


@contextmanager
def inversion_step(old, config, spec, device, precision):
    """One inversion step as a call without arguments: the run's own step function
    (:func:`inversion.generator_step`, under ``graphs`` the compiled one) with a fresh generator
    and Adam against ``old``, whose BatchNorm hooks are on inside the ``with`` block only."""
    g = build_generator(config, spec, device).train()
    opt = torch.optim.Adam(g.parameters(), lr=1e-3, **fused_optimizer(device, config.graphs))
    batch = config.inversion_batch_size or config.batch_size
    with BatchNormStatistics(old) as stats:
        yield generator_step(g, old, stats, opt, batch, loss_weights(config), precision, config.graphs)


def time_inversion(method, config, spec, device, timer, precision, steps) -> dict:
    """One inversion step (G forward, M_old forward with BN hooks, 4 losses, backward, Adam)
    against its parts: G forward+backward+Adam alone, and M_old's part alone."""
    autocast = autocast_for(device, precision)
    g = build_generator(config, spec, device).train()
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    batch = config.inversion_batch_size or config.batch_size
    weights = loss_weights(config)
    old = method.old_model
    with inversion_step(old, config, spec, device, precision) as step:
        full_s = timer(step, steps)
    with BatchNormStatistics(old) as stats:

        def generator_only():
            with autocast:
                images = g(g.sample_z(batch, device))
            opt.zero_grad(set_to_none=True)
            images.float().square().mean().backward()
            opt.step()
        fixed = torch.randn(batch, spec.channels, spec.image_size, spec.image_size, device=device)

        def old_only():
            images = fixed.clone().requires_grad_()
            with autocast:
                terms = inversion_losses(images, old(images), stats, weights)
            sum(terms.values()).backward()
        return {"inversion_s": full_s, "inversion_part_generator_s": timer(generator_only, steps),
                "inversion_part_old_model_s": timer(old_only, steps), "inversion_batch": batch}


# The phases the speed benchmark times: those of the paper's methods (R-DFCIL's table). The
# head-only phases of the later families (``head``, ``balance``, ``projector`` in
# :data:`precision.PHASES`) train a linear layer on stored features, a small share of a run.
TIMED_PHASES = ("base", "train", "rrl", "refine", "inversion")


def each_phase(config, bench, device, precision: str, measure, fresh_batches: bool = False,
               channels_last: bool = True) -> dict:
    """``{phase: measure(phase, step)}`` for every phase of :data:`TIMED_PHASES` at
    ``precision``, ``step()`` running one step through the run's own step function: ``base``
    (task 0), ``train`` (ABD's incremental step, the other method of the paper's table),
    R-DFCIL's ``rrl`` and ``refine`` (task 1), and an ``inversion`` step against the frozen
    model. The real batch is one fixed batch, or with ``fresh_batches`` the next augmented batch
    of the run's pipeline at every step (its drawing then part of the step). ``channels_last``:
    the run's weight layout on CUDA (False: contiguous weights, for comparison)."""
    spec, b, graphs, momentum = bench.spec, config.batch_size, config.graphs, config.momentum
    torch.manual_seed(0)
    model = run_model(config, spec, device, channels_last)  # channels-last on CUDA, as a run's
    model.head.add_task(len(bench.tasks[0]))
    generator = torch.Generator().manual_seed(0)

    def batches(task):
        if not fresh_batches:
            fixed = next(bench.train.batches(task.classes, b, shuffle=True, augment=True, generator=generator))
            return lambda: fixed
        return BatchStream(bench, task.classes, b, generator)
    task0 = Task(0, bench.tasks[0], 2)
    model.train()
    out = {"base": measure("base", phase_step(Finetune(config, model, spec).phases(task0)[0], batches(task0),
                                              precision, graphs, momentum))}
    abd, task1 = incremental_setup(ABD, config, model, bench)
    real = batches(task1)
    out["train"] = measure("train", phase_step(abd.phases(task1)[0], real, precision, graphs, momentum))
    rdfcil, _ = incremental_setup(RDFCIL, config, model, bench, like=abd)
    rrl, refine = rdfcil.phases(task1)
    out["rrl"] = measure("rrl", phase_step(rrl, real, precision, graphs, momentum))
    model.eval()
    out["refine"] = measure("refine", phase_step(refine, real, precision, graphs, momentum))
    with inversion_step(rdfcil.old_model, config, spec, device, precision) as step:
        out["inversion"] = measure("inversion", step)
    return out


class BatchStream:
    """The run's pipeline as an endless stream of augmented training batches of ``classes``
    (``drop_last``), epoch after epoch. ``ready(n)``: the next ``n`` calls stay in one epoch; if
    fewer batches are left, the next epoch is started now (its permutation, and the class index
    that makes the host wait once an epoch, as a run's loop does between steps)."""

    def __init__(self, bench, classes: range, batch_size: int, generator: torch.Generator):
        self.bench, self.classes, self.batch_size, self.generator = bench, classes, batch_size, generator
        self.per_epoch = bench.train.num_batches(classes, batch_size, drop_last=True)
        self.left, self.epoch, self.pending = 0, iter(()), None

    def _new_epoch(self) -> None:
        self.epoch = self.bench.train.batches(self.classes, self.batch_size, shuffle=True, augment=True,
                                              generator=self.generator, drop_last=True)
        self.left = self.per_epoch
        self.pending = next(self.epoch)  # the epoch's set-up runs here

    def ready(self, n: int) -> None:
        if self.left < n:
            self._new_epoch()

    def __call__(self):
        if self.left == 0:
            self._new_epoch()
        self.left -= 1
        if self.pending is not None:
            batch, self.pending = self.pending, None
            return batch
        return next(self.epoch)


def time_phases(config, bench, device, precision: str, steps: int) -> dict[str, float]:
    """Seconds per step of every phase at ``precision`` on a fixed batch (:func:`each_phase`)."""
    timer = Timer(device)
    return each_phase(config, bench, device, precision, lambda name, step: timer(step, steps))


def pick_precision(config, steps: int = 10) -> dict:
    """Every phase timed in fp32 and in bf16 (:func:`time_phases`); ``pick``: the faster of each
    (:func:`precision.pick_fastest`), the value of ``phase_precision`` for this device."""
    device = pick_device(config.device)
    bench = load_benchmark(config, device)
    seconds = {precision: time_phases(config, bench, device, precision, steps) for precision in PRECISIONS}
    return {"seconds": seconds, "pick": pick_fastest(seconds), "graphs": config.graphs}


def precision_table(p: dict) -> str:
    """The per-phase timings of :func:`pick_precision` and the ``--phase-precision`` they give."""
    s = p["seconds"]
    rows = "\n".join(f"| {phase} | {1000 * s['fp32'][phase]:.1f} | {1000 * s['bf16'][phase]:.1f} | "
                     f"{s['fp32'][phase] / s['bf16'][phase]:.2f} | {pick} |" for phase, pick in p["pick"].items())
    flag = ",".join(f"{phase}={pick}" for phase, pick in p["pick"].items())
    return (f"precision per phase (graphs: {str(p['graphs']).lower()}; ms per step)\n\n"
            "| phase | fp32 | bf16 | fp32 / bf16 | faster |\n|---|---:|---:|---:|---|\n"
            f"{rows}\n\nrun with the faster of each: --phase-precision {flag}\n")


def table(m: dict) -> str:
    """The benchmark as a Markdown table with throughputs and ratios."""
    b = m["batch_size"]
    ceiling = b / m["ceiling_s"]
    lab = m["epoch_images"] / m["lab_epoch_s"]
    conventional = m["epoch_images"] / m["conventional_epoch_s"]
    rrl_parts = sum(v for k, v in m.items() if k.startswith("rrl_part_"))
    inv_parts = m["inversion_part_generator_s"] + m["inversion_part_old_model_s"]
    rows = [
        ("bare model fwd+bwd (ceiling)", f"{ceiling:,.0f} img/s", f"{1000 * m['ceiling_s']:.1f} ms/step", "1.00 x ceiling"),
        ("Finetune epoch, lab pipeline", f"{lab:,.0f} img/s", f"{m['lab_epoch_s']:.2f} s/epoch", f"{lab / ceiling:.2f} x ceiling"),
        (f"Finetune epoch, DataLoader+PIL ({m['conventional_workers']} workers)", f"{conventional:,.0f} img/s",
         f"{m['conventional_epoch_s']:.2f} s/epoch", f"lab is {lab / conventional:.2f} x faster"),
        ("R-DFCIL RRL step", f"{b / m['rrl_s']:,.0f} real img/s", f"{1000 * m['rrl_s']:.1f} ms/step",
         f"{m['rrl_s'] / rrl_parts:.2f} x sum of parts; {(b / m['rrl_s']) / lab:.2f} x Finetune"),
        ("  part: synthetic batch", "", f"{1000 * m['rrl_part_sampling_s']:.1f} ms", ""),
        ("  part: old model forwards", "", f"{1000 * m['rrl_part_old_forward_s']:.1f} ms", ""),
        (f"  part: current fwd+bwd (real + synthetic, {m.get('rrl_forward', 'joint')} forward)", "",
         f"{1000 * m['rrl_part_current_fwd_bwd_s']:.1f} ms", ""),
        ("  part: RKD angle tensors", "", f"{1000 * m['rrl_part_rkd_angles_s']:.1f} ms", ""),
        ("R-DFCIL refinement step", f"{b / m['refine_s']:,.0f} real img/s", f"{1000 * m['refine_s']:.1f} ms/step", ""),
        ("ABD training step", f"{b / m['abd_train_s']:,.0f} real img/s", f"{1000 * m['abd_train_s']:.1f} ms/step",
         f"{m['abd_train_s'] / m['rrl_s']:.2f} x RRL step"),
        (f"inversion step (batch {m['inversion_batch']})", f"{1 / m['inversion_s']:.1f} steps/s",
         f"{1000 * m['inversion_s']:.1f} ms/step", f"{m['inversion_s'] / inv_parts:.2f} x sum of parts"),
        ("  part: generator fwd+bwd+Adam", "", f"{1000 * m['inversion_part_generator_s']:.1f} ms", ""),
        ("  part: old model fwd+bwd with BN hooks", "", f"{1000 * m['inversion_part_old_model_s']:.1f} ms", ""),
        ("evaluation", f"{m['eval_images'] / m['eval_s']:,.0f} img/s", f"{m['eval_s']:.2f} s", ""),
        ("peak memory", f"{m['peak_memory_mb']:,.0f} MB", "", ""),
    ]
    head = (f"{m['dataset']}, {m['backbone']}, batch {b}, {m['precision']}, {m['device']}, torch {m['torch']}\n\n"
            "| measure | throughput | time | ratio |\n|---|---|---|---|\n")
    return head + "\n".join(f"| {a} | {t} | {s} | {r} |" for a, t, s, r in rows) + "\n"


def bench_speed(dataset: str, overrides: dict, out: str | None, steps: int = 10, workers: int = 2,
                jobs: int | None = None, precision_per_phase: bool = False) -> dict:
    preset = dataset_spec(dataset).default_preset
    overrides = {"preset": preset, **overrides, "dataset": dataset, "method": "rdfcil", "progress": False}
    overrides.setdefault("num_tasks", 5 if preset == "quick" else 10)
    config = resolve(overrides)
    result = measure(config, steps, workers)
    text = table(result)
    from . import projection  # the paper's protocol and whole table at ``jobs`` (default as in sweep)
    jobs = jobs or (4 * max(1, torch.cuda.device_count()) if result["device"].startswith("cuda") else 1)
    result["projection"] = projection.project(result, dataset, jobs)
    text += "\n" + projection.text(result["projection"], result["device"])
    if precision_per_phase:
        result["precision_per_phase"] = pick_precision(config, steps)
        text += "\n" + precision_table(result["precision_per_phase"])
    print(text)
    folder = Path(out or f"runs/bench-speed/{dataset}-{config.precision}")
    write_json(folder / "speed.json", result)
    (folder / "speed.md").parent.mkdir(parents=True, exist_ok=True)
    from .io import atomic_write_text
    atomic_write_text(folder / "speed.md", text)
    print(f"written: {folder / 'speed.json'}, {folder / 'speed.md'}")
    return result
