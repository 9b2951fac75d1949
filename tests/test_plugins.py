"""Plugins: a separate pip-installed package adds a fusion through an entry point. The fast tier runs
one real process (the plugin's part is listed); turning auto-loading off and training with the
plugin's fusion run in the slow tier."""

import os
import subprocess
import sys
import textwrap
import warnings
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from vqa_components import registry

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_MODULE = '''
"""A test plugin for vqa-components."""

from vqa_components.fusion.concat_self_attention import ConcatSelfAttentionFusion
from vqa_components.registry import FUSIONS


@FUSIONS.register("plugin_concat_fusion")
class PluginConcatFusion(ConcatSelfAttentionFusion):
    """Concat fusion shipped by a third-party plugin."""
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """Build and pip-install a plugin package into a throwaway target folder."""
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "vqa_test_plugin").mkdir()
    (src / "vqa_test_plugin" / "__init__.py").write_text(PLUGIN_MODULE)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "vqa-test-plugin"
            version = "0.0.1"

            [project.entry-points."vqa_components.plugins"]
            test_plugin = "vqa_test_plugin"
            """
        )
    )
    target = tmp_path_factory.mktemp("plugin_site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(src)],
        check=True,
    )
    return target


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def test_plugin_part_is_listed(installed_plugin):
    res = subprocess.run(
        [sys.executable, "-m", "vqa_components.cli", "list", "fusion"],
        capture_output=True, text=True, env=_env(installed_plugin), cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    assert "plugin_concat_fusion" in res.stdout
    assert "Concat fusion shipped by a third-party plugin." in res.stdout


@pytest.mark.slow
def test_plugin_auto_loading_can_be_turned_off(installed_plugin):
    res = subprocess.run(
        [sys.executable, "-m", "vqa_components.cli", "list", "fusion"],
        capture_output=True, text=True, env=_env(installed_plugin, VQA_COMPONENTS_NO_PLUGINS="1"), cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    assert "plugin_concat_fusion" not in res.stdout


@pytest.mark.slow
def test_plugin_fusion_trains_from_yaml_by_name(installed_plugin, tmp_path, tiny_data):
    res = subprocess.run(
        [sys.executable, "-m", "vqa_components.cli", "fit", "--config", str(ROOT / "recipes/quickstart.yaml"),
         "--model.fusion", "plugin_concat_fusion",
         "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}",
         "--data.dataset_args.root", str(tmp_path / "data")] + tiny_data,
        capture_output=True, text=True, env=_env(installed_plugin), cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "PluginConcatFusion" in res.stdout + res.stderr


def test_broken_plugin_warns_by_name_and_the_rest_works(monkeypatch):
    class FakeDist:
        name = "broken-dist"

    broken = EntryPoint(name="broken_plugin", value="no_such_module_xyz", group=registry.PLUGIN_GROUP)
    object.__setattr__(broken, "dist", FakeDist())
    monkeypatch.setattr(registry, "entry_points", lambda group: [broken])
    monkeypatch.setattr(registry, "failed_plugins", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.load_plugins(force=True)
    assert any("broken_plugin" in str(w.message) and "broken-dist" in str(w.message) for w in caught)
    assert "broken_plugin" in registry.failed_plugins
    assert "cross_attention" in registry.FUSIONS.names()
