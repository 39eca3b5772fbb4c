"""LwF + ADC: adversarial drift compensation (Goswami et al., CVPR 2024, "Resurrecting old
classes with new data for exemplar-free continual learning"), as the authors' code runs it
(dipamgoswami/ADC ``models/lwf.py``, ``utils/attack.py``, ``exps/lwf.json``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import Task, register
from .lwfproto import LwFPrototypes


def attack_step(old_model: nn.Module, x: torch.Tensor, prototype: torch.Tensor, alpha: float,
                x_min: float | torch.Tensor, x_max: float | torch.Tensor) -> torch.Tensor:
    """One step of ADC's targeted attack on a batch of normalised images ``x`` (K, C, H, W)
    toward ``prototype`` (d,) in the old model's feature space (``Attack.perturb``):
    ``x' = clamp(x - alpha g / ||g||, x_min, x_max)``, ``g = grad_x MSE(f_old(x), mu_c)`` where the
    MSE averages over the K x d entries and ``||g||`` is the norm of the whole batch's gradient
    (``torch.norm(grad)``, not per image). Returns ``x'`` detached; gradients are enabled here."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        features = old_model.features(x).float()
        loss = F.mse_loss(features, prototype.float().expand_as(features))
        (grad,) = torch.autograd.grad(loss, x)
    return (x - alpha * grad / grad.norm()).clamp(x_min, x_max).detach()


def nearest_prototype(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """The old NCM of the attack's filter: ``argmin_c ||f - mu_c||`` on raw (unnormalised)
    features (B, d) and prototypes (C, d) (``torch.cdist`` in ``Attack.run``); (B,) class indices."""
    return torch.cdist(features.float(), prototypes.float()).argmin(1)


def adc_prototypes(old_model: nn.Module, new_model: nn.Module, images: torch.Tensor, old_features: torch.Tensor,
                   prototypes: torch.Tensor, alpha: float, steps: int, samples: int,
                   x_min: float | torch.Tensor, x_max: float | torch.Tensor) -> torch.Tensor:
    """ADC's compensated old prototypes (n_old, d) from the current task's ``images`` (N, C, H, W)
    and their old features ``old_features`` (N, d). For each old class ``c`` in order:

    1. the ``samples`` images whose old features are nearest ``mu_c`` (Euclidean);
    2. ``steps`` :func:`attack_step` toward ``mu_c`` (step ``alpha``, clamped to ``[x_min, x_max]``);
    3. keep those that :func:`nearest_prototype` assigns to ``c`` among the current prototypes
       (the classes before ``c`` already moved, as the authors update them in place); if none
       is kept, the unattacked nearest images stand in (the authors' code keeps its previous
       dataset then);
    4. ``mu_c <- mu_c + mean(f_new(x') - f_old(x'))``."""
    prototypes = prototypes.detach().clone().float()
    for c in range(len(prototypes)):
        distances = torch.cdist(old_features.float(), prototypes[c][None]).squeeze(1)
        nearest = images[torch.argsort(distances, stable=True)[:samples]]
        x = nearest
        for _ in range(steps):
            x = attack_step(old_model, x, prototypes[c], alpha, x_min, x_max)
        kept = x[nearest_prototype(old_model.features(x), prototypes) == c]
        if len(kept) == 0:
            kept = nearest
        prototypes[c] = prototypes[c] + (new_model.features(kept).float() - old_model.features(kept).float()).mean(0)
    return prototypes


@register
class ADC(LwFPrototypes):
    """The authors' LwF and prototypes (:class:`~rdfcil.methods.lwfproto.LwFPrototypes`); at the
    end of each incremental task the statistics pass moves the old prototypes by ADC
    (:func:`adc_prototypes`: ``adc_samples`` current images nearest each old prototype in the
    old feature space, ``adc_steps`` steps of size ``adc_alpha`` toward it, clamped to the
    range of the task's normalised training images, kept where the old NCM agrees, and the
    mean of ``f_new - f_old`` over them added to the prototype). Every process computes the
    same on every image (the task's images are kept on the device during the pass)."""

    name, label, color, rank = "adc", "LwF + ADC", "#117733", 73
    citation = "Goswami et al., CVPR 2024"
    faithful = ("the authors' code: LwF on a cosine head (lamda 10, T 2), NCM on prototypes, 3 attack steps "
                "(alpha 25, batch-normalised gradient) on the 100 nearest current images per old class; the "
                "attack's images augmented as the authors' train loader gives them (`drift_augment`); AutoAugment "
                "not reproduced")
    keys = LwFPrototypes.keys | {"adc_alpha", "adc_steps", "adc_samples"}

    def compensate(self, task: Task, prototypes: torch.Tensor, batches, reduce) -> torch.Tensor:
        c = self.config
        images, features = [], []
        for x, _ in batches(shard=False, augment=c.drift_augment):
            images.append(x)
            features.append(self.old_model.features(x).float())
        images = torch.cat(images)
        return adc_prototypes(self.old_model, self.model, images, torch.cat(features), prototypes, c.adc_alpha,
                              c.adc_steps, c.adc_samples, images.min(), images.max())
