"""Training-free proxies that rank students before any training: `PROXIES[name](teacher,
student, batch_inputs, labels) -> float`.

Sign convention: higher is better for every proxy. `diswot` is minus a distance to the teacher
(0 for a student equal to the teacher); `params` and `flops` are the counts themselves, the
"bigger is better" baselines; `synflow` is the log of the SynFlow saliency; `grad_norm` the sum of
gradient norms of one cross-entropy step; `naswot` the log-determinant of the NASWOT activation
kernel. All are deterministic given the models and the batch (models run in eval mode).
"""

from __future__ import annotations

import copy
import hashlib
import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from kdc.data.batching import trim_padding
from kdc.models.base import ModelAdapter

Proxy = Callable[[ModelAdapter, ModelAdapter, dict[str, np.ndarray], np.ndarray], float]
_TEACHER_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
CHUNK_ROWS = 16  # rows per forward when scoring text: small enough to cut most padding
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Hardswish)


def _tensors(inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}


def classifiers(adapter: ModelAdapter) -> list[nn.Linear]:
    """The classifier Linear layer(s) (`ModelAdapter.classifiers`): their inputs, side by side,
    are the pooled feature; their outputs, averaged, the logits."""
    heads = adapter.classifiers()
    if not heads:
        raise ValueError(f"{type(adapter.module).__name__} has no Linear classifier")
    return heads


def _length_chunks(inputs: dict[str, np.ndarray], size: int) -> list[np.ndarray]:
    """Row indices in chunks of `size` rows of similar length (by attention mask), so each chunk
    is cut to its longest row; one chunk of every row when there is no text mask."""
    mask = inputs.get("attention_mask")
    n = len(next(iter(inputs.values())))
    if mask is None or mask.ndim != 2:
        return [np.arange(n)]
    order = np.argsort(mask.sum(1), kind="stable")
    return [order[s : s + size] for s in range(0, n, size)]


@contextmanager
def _frozen(module: nn.Module) -> Iterator[nn.Module]:
    """`module`, put in eval mode (and left there), with its parameters out of autograd until the
    block ends, so a forward records no graph before the first tensor that asks for gradients."""
    wanted = [p for p in module.parameters() if p.requires_grad]
    for p in wanted:
        p.requires_grad_(False)
    try:
        yield module.eval()
    finally:
        for p in wanted:
            p.requires_grad_(True)


def features_and_logits(
    adapter: ModelAdapter, inputs: dict[str, np.ndarray], chunk: int = CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features B×C entering the classifier, logits B×K), float64, no grad."""
    feats, logits, _ = features_logits_cams(adapter, inputs, None, chunk)
    return feats, logits


def _cam_site(adapter: ModelAdapter) -> tuple[nn.Module, bool]:
    """(module, read its input?) where Grad-CAM reads activations: the input of the last
    transformer layer (its attention mixes the tokens into the position the head reads), the
    output of the last convolution of a CNN."""
    if adapter.family == "transformer":
        return list(adapter.feature_modules().values())[-1], True
    return [m for m in adapter.module.modules() if isinstance(m, nn.Conv2d)][-1], False


def _grad_cam(
    logits: torch.Tensor, acts: torch.Tensor, labels: np.ndarray, mask: torch.Tensor | None
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.) of each row's label: the activations weighted by the
    position-averaged gradient of the label's logit, summed over channels, ReLU; B×L over tokens
    for B×L×C activations (zero on padding where a `mask` is given; a vision transformer has
    none), else B×H×W over pixels."""
    y = torch.from_numpy(np.asarray(labels)).long()
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), acts)
    a = acts.detach()
    if a.dim() == 3:
        cam = F.relu((grad.mean(1, keepdim=True) * a).sum(-1))
        return cam if mask is None else cam * mask
    return F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1))


