"""Device placement of distillation (training on the accelerator's device, a CUDA GPU where
PyTorch sees one).

There is no GPU on the machines these tests run on, so nothing here runs CUDA. The accelerator is
faked to report PyTorch's meta device (tensors with shapes and no data) as its device: a tensor
or module that reaches it there was moved by kdc, one left on the CPU was not. What the tests
prove: every batch, label, teacher target, teacher and student input and parameter, and every
loss input of training is on the accelerator's device; evaluation, BatchNorm re-estimation,
pruning and the teacher cache feed a module on its own device; the models go back where they
came from. What they do not prove: that CUDA kernels, speed or numerics on a GPU are right, nor
anything past the first loss (a meta tensor has no value to read)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import kdc.compress.distill as distill_mod
from kdc.compress.distill import DistillData, _Trainer, distill
from kdc.compress.precise_bn import calibration_batches
from kdc.compress.prune import make_pruner
from kdc.compress.teacher_cache import TeacherCache
from kdc.config import DistillConfig, PruneConfig
from kdc.models.cnn import small_cnn
from kdc.models.device import CPU, module_device, on_device
from kdc.models.shapes import apply_shapes
from kdc.models.vision import VisionAdapter

META = torch.device("meta")


class MetaAccelerator:
    """Accelerate's handle as `_Trainer` uses it, on a one-process "GPU" run whose device is the
    meta device; `prepare` wraps nothing (a real one would move the model to its device)."""

    device = META
    num_processes, process_index, is_main_process = 1, 0, True

    def prepare(self, *objects: object) -> tuple:
        return objects


class Stop(Exception):
    """Raised by the spied loss: nothing can be read off a meta tensor."""


def cnn(channels: tuple[int, ...], seed: int) -> VisionAdapter:
    torch.manual_seed(seed)
    return VisionAdapter(small_cnn(num_classes=4, channels=channels).eval(), {})


def data(n: int = 24) -> DistillData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4)).astype(np.float32)
    return DistillData({"pixel_values": x}, y, {"pixel_values": x[:8]}, y[:8], logits)


def devices(obj: object) -> set[torch.device]:
    """The devices of the tensors in `obj` (nested dicts, tuples, lists)."""
    if isinstance(obj, torch.Tensor):
        return {obj.device}
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, tuple | list):
        return set().union(*(devices(v) for v in obj)) if obj else set()
    return set()


def record_forwards(**modules: nn.Module) -> dict[str, set[torch.device]]:
    """Per module name, the devices of its parameters and of every input of its forward calls."""
    seen: dict[str, set[torch.device]] = {name: set() for name in modules}
    for name, module in modules.items():

        def hook(mod: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
            seen[name] |= devices([args, kwargs]) | {p.device for p in mod.parameters()}

        module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_on_device_moves_nested_tensors_and_keeps_what_is_already_there():
    t, labels = torch.ones(2), torch.arange(2)
    obj = ({"x": t, "n": None}, [labels], 3)
    same = on_device(obj, CPU)
    assert same[0]["x"] is t and same[1][0] is labels  # no copy on the CPU
    assert same[0]["n"] is None and same[2] == 3
    copied = on_device(obj, CPU, copy=True)
    assert copied[0]["x"] is not t and torch.equal(copied[0]["x"], t)
    moved = on_device(obj, META)
    assert devices(moved) == {META} and isinstance(moved[1], list)
    assert module_device(nn.Linear(2, 2).to(META)) == META
    assert module_device(nn.ReLU()) == CPU  # no parameters


@pytest.mark.parametrize("augment", ["none", "shift"])
def test_training_batches_labels_and_teacher_targets_are_on_the_accelerator_device(
    monkeypatch, augment
):
    """`targets` with the precomputed teacher logits (`none`), and with the teacher labelling
    perturbed rows on the fly (`shift`, every row perturbed, teacher cache off: a meta tensor
    cannot be copied to the host)."""
    monkeypatch.setattr(distill_mod, "make_accelerator", MetaAccelerator)
    teacher, student = cnn((8, 16), 0), cnn((4, 8), 1)
    seen = record_forwards(teacher=teacher.module)
    cfg = DistillConfig(batch_size=8, augment=augment, augment_prob=1.0, teacher_cache_mb=0)
    tr = _Trainer(student, data(), cfg, 0, teacher, None)
    assert module_device(student.module) == META and module_device(teacher.module) == META
    batch, t_logits, labels, feats = tr.targets(np.arange(8), 0, 0)
    assert devices([batch, t_logits, labels, feats]) == {META}
    assert seen["teacher"] == ({META} if augment == "shift" else set())


def test_distillation_runs_student_teacher_and_losses_on_the_accelerator_device(monkeypatch):
    """A distillation up to its first loss (the probe batch that sizes the projections): the
    student's and the teacher's forward inputs and parameters, and every loss input, are on the
    accelerator's device; the models are then sent back to the CPU they came from."""
    monkeypatch.setattr(distill_mod, "make_accelerator", MetaAccelerator)
    monkeypatch.setattr(distill_mod, "evaluate", lambda adapter, data: 0.0)  # needs values
    homes: list[torch.device] = []

    def release(tr: _Trainer) -> None:  # a meta tensor cannot go back: record where to
        homes.extend(home for _, home in tr.homes)

    monkeypatch.setattr(_Trainer, "release", release, raising=False)
    loss_inputs: set[torch.device] = set()

    def spy(x: object, **params: object) -> torch.Tensor:
        loss_inputs.update(devices(list(vars(x).values())))
        raise Stop

    monkeypatch.setitem(distill_mod.LOSSES, "logits", spy)
    teacher, student = cnn((8, 16), 0), cnn((4, 8), 1)
    seen = record_forwards(teacher=teacher.module, student=student.module)
    cfg = DistillConfig(batch_size=8, augment="shift", teacher_cache_mb=0)
    rows = dataclasses.replace(data(), teacher_logits=None)  # the teacher runs on each batch
    with pytest.raises(Stop):
        distill(student, rows, cfg, 0, teacher=teacher)
    assert seen == {"teacher": {META}, "student": {META}}
    assert loss_inputs == {META}
    assert homes == [CPU, CPU]


