"""The tree shows the architecture and the README says what it is: no module of `src/flaskserve`
over 450 lines, every top-level unit (package or module) named in the README's Development
section, and every unit named there present, so neither can drift from the other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "flaskserve"
MAX_LINES = 450
#: Files of the package root that are not units a reader looks for.
NOT_UNITS = {"__init__.py", "__main__.py"}


def development_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Development\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def unit_bullets() -> dict[str, str]:
    """The section's bullets that name a unit: "- `core/`: ..." -> {"core/": the bullet's text}."""
    bullets = re.split(r"\n(?=- )", development_section())
    named = {}
    for bullet in bullets:
        match = re.match(r"- `([\w.]+/?)`:", bullet)
        if match:
            named[match.group(1)] = bullet
    return named


def top_level_units() -> set[str]:
    packages = {f"{path.name}/" for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    modules = {path.name for path in PACKAGE.glob("*.py") if path.name not in NOT_UNITS}
    return packages | modules


def test_no_module_is_longer_than_450_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by concern (at most {MAX_LINES} lines each): {long}"


def test_every_top_level_unit_is_in_the_readme_and_every_named_one_exists() -> None:
    named = set(unit_bullets())
    assert named, "README.md's Development section lists no units"
    units = top_level_units()
    assert sorted(units - named) == [], "add these to README.md's Development section"
    assert sorted(named - units) == [], "README.md's Development section names these; gone"


def test_every_file_and_folder_a_units_bullet_names_exists() -> None:
    missing = []
    for unit, bullet in unit_bullets().items():
        base = PACKAGE / unit if unit.endswith("/") else PACKAGE
        for name in re.findall(r"`([\w./]+(?:\.py|/))`", bullet):
            if name == unit:
                continue
            # Named within its unit (`gate.py` under `gate/`) or from the package root.
            if not ((base / name).exists() or (PACKAGE / name).exists()):
                missing.append(f"{unit} names {name}")
    assert missing == [], "README.md's Development section names what the tree lacks"