def features_logits_cams(
    adapter: ModelAdapter,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    chunk: int = CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(pooled features B×C entering the classifiers, logits B×K, each row's `_grad_cam` map for
    its label, None without `labels`), float64. Text rows run in length-sorted chunks without
    their padding (masked positions change no output; maps are padded back to full width).
    Gradients flow only from the CAM site on (its activations are detached leaves), and not at
    all without `labels`."""
    seen: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        head.register_forward_hook(lambda m, args, out: seen.__setitem__(m, args[0].detach()))
        for head in classifiers(adapter)
    ]
    leaf: list[torch.Tensor] = []

    def as_leaf(t: torch.Tensor) -> torch.Tensor:
        leaf.append(t.detach().requires_grad_(True))
        return leaf[-1].clone()  # the model gets a non-leaf: in-place ops after the site work

    if labels is not None:
        site, read_input = _cam_site(adapter)
        hooks.append(
            site.register_forward_pre_hook(
                lambda m, args, kwargs: ((as_leaf(args[0]), *args[1:]), kwargs), with_kwargs=True
            )
            if read_input
            else site.register_forward_hook(lambda m, args, out: as_leaf(out))
        )
    chunks = _length_chunks(inputs, chunk)
    width = inputs["attention_mask"].shape[1] if "attention_mask" in inputs else None
    feats, logits, maps = [], [], []
    try:
        with _frozen(adapter.module) as module:
            for ix in chunks:
                batch = trim_padding(_tensors({k: v[ix] for k, v in inputs.items()}))
                with torch.inference_mode(labels is None):
                    out = module(**batch)
                feats.append(torch.cat([f.flatten(1) for f in seen.values()], 1))
                logits.append(out.detach())
                if labels is not None:
                    cam = _grad_cam(
                        out, leaf[-1], np.asarray(labels)[ix], batch.get("attention_mask")
                    )
                    maps.append(cam if width is None else F.pad(cam, (0, width - cam.shape[1])))
    finally:
        for h in hooks:
            h.remove()
    back = torch.from_numpy(np.argsort(np.concatenate(chunks)))
    feats_t, logits_t = (torch.cat(t)[back].double() for t in (feats, logits))
    return feats_t, logits_t, torch.cat(maps)[back].double() if maps else None


def _teacher_outputs(
    teacher: ModelAdapter, inputs: dict[str, np.ndarray], labels: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher features, logits and Grad-CAM maps on a batch, computed once per (teacher,
    batch)."""
    h = hashlib.sha1()
    for k in sorted(inputs):
        h.update(k.encode() + str(inputs[k].shape).encode() + inputs[k].tobytes())
    h.update(np.asarray(labels).tobytes())
    cache = _TEACHER_CACHE.setdefault(teacher.module, {})
    if h.hexdigest() not in cache:
        cache.clear()
        cache[h.hexdigest()] = features_logits_cams(teacher, inputs, labels)
    return cache[h.hexdigest()]


def _row_normalised_gram(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x @ x.T, dim=1)


def relation_distance(ft: torch.Tensor, fs: torch.Tensor) -> float:
    """‖G_T − G_S‖²_F / B² of the row-normalised B×B Grams of pooled features."""
    return float(((_row_normalised_gram(ft) - _row_normalised_gram(fs)) ** 2).sum()) / len(ft) ** 2


def cam_distance(mt: torch.Tensor, ms: torch.Tensor) -> float:
    """Mean over rows of 1 − cosine between the teacher's and the student's Grad-CAM maps (a
    student's pixel maps resized to the teacher's when the resolutions differ). Two all-zero maps
    (no position supports the label) agree; one all-zero map is as far as it gets."""
    if ms.dim() == 3 and ms.shape[1:] != mt.shape[1:]:
        ms = F.interpolate(ms[:, None], size=mt.shape[1:], mode="bilinear")[:, 0]
    a, b = mt.flatten(1), ms.flatten(1)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(1) / (na * nb).clamp_min(torch.finfo(a.dtype).tiny)
    cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)
    return float((1 - cos).mean())


