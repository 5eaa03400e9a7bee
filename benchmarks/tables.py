"""What every benchmark writes: its result as JSON and a markdown table beside it."""

import os

from foundation import files


def markdown_table(header, rows, align=None):
    """Markdown lines of a table: `header` and each row a list of cells (str()-ed);
    `align` one of "l" or "r" per column (default: left)."""
    align = align or "l" * len(header)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if side == "r" else "---" for side in align) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def write_report(path, result, render):
    """`result` as JSON at `path` and render(result) as the .md beside it, each atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_json(path, result)
    files.atomic_write_text(os.path.splitext(path)[0] + ".md", render(result))
