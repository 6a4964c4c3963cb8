"""Every --target says what it defaults to and why (verify: the run's own; bundle and compress
default to different targets)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperArgument, TyperOption
from typer.testing import CliRunner

from kdc.cli import app, main

runner = CliRunner()


def _help(command: str) -> str:
    res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return " ".join(res.output.replace("│", " ").split())


def test_target_options_say_their_defaults():
    assert "default: the target it was compressed for" in _help("verify")
    assert "compress defaults to host" in _help("bundle")
    assert "kdc bundle defaults to jetson" in _help("compress")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compress", "--bogus", "m.yaml"], "error: No such option: --bogus"),
        (["compres", "m.yaml"], "error: No such command 'compres'. Did you mean 'compress'?"),
        (["compress"], "error: Missing argument 'config'; see `kdc compress --help`"),
        (["verify", "--target"], "error: Option '--target' requires an argument"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["kdc", *argv])
    with pytest.raises(SystemExit) as stop:
        main()
    captured = capsys.readouterr()
    assert stop.value.code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), captured.err


def test_the_entry_point_keeps_each_command_s_exit_code(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["kdc", "--version"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 0 and "kdc " in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["kdc", "compress", "missing.yaml"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2 and "missing.yaml: file not found" in capsys.readouterr().err


def test_an_api_error_names_the_command_s_own_flag():
    """The Python API names a parameter (out_dir, as_json); the command line its flag. A field
    of a file (a profile YAML's `name`) is not a flag."""
    from kdc import cli
    from kdc.cli_errors import command_flags
    from kdc.errors import UserError

    assert command_flags(cli.compress.__wrapped__)["out_dir"] == "--out"
    assert command_flags(cli.compress.__wrapped__)["out"] == "--out"  # api.compress(out=...)
    assert command_flags(cli.bench.__wrapped__)["as_json"] == "--json"
    assert "name" not in command_flags(cli.profiles_show.__wrapped__)  # an argument
    err = UserError("must be at least 1", field="iterations", fix="pass >= 1")
    assert str(err.as_option({"iterations": "--iterations"})).startswith("field '--iterations'")
    in_file = UserError("missing", source="p.yaml", field="name")
    assert in_file.as_option({"name": "--name"}) is in_file


def test_the_api_names_its_parameter_and_the_cli_its_flag(tmp_path, capsys):
    import typer

    from kdc import api, cli
    from kdc.errors import UserError
    from tests.helpers.tiny import cnn_config, write_yaml

    config = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="^field 'out': .*a_file exists and is not a directory"):
        api.compress(config, out=tmp_path / "a_file")
    with pytest.raises(typer.Exit):
        cli.compress(config, out_dir=tmp_path / "a_file")
    assert "error: field '--out': " in capsys.readouterr().err


def test_api_arguments_of_the_wrong_type_are_user_errors(tmp_path):
    from kdc import api
    from kdc.errors import UserError
    from tests.helpers.tiny import cnn_config, write_yaml

    config = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None))
    for call, field in (
        (lambda: api.compress(["model.yaml"]), "config"),
        (lambda: api.compress(config, out=5), "out"),
        (lambda: api.compress(config, target=5), "target"),
        (lambda: api.verify(3), "run_dir"),
        (lambda: api.compress(config, resume="no"), "resume"),
        (lambda: api.verify(tmp_path, quiet="no"), "quiet"),  # it was taken as quiet
        (lambda: api.plan(config, resume="no"), "resume"),
    ):
        with pytest.raises(UserError) as e:
            call()
        assert e.value.field == field and str(e.value).startswith(f"field '{field}': is ")
    assert api.plan(config, target=None)["target"]["name"] == "host"  # None: the default


def test_an_interrupted_command_without_a_run_does_not_speak_of_stages(capsys):
    import typer

    from kdc.cli_errors import handled

    @handled
    def calibrate(target: str = "host") -> None:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as stop:
        calibrate()
    assert stop.value.exit_code == 130
    assert capsys.readouterr().err.strip() == (
        "interrupted (SIGINT): nothing was saved; run the command again"
    )