def classifier_gradient(
    feats: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """∂CE/∂W (K×C) of the classifier for mean cross-entropy: (softmax − onehot)ᵀ F / B. Exact
    because the logits are that Linear's output; k averaged classifiers (F their inputs side by
    side) are one Linear [W₁ … W_k] / k, whose gradient this is k times."""
    p = torch.softmax(logits, dim=1)
    p[torch.arange(len(labels)), labels] -= 1.0
    return p.T @ feats / len(labels)


def diswot(
    teacher: ModelAdapter, student: ModelAdapter, inputs: dict[str, np.ndarray], labels: np.ndarray
) -> float:
    """DisWOT (Dong et al., CVPR 2023) at initialisation: −(relation + semantic distance) to the
    teacher. Relation: `relation_distance` of the pooled features. Semantic: `cam_distance` of
    the Grad-CAM maps for each row's label, DisWOT's localisation term compared row by row
    (width-agnostic: maps are over tokens or pixels, not channels)."""
    ft, _, mt = _teacher_outputs(teacher, inputs, labels)
    fs, _, ms = features_logits_cams(student, inputs, labels)
    return -(relation_distance(ft, fs) + cam_distance(mt, ms))


def diswot_classgrad(
    teacher: ModelAdapter, student: ModelAdapter, inputs: dict[str, np.ndarray], labels: np.ndarray
) -> float:
    """DisWOT with the semantic term on classifier-weight gradients: `relation_distance` plus the
    same distance on the K×K class Grams of the gradient g gᵀ of one cross-entropy step (divided
    by K²). Unstable when K is small: sentiment (K = 3) tau −0.66 on 64 rows, +0.42 on 32
    (bench/RESULTS.md)."""
    ft, lt, _ = _teacher_outputs(teacher, inputs, labels)
    fs, ls = features_and_logits(student, inputs)
    y = torch.from_numpy(np.asarray(labels)).long()
    gt, gs = classifier_gradient(ft, lt, y), classifier_gradient(fs, ls, y)
    k = gt.shape[0]
    semantic = float(((_row_normalised_gram(gt) - _row_normalised_gram(gs)) ** 2).sum()) / k**2
    return -(relation_distance(ft, fs) + semantic)


def params(
    teacher: ModelAdapter, student: ModelAdapter, inputs: dict[str, np.ndarray], labels: np.ndarray
) -> float:
    """Parameter count (bigger = better baseline)."""
    return float(student.params())


def flops(
    teacher: ModelAdapter, student: ModelAdapter, inputs: dict[str, np.ndarray], labels: np.ndarray
) -> float:
    """2 × multiply-accumulates of the conv and linear layers on one example (attention score
    products, a few per cent of a BERT's, are left out): the bigger = better baseline."""
    total = 0.0

    def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += 2.0 * out.numel() * mod.weight[0].numel()  # outputs × fan-in

    handles = [
        m.register_forward_hook(hook)
        for m in student.module.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.inference_mode():
            student.module.eval()(**_tensors({k: v[:1] for k, v in inputs.items()}))
    finally:
        for h in handles:
            h.remove()
    return total


def synflow(
    teacher: ModelAdapter, student: ModelAdapter, inputs: dict[str, np.ndarray], labels: np.ndarray
) -> float:
    """log Σ|θ ⊙ ∂R/∂θ| with R the summed output of the all-|θ| network (float64) on an all-ones
    input (integer inputs: the batch's first row)."""
    model = copy.deepcopy(student.module).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    x = {
        k: (torch.ones_like(v[:1], dtype=torch.float64) if v.is_floating_point() else v[:1])
        for k, v in _tensors(inputs).items()
    }
    model(**x).sum().backward()
    with torch.no_grad():
        total = sum(
            float((p * p.grad).abs().sum()) for p in model.parameters() if p.grad is not None
        )
    return math.log(total) if total > 0 else float("-inf")


def grad_norm(
    teacher: ModelAdapter, student: ModelAdapter, inputs: dict[str, np.ndarray], labels: np.ndarray
) -> float:
    """Σ over parameters of ‖∂CE/∂θ‖₂ on the batch."""
    model = student.module.eval()
    ps = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(**trim_padding(_tensors(inputs))), torch.from_numpy(labels).long())
    grads = torch.autograd.grad(loss, ps, allow_unused=True)
    return float(sum(g.norm() for g in grads if g is not None))


def naswot(
    teacher: ModelAdapter, student: ModelAdapter, inputs: dict[str, np.ndarray], labels: np.ndarray
) -> float:
    """NASWOT (Mellor et al., 2021): log|det K|, K[i, j] = number of activation units on which
    examples i and j agree (both active or both inactive); a text row's units are those of the
    positions it attends to, so padding counts for nothing. A singular K (duplicate examples)
    gets a ridge of 1e-3 × its mean diagonal."""
    n = len(next(iter(inputs.values())))
    kernel = torch.zeros(n, n, dtype=torch.float64)
    batch = trim_padding(_tensors(inputs))
    mask = batch.get("attention_mask")

    def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
        on = (out.detach() > 0).double()
        real = torch.ones_like(on)
        if mask is not None and mask.dim() == 2 and on.dim() == 3 and on.shape[:2] == mask.shape:
            real = real * mask[:, :, None].to(real.dtype)
        on, off = (on * real).flatten(1), ((1 - on) * real).flatten(1)
        kernel.add_(on @ on.T + off @ off.T)

    acts = [
        m
        for m in student.module.modules()
        if isinstance(m, ACTIVATIONS) or type(m).__name__.endswith("Activation")
    ]
    handles = [m.register_forward_hook(hook) for m in acts]
    try:
        with torch.inference_mode():
            student.module.eval()(**batch)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    if sign <= 0:
        ridge = 1e-3 * float(kernel.diagonal().mean()) + 1e-12
        sign, logdet = torch.linalg.slogdet(kernel + ridge * torch.eye(n, dtype=torch.float64))
    return float(logdet)


PROXIES: dict[str, Proxy] = {
    "diswot": diswot,
    "diswot_classgrad": diswot_classgrad,
    "params": params,
    "flops": flops,
    "synflow": synflow,
    "grad_norm": grad_norm,
    "naswot": naswot,
}


# `search.proxy: auto`: DisWOT, which beats both size baselines on held-out students of both
# examples (bench/results/proxy.json, 32 rows: Kendall tau against accuracy after distillation,
# digits +0.61 and text +0.84, against params +0.30 / +0.77 and flops +0.33 / +0.52).
AUTO_PROXY = "diswot"


def resolve_proxy(name: str) -> str:
    """The proxy `search.proxy` names; `auto` is AUTO_PROXY."""
    return AUTO_PROXY if name == "auto" else name
