"""Theme files: the shipped ones load, a broken file is skipped with a reason,
and the default falls back to the built-in theme when its file is unusable."""

from __future__ import annotations

import shutil

from sbtui.themes import DEFAULT_THEME, FALLBACK_THEME, load_themes, themes_dir


def test_shipped_themes_load_without_problems():
    themes, problems = load_themes()
    names = [t.name for t in themes]
    assert problems == []
    assert names[0] == DEFAULT_THEME
    assert {"sbtui-dark", "sbtui-light", "sbtui-high-contrast"} <= set(names)
    assert all("heat-high" in t.variables for t in themes)


def test_broken_files_are_skipped_and_the_default_falls_back(tmp_path):
    shutil.copy(themes_dir() / "light.toml", tmp_path / "light.toml")
    (tmp_path / "dark.toml").write_text('name = "sbtui-dark"\nprimary = "not a colour"\n')
    (tmp_path / "broken.toml").write_text("name = [unterminated\n")
    themes, problems = load_themes(tmp_path)
    assert [t.name for t in themes] == [DEFAULT_THEME, "sbtui-light"]
    assert themes[0] is FALLBACK_THEME
    assert len(problems) == 2
    assert any("dark.toml" in p and "primary" in p for p in problems)
    assert any("broken.toml" in p for p in problems)


def test_one_stylesheet_no_widget_brings_its_own_css():
    """Issue #6: one stylesheet (sbtui.tcss) using theme variables only; a
    widget's DEFAULT_CSS would be a second place to look for a style."""
    import re
    from pathlib import Path

    import sbtui
    root = Path(sbtui.__file__).parent
    own_css = [str(p.relative_to(root)) for p in root.rglob("*.py")
               if re.search(r"^\s*DEFAULT_CSS\s*=", p.read_text(), re.M)]
    assert own_css == []
    css = re.sub(r"/\*.*?\*/", "", (root / "sbtui.tcss").read_text(), flags=re.S)
    literal = re.findall(r":[^;{}]*?(#[0-9a-fA-F]{3,8}\b|rgba?\(|hsl\()", css)
    assert literal == [], "colours come from theme variables"