def test_release_sends_each_model_back_to_its_device():
    module = nn.Linear(2, 2)
    tr = object.__new__(_Trainer)
    tr.homes = [(module, META)]
    tr.release()
    assert module_device(module) == META


def test_evaluation_feeds_the_module_on_its_device_and_reads_outputs_on_the_host():
    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = nn.Parameter(torch.empty(1, device=META))
            self.inputs: set[torch.device] = set()

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            self.inputs.add(pixel_values.device)
            return torch.zeros(len(pixel_values), 4)

    adapter = VisionAdapter(Recorder(), {})
    out = adapter.forward_numpy({"pixel_values": np.zeros((5, 1, 8, 8), np.float32)})
    assert adapter.module.inputs == {META} and out.shape == (5, 4)


def test_batchnorm_reestimation_batches_are_on_the_student_device():
    student = cnn((4, 8), 1)
    student.module.to(META)
    batches = list(calibration_batches(student, data(), 8, 0))
    assert len(batches) == 3 and devices(batches) == {META}


def test_teacher_cache_keeps_rows_on_the_host_and_returns_them_on_the_batch_device():
    cache = TeacherCache({}, 1 << 20)
    x = torch.randn(4, 1, 8, 8)

    def run(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        return batch["pixel_values"].flatten(1)[:, :3] * 2, {}

    cache.outputs({"pixel_values": x}, np.arange(4), np.zeros(4, dtype=bool), run)
    assert devices(list(cache.kept.values())) == {CPU}
    changed = np.array([True, False, False, False])  # row 0 runs, rows 1-3 are looked up
    logits, _ = cache.outputs({"pixel_values": x.to(META)}, np.arange(4), changed, run)
    assert logits.device == META and logits.shape == (4, 3)
    assert devices(list(cache.kept.values())) == {CPU}


def test_pruning_and_reshaping_follow_the_model_device():
    student = cnn((8, 16), 1)
    student.module.to(META)
    example = {"pixel_values": np.zeros((2, 1, 8, 8), np.float32)}
    make_pruner(student, example, PruneConfig(enabled=True), ratio=0.5, steps=1, round_to=None)
    state = student.module.state_dict()
    shapes = {k: [max(1, v.shape[0] // 2), *v.shape[1:]] for k, v in state.items() if v.dim()}
    apply_shapes(student.module, shapes)
    assert {t.device for t in student.module.state_dict().values()} == {META}


def test_qat_fake_quantizers_run_eagerly_on_cuda_too(monkeypatch):
    """Where PyTorch sees a GPU NNCF's CUDA kernels are an extension compiled on first use (it
    needs nvcc); kdc gives them NNCF's eager PyTorch kernels, as on the CPU. Faked here: the
    CUDA namespace a GPU machine has, never loaded."""
    from nncf.torch.extensions import ExtensionNamespace
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import torch_executor

    from kdc.compress.qat import _use_eager_kernels

    cuda = ExtensionNamespace(extensions.QuantizedFunctionsCUDALoader())
    monkeypatch.setattr(extensions, "QuantizedFunctionsCUDA", cuda)
    _use_eager_kernels()
    assert cuda.get("Quantize_forward") == torch_executor.forward
    assert cuda.get("Quantize_backward") == torch_executor.backward


def test_checkpoint_keeps_the_training_gpus_generator_on_cuda(monkeypatch):
    """A CUDA run's checkpoint keeps the generator of the GPU it trains on too (dropout there
    draws from it), so its resume draws as the uninterrupted run would; a CPU run's keeps the
    CPU's only. Only that GPU's: a resume that sees fewer GPUs (CUDA_VISIBLE_DEVICES) must not
    set generators of GPUs it lacks. No GPU here: torch.cuda's generator calls are stand-ins."""
    from kdc.compress.distill import restore_rng, rng_state

    gpu = torch.device("cuda", 1)
    set_to: list = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: f"state of {device}")
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: set_to.append((s, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["gpu0", "gpu1", "gpu2"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: set_to.append(s))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert set(rng_state(torch.device("cpu"))) == {"torch_rng"}
    state = rng_state(gpu)
    assert state["cuda_rng"] == "state of cuda:1"
    restore_rng(state, gpu)
    assert set_to == [("state of cuda:1", gpu)]
    restore_rng(rng_state(torch.device("cpu")), gpu)  # a CPU checkpoint resumed on a GPU machine
    restore_rng(state, torch.device("cpu"))  # a GPU checkpoint resumed on the CPU
    assert set_to == [("state of cuda:1", gpu)]
