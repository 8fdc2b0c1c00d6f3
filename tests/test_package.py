"""The package surface: a light import, a stable top-level API, and the console script."""

import subprocess
import sys


def test_import_is_light():
    code = "import sys, ctfm; heavy = {'torch', 'monai', 'lighter', 'pandas'} & set(sys.modules); print(sorted(heavy))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_top_level_functions_survive_importing_their_modules():
    import ctfm.embedding  # noqa: F401  (a submodule named like the function would shadow it)
    import ctfm.export  # noqa: F401
    import ctfm.hub  # noqa: F401

    for name in ctfm.__all__:
        assert callable(getattr(ctfm, name)), name
    assert ctfm.embed.__module__ == "ctfm.embedding" and ctfm.load.__module__ == "ctfm.hub.loading"


def test_console_script_lists_every_command():
    out = subprocess.run(["ctfm", "--help"], check=True, capture_output=True, text=True).stdout
    for command in ("quickstart", "embed", "export", "prepare", "idc", "models"):
        assert command in out
    models = subprocess.run(["ctfm", "models"], check=True, capture_output=True, text=True).stdout
    assert "project-lighter/ct_fm_feature_extractor" in models


def test_cli_reports_user_errors_without_a_traceback(tmp_path):
    result = subprocess.run(
        ["ctfm", "export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "missing.ckpt" in result.stderr and "Traceback" not in result.stderr


def test_every_module_imports():
    """A module that no test happens to import (a merge left a stale name behind) still fails here."""
    import importlib
    import pkgutil

    import ctfm

    names = [m.name for m in pkgutil.walk_packages(ctfm.__path__, "ctfm.") if not m.name.endswith("__main__")]
    failures = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - report every broken module at once
            failures[name] = f"{type(err).__name__}: {err}"
    assert not failures
