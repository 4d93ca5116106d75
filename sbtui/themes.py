"""Themes as data files, and the remembered theme choice.

Themes live in ``themes/*.toml`` at the top of the repository (or in
``$SBTUI_THEMES_DIR``): each file holds the fields of a
:class:`textual.theme.Theme` and a ``[variables]`` table. :func:`load_themes`
never raises: a file that does not parse, misses ``name``/``primary`` or holds
a colour Textual cannot read is skipped and reported in ``problems``, and the
built-in :data:`FALLBACK_THEME` stands in for the default theme when its file is
unusable, so the app always starts.

The chosen theme is remembered in ``settings.json`` under
``$SBTUI_CONFIG_DIR`` (tests point it at a temporary directory), else
``$XDG_CONFIG_HOME/sbtui``, else ``~/.config/sbtui``. Reading a missing or
broken settings file gives ``{}``; writing is atomic (write then rename).
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import fields
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

DEFAULT_THEME = "sbtui-dark"

# Custom CSS variables sbtui.tcss uses; used when a theme (e.g. one of
# Textual's own) does not define them.
VARIABLE_DEFAULTS = {
    "heat-empty": "#1A1F26",
    "heat-low": "#1F5FA8",
    "heat-mid": "#E0A32E",
    "heat-high": "#FF3B30",
}

FALLBACK_THEME = Theme(
    name=DEFAULT_THEME, dark=True,
    primary="#5FAFFF", secondary="#87D7AF", accent="#FFAF5F", warning="#FFD75F",
    error="#FF5F5F", success="#87D787", foreground="#D0D7DE", background="#0D1117",
    surface="#131A22", panel="#1C2632",
    variables={**VARIABLE_DEFAULTS, "heat-empty": "#18212B"},
)

_COLOR_FIELDS = ("primary", "secondary", "warning", "error", "success", "accent",
                 "foreground", "background", "surface", "panel", "boost")
_THEME_FIELDS = {f.name for f in fields(Theme)}


class ThemeFileError(ValueError):
    """A theme file cannot be used; the message names the file and the field."""


def themes_dir() -> Path:
    override = os.environ.get("SBTUI_THEMES_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "themes"


def load_theme(path: Path) -> Theme:
    """Read one theme file. Raises :class:`ThemeFileError`."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ThemeFileError(f"{path}: {err}") from None
    unknown = set(data) - _THEME_FIELDS
    if unknown:
        raise ThemeFileError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    for key in ("name", "primary"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ThemeFileError(f"{path}: '{key}' is missing")
    variables = data.get("variables", {})
    if not isinstance(variables, dict):
        raise ThemeFileError(f"{path}: [variables] must be a table")
    colors = [(k, data[k]) for k in _COLOR_FIELDS if data.get(k) is not None]
    colors += [(f"variables.{k}", v) for k, v in variables.items() if k.startswith("heat-")]
    for key, value in colors:
        try:
            Color.parse(value)
        except (ColorParseError, TypeError):
            raise ThemeFileError(f"{path}: '{key}' is not a colour: {value!r}") from None
    try:
        return Theme(**data)
    except TypeError as err:
        raise ThemeFileError(f"{path}: {err}") from None


def load_themes(directory: Path | None = None) -> tuple[list[Theme], list[str]]:
    """All usable themes in ``directory``, default first, and the problems found."""
    directory = directory or themes_dir()
    themes: dict[str, Theme] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.toml")) if directory.is_dir() else []:
        try:
            theme = load_theme(path)
        except ThemeFileError as err:
            problems.append(str(err))
            continue
        themes[theme.name] = theme
    if DEFAULT_THEME not in themes:
        themes[DEFAULT_THEME] = FALLBACK_THEME
    ordered = [themes.pop(DEFAULT_THEME), *sorted(themes.values(), key=lambda t: t.name)]
    return ordered, problems


# -- the remembered choice ---------------------------------------------------

def config_dir() -> Path:
    override = os.environ.get("SBTUI_CONFIG_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "sbtui"


def settings_path() -> Path:
    return config_dir() / "settings.json"


def load_settings() -> dict:
    try:
        data = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(settings: dict) -> None:
    """Write settings atomically; a read-only config dir is not an error worth a crash."""
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass


def remembered_theme() -> str | None:
    name = load_settings().get("theme")
    return name if isinstance(name, str) else None


def remember_theme(name: str) -> None:
    settings = load_settings()
    if settings.get("theme") != name:
        settings["theme"] = name
        save_settings(settings)
