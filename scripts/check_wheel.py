"""Run with the interpreter of a virtual environment where the built wheel is installed (not an
editable install): the package is imported from site-packages, and everything it needs at run time
came with the wheel (an editable install would hide missing package data)."""

from __future__ import annotations

import sys
from importlib import metadata, resources
from pathlib import Path


def main() -> int:
    import airflow_vibedream

    where = Path(airflow_vibedream.__file__).resolve()
    problems = []
    if "site-packages" not in where.parts:
        problems.append(f"airflow_vibedream is imported from {where}, not from an installed wheel")
    package = resources.files("airflow_vibedream")
    for name in ("py.typed", "plugins/templates/base.html", "plugins/templates/gallery.css"):
        if not package.joinpath(name).is_file():
            problems.append(f"{name} is not in the wheel")
    files = metadata.files("airflow-provider-vibedream") or []
    if not any(Path(str(f)).name == "LICENSE" for f in files):
        problems.append("LICENSE is not in the wheel's metadata")
    entry_points = {ep.group for ep in metadata.distribution("airflow-provider-vibedream").entry_points}
    for group in ("apache_airflow_provider", "airflow.plugins", "console_scripts"):
        if group not in entry_points:
            problems.append(f"entry point group {group} is missing")
    from airflow_vibedream.plugins.pages import render

    if "VibeDream" not in render("base.html", title="VibeDream", refresh=None):
        problems.append("the gallery's templates do not render from the wheel")
    for problem in problems:
        print(f"wheel check: {problem}", file=sys.stderr)
    if not problems:
        print(f"wheel check: OK ({where.parent})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
