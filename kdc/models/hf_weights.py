"""Whether a Hugging Face model directory's weights are all those its model uses: from_pretrained
initialises any it lacks at random with no more than a logged warning (a masked-LM checkpoint
loaded as a classifier gets a random head), and a kdc student's are exactly its config's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdc.errors import UserError, listed
from kdc.models.weights import key_mismatch

# per auto class kdc loads a teacher through: the fix for a checkpoint without weights its model
# uses (and, in kdc.preflight, for a config.json naming no head of the task)
TEACHER_FIXES = {
    "AutoModelForSequenceClassification": "point it at the fine-tuned classifier's directory, "
    "or set task: sentence-embedding to compress the encoder",
    "AutoModelForImageClassification": "point it at the fine-tuned image classifier's directory",
    "AutoModel": "point it at the encoder's directory, saved with save_pretrained",
}
# per auto class: parameters (name prefixes) its adapter's output never reads. A sentence
# encoder's embedding pools the last hidden state: BERT's pooler is not read, and
# sentence-transformers saves encoders without it
UNUSED = {"AutoModel": ("pooler.",)}


def check_teacher_keys(path: Path, model: nn.Module, missing: list[str], auto_class: Any) -> None:
    """A UserError if `missing` (from_pretrained's loading info) names parameters of `model`
    its adapter reads: they were initialised at random. Buffers (position ids, which the model
    builds itself) and the parameters `UNUSED` names for `auto_class` may be missing."""
    name = auto_class.__name__
    params = dict(model.named_parameters(remove_duplicate=False))
    lacking = [k for k in missing if k in params and not k.startswith(UNUSED.get(name, ()))]
    if not lacking:
        return
    saved = [str(a) for a in getattr(model.config, "architectures", None) or []]
    of = f"the {', '.join(saved)} checkpoint" if saved else "the checkpoint"
    raise UserError(
        f"{of} lacks {len(lacking)} weights {type(model).__name__} uses ({listed(lacking, 3)}): "
        "loading would initialise them at random and kdc would distil noise",
        source=str(path),
        field="teacher.path",
        fix=TEACHER_FIXES[name],
    )


def check_student_keys(path: Path, missing: list[str], unexpected: list[str]) -> None:
    """A UserError naming the tensors a kdc student's weights lack or have beyond those its
    config builds (every family kdc compresses saves exactly those: none is left to HF)."""
    differ = key_mismatch(missing, unexpected)
    if not differ:
        return
    raise UserError(
        f"model.safetensors does not match config.json: {differ}",
        source=str(path),
        field="teacher.path",
        fix="save the model and its config together (kdc's distill stage writes both), or "
        "undo the edit of config.json or model.safetensors",
    )
