"""Throughput benchmark: the lab's pipeline against the bare model and a conventional pipeline.

Measured in one process on one machine (CUDA events on a GPU, ``perf_counter`` on a CPU):
the backbone's bare forward+backward on random tensors (the ceiling), a Finetune epoch with the
lab's on-device pipeline, the same epoch through a torchvision DataLoader with PIL transforms,
the R-DFCIL RRL step against the sum of its parts timed alone, the refinement step, the
inversion step against its parts, evaluation, and peak memory.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from . import losses as L
from .config import resolve
from .data import dataset_spec, load_benchmark
from .distributed import pick_device
from .engine import evaluate, train_phase
from .inversion import BatchNormStatistics, build_generator, frozen_copy, inversion_losses
from .io import write_json
from .methods import RDFCIL, Finetune, Task
from .nets import model_for
from .precision import autocast_for


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
    """The published pipeline's shape: a Dataset of PIL images, torchvision transforms, workers."""
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
                                       num_workers=workers, persistent_workers=workers > 0)


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
    model = model_for(config, spec, device)
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
    train_phase(model, phase, bench, config, generator, 0, None, None)  # warm-up
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
    method = RDFCIL(config, model, spec)
    method.old_model = frozen_copy(model)
    method.inversion.generator = build_generator(config, spec, device).eval()
    task1 = Task(1, bench.tasks[1], 2)
    model.head.add_task(task1.n_new)
    method.begin_task(task1)
    rrl, refine = method.phases(task1)
    xr, yr = next(bench.train.batches(task1.classes, b, shuffle=True, augment=True, generator=generator))
    out.update(time_rrl(model, method, rrl, refine, xr, yr, task1, timer, autocast, steps))
    out.update(time_inversion(method, config, spec, device, timer, autocast, steps))

    # 5. evaluation on the test images of the seen classes
    seen = range(0, bench.tasks[1].stop)
    n_test = len(bench.test.indices(seen))
    out["eval_s"], out["eval_images"] = timer(lambda: evaluate(model, bench, seen, config.eval_batch_size), 3, 1), n_test
    out["peak_memory_mb"] = peak_memory_mb(device)
    return out


def time_rrl(model, method, rrl, refine, x, y, task, timer, autocast, steps) -> dict:
    """The RRL step and its parts: sampling, old-model forwards, current fwd+bwd, RKD angles."""
    optimizer = torch.optim.SGD(rrl.parameters, lr=1e-3, momentum=0.9)
    head_optimizer = torch.optim.SGD(refine.parameters, lr=1e-3)

    def step(phase, opt):
        with autocast:
            total = sum(phase.loss(x, y).values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    model.train()
    method.projections.train()
    rrl_s = timer(lambda: step(rrl, optimizer), steps)
    model.eval()
    refine_s = timer(lambda: step(refine, head_optimizer), steps)
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


def time_inversion(method, config, spec, device, timer, autocast, steps) -> dict:
    """One inversion step (G forward, M_old forward with BN hooks, 4 losses, backward, Adam)
    against its parts: G forward+backward+Adam alone, and M_old's part alone."""
    g = build_generator(config, spec, device).train()
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    batch = config.inversion_batch_size or config.batch_size
    weights = dict(content_temperature=config.content_temperature, alpha_cb=config.alpha_cb,
                   alpha_pr=config.alpha_pr, alpha_rf=config.alpha_rf)
    old = method.old_model
    with BatchNormStatistics(old) as stats:
        def full():
            with autocast:
                images = g(g.sample_z(batch, device))
                terms = inversion_losses(images, old(images), stats, weights)
            opt.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            opt.step()

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
        return {"inversion_s": timer(full, steps), "inversion_part_generator_s": timer(generator_only, steps),
                "inversion_part_old_model_s": timer(old_only, steps), "inversion_batch": batch}


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
                jobs: int | None = None) -> dict:
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
    print(text)
    folder = Path(out or f"runs/bench-speed/{dataset}-{config.precision}")
    write_json(folder / "speed.json", result)
    (folder / "speed.md").parent.mkdir(parents=True, exist_ok=True)
    from .io import atomic_write_text
    atomic_write_text(folder / "speed.md", text)
    print(f"written: {folder / 'speed.json'}, {folder / 'speed.md'}")
    return result
