"""Regenerate the generated parts of README.md from the code (``make docs``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from zaindari.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)", re.S)


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + Settings.markdown_table() + "\n" + m.group(2), text)


def main() -> int:
    text = README.read_text()
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            print("README.md settings table is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
