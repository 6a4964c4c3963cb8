"""Search stage: choose the student architecture (fixed rule, or evolution with a proxy)."""

from __future__ import annotations

from kdc.compress.student import fixed_student_spec
from kdc.pipeline import Context, StageOutput
from kdc.rundir import write_json, write_jsonl


def run(ctx: Context) -> StageOutput:
    spec = fixed_student_spec(ctx.teacher, ctx.cfg.student)
    student = build_student(ctx, spec)
    arch = student.architecture()
    row = {"architecture": arch, "spec": spec, "params": student.params(), "chosen": True}
    cands = ctx.run / "search" / "candidates.jsonl"
    out = write_json(ctx.run / "search" / "student.json", {"spec": spec, "architecture": arch,
                                                            "strategy": "fixed"})
    write_jsonl(cands, [row])
    ctx.log(f"  student: {spec} ({student.params():,} params, teacher "
            f"{ctx.teacher.params():,})")
    return StageOutput([out, cands], {"strategy": "fixed", "candidates_scored": 1,
                                      "student_params": student.params()})


def build_student(ctx: Context, spec: dict):
    """The student adapter for `spec`, initialised from the teacher."""
    from kdc.compress.student import derive_student

    return derive_student(ctx.teacher, spec, ctx.encode("train"),
                          ctx.profile.defaults.channel_divisor)
