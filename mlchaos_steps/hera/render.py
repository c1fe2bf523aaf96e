"""Render what is committed from its Hera sources: the library (``mlchaos_steps/argo/mlchaos-steps.yaml``)
and each ``workflows/<name>.py`` into ``workflows/<name>.yaml``. ``--check`` changes nothing and exits 1
when a committed file differs from what its source renders (the tests run the same comparison).

    python -m mlchaos_steps.hera.render [--check] [--workflows DIR]
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from mlchaos_steps.hera.library import render_library

LIBRARY_FILE = Path(__file__).parent.parent / "argo" / "mlchaos-steps.yaml"
WORKFLOWS = Path(__file__).parent.parent.parent / "workflows"


def rendered(workflows: Path = WORKFLOWS) -> dict[Path, str]:
    """Every committed file and what its source renders now."""
    out = {LIBRARY_FILE: render_library()}
    for source in sorted(workflows.glob("*.py")):
        workflow = runpy.run_path(str(source))["workflow"]
        out[source.with_suffix(".yaml")] = workflow.to_yaml()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlchaos_steps.hera.render")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--workflows", type=Path, default=WORKFLOWS)
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered(args.workflows).items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'rendered'}: {path}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
