"""Tiny projects the preflight tests validate: a CNN config with untrained weights, a text
config over a config.json stub, a tiny ViT on an image folder; and the one-line error check."""

from __future__ import annotations

from tiny import cnn_config, hf_stub, write_yaml
from typer.testing import CliRunner

from kdc.cli import app

runner = CliRunner()
# the image processor of image_project's 8x8 ViT (ViTImageProcessor's default size is 224)
PROCESSOR_8 = '{"image_processor_type": "ViTImageProcessor", "size": 8, "image_mean": 0.5}'


def weights(path, channels=(16, 32)):
    """Untrained weights of the tiny configs' teacher (kdc.models.cnn:small_cnn)."""
    from safetensors.torch import save_file

    from kdc.models.cnn import small_cnn

    save_file(small_cnn(num_classes=10, channels=list(channels)).state_dict(), str(path))


def config(tmp_path, **over):
    """The tiny CNN config (cnn_config with `over`) beside untrained teacher weights."""
    weights(tmp_path / "teacher.safetensors")
    return write_yaml(tmp_path / "model.yaml", cnn_config(**over))


def one_line(res) -> str:
    """The one line a refused CLI call printed (exit 2, no traceback)."""
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def dry_run(cfg) -> object:
    """`kdc compress CONFIG --dry-run`."""
    return runner.invoke(app, ["compress", str(cfg), "--dry-run"])


def text_project(tmp_path, conf: dict, rows: list[tuple[str, str]], **over):
    """A text config whose teacher directory holds only `conf` as config.json (validate loads
    no model) and whose data are `rows`, a fifth held out."""

    from tiny import bert_config, write_csv

    hf_stub(tmp_path / "teacher", conf)
    write_csv(tmp_path / "d.csv", rows)
    data = {"source": "d.csv", "eval": None}
    return write_yaml(tmp_path / "model.yaml", bert_config(data=data, **over))


def image_project(tmp_path, classes: list[str], processor: bool = True, **over):
    """A config for a tiny 3-channel ViT (classes cat, dog; saved: `kdc search` can load it)
    on an image folder of 8×8 RGB images of `classes`; without preprocessor_config.json
    unless `processor`."""
    from tiny import image_folder, tiny_vit, vit_config

    tiny_vit(["cat", "dog"], channels=3, hidden=16, layers=2, heads=2).save_pretrained(
        str(tmp_path / "teacher")
    )
    if processor:
        (tmp_path / "teacher" / "preprocessor_config.json").write_text(PROCESSOR_8)
    image_folder(tmp_path, dict.fromkeys(classes, 5))
    data = {"source": "imgs", "eval_fraction": 0.4, "limit_train": None, "limit_eval": None}
    data |= over.pop("data", {})
    return write_yaml(tmp_path / "model.yaml", vit_config(data=data, **over))
