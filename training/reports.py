"""Writing the reports of the offline commands: JSON summaries and PNG figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON, creating the parent folder; the file is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(value, indent=2) + '\n', encoding='utf-8')
    tmp.replace(path)


def save_figure(fig: Any, path: str | Path) -> None:
    """Lay out, save at the figure's own dpi (creating the parent folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
