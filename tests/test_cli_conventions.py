"""What every command shares: help with defaults and an example, exit codes, and copies that never half-happen."""

import argparse

import pytest

from ctfm.cli import build_parser, main


def every_command(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every sub-command, at every depth."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from every_command(sub, (*path, name))


COMMANDS = list(every_command(build_parser()))


def test_the_walk_finds_every_command_and_nested_step():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"segment", "pseudo-label", "semantic-search", "analyse pca", "idc download", "recipes copy"} <= names


@pytest.mark.parametrize("path, parser", COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_help_shows_every_default_and_an_example(path, parser):
    text = parser.format_help()
    assert "example:\n  ctfm " + path[0] in text
    for action in parser._actions:
        default = action.default
        if not action.option_strings or default in (None, False, [], argparse.SUPPRESS):
            continue
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        assert "default" in parser._get_formatter()._expand_help(action), f"{action.dest} of {' '.join(path)}"
        assert shown in " ".join(text.split()), f"{action.dest}'s default {shown} of {' '.join(path)}"


def test_top_level_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for line in ("0  every item done", "1  nothing could be done", "2  usage error", "3  done, but some items"):
        assert line in text


def test_commands_writing_per_input_files_say_the_naming_rule():
    helps = {" ".join(path): parser.format_help() for path, parser in COMMANDS}
    for command in ("segment", "pseudo-label", "semantic-search"):
        assert "s0001_ct" in " ".join(helps[command].split()), command


def test_a_bad_flag_value_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", str(tmp_path / "datalist.csv"), "--workers", "0"])
    assert exit_info.value.code == 2 and "--workers: must be at least 1, got 0" in capsys.readouterr().err
    # ctfm's own usage errors (found after parsing) use 2 as well, in one line.
    assert main(["search", "--table", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "ctfm search: error: give either QUERY or --query-embedding\n"


def test_recipes_copy_into_a_folder_holding_one_of_the_files_writes_nothing(tmp_path, capsys):
    (tmp_path / "mine").mkdir(parents=True)
    (tmp_path / "mine" / "pretrain.yaml").write_text("# my own\n")
    assert main(["recipes", "copy", "pretrain", str(tmp_path / "mine")]) == 1
    assert "pretrain.yaml exists already; nothing was copied" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["mine", "mine/pretrain.yaml"]
    assert (tmp_path / "mine" / "pretrain.yaml").read_text() == "# my own\n"


def test_recipes_list_shows_whole_first_sentences_and_how_to_run_them_outside_a_clone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["recipes"]) == 0
    text = capsys.readouterr().out
    assert "recipes shipped with ctfm" in text and "ctfm recipes copy NAME DIR" in text
    assert "lighter fit lighter_configs/" not in text
    flowing = " ".join(text.split())
    assert "quickstart A CPU-sized version of pretrain.yaml" in flowing
    assert (
        "uses it): a narrow encoder, small patches and a few short epochs, so pretraining finishes in minutes on "
        "two cores. released_code" in flowing
    )