@pytest.mark.parametrize("group", [[], ["profiles"]])
def test_every_command_summary_is_one_line_and_its_help_keeps_the_detail(group):
    """`kdc --help` lists each command on one row at 80 columns (a docstring's first paragraph
    hard-wrapped over lines printed its breaks mid-sentence); the detail is in its own --help."""
    res = runner.invoke(app, [*group, "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    panel = res.output.split("Commands")[1].splitlines()[1:]
    rows = [ln.strip("│ ") for ln in panel if ln.startswith("│")]
    names = [r.split()[0] for r in rows]
    assert rows and all(not ln.startswith("│  ") for ln in panel), res.output  # no continuation
    assert len(names) == len(set(names))
    detail = {"validate": "PyTorch's meta device", "inspect": "sha256 no longer matches"}
    for name in [n for n in names if n in detail]:
        text = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80"}).output
        assert detail[name] in " ".join(text.replace("│", " ").split()), text


def _commands() -> dict[str, typer.core.TyperCommand]:
    """Every command by its name as typed (`profiles list` too)."""
    group = typer.main.get_command(app)
    found = {}
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None)
        found.update({f"{name} {s}": c for s, c in subs.items()} if subs else {name: cmd})
    return found


def test_every_option_has_help_and_no_negative_form():
    """Each option says what it does; a flag is one word (`--resume`, not `--resume/--no-resume`
    beside `--dry-run` and `--strict`)."""
    for name, cmd in _commands().items():
        for param in cmd.params:
            if isinstance(param, TyperOption):
                assert param.help, f"kdc {name} {param.opts[0]} has no help"
                assert not param.secondary_opts, f"kdc {name} {param.secondary_opts}"


def test_every_argument_has_help_and_says_the_same_in_every_command():
    """Each positional argument (CONFIG, RUN_DIR, MODEL, ...) says what file or directory it is,
    and one kind of argument (kdc.cli_options) says it alike wherever it appears."""
    said: dict[str, set[str]] = {}
    for name, cmd in _commands().items():
        for param in cmd.params:
            if isinstance(param, TyperArgument):
                assert param.help, f"kdc {name} {param.name.upper()} has no help"
                said.setdefault(param.name, set()).add(param.help)
    assert {"config", "run_dir", "model", "report", "model_dir", "name"} <= said.keys()
    assert all(len(helps) == 1 for helps in said.values()), said
    assert "kdc init" in _help("compress") and "model.onnx" in _help("bench")


def test_the_readme_names_every_option_of_every_command():
    """The README's command table is where users look: each command's row (the stage commands
    share one) names each of its options."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Commands")[1].split("\nExit codes")[0]
    rows = [r for r in table.splitlines() if r.startswith("| `kdc")]
    for name, cmd in _commands().items():
        key = (
            "search/distill/export/build"
            if name in ("search", "distill", "export", "build")
            else name
        )
        row = next(r for r in rows if f"`kdc {key}" in r)
        for param in cmd.params:
            if isinstance(param, TyperOption) and param.name != "help":
                named = (re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", row) for o in param.opts)
                assert any(named), f"README's row for kdc {name} lacks {param.opts[0]}"


def test_init_data_help_names_every_format_it_reads():
    from kdc.data import SUFFIX_FORMATS

    text = _help("init")
    for suffix in [*SUFFIX_FORMATS, "datasets", "image folder", "sklearn:digits"]:
        assert suffix.lstrip(".") in text, suffix


def test_calibrate_from_asks_for_the_bundle_directory_not_its_results():
    """ingest_bundle reads DIR/calibration.json and DIR/results/: --from is the bundle's folder."""
    assert "Fit to the timings in DIR/results/ (DIR: what --bundle wrote)" in _help("calibrate")
