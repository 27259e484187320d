"""``sfl plot``: holdout accuracy and loss per published round, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from operator_tools import history
from operator_tools.context import OperatorContext
from operator_tools.errors import InvalidInputError, NotFoundError


def draw(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Draw accuracy and loss of the rounds that have an evaluation into ``path``."""
    # Imported here: matplotlib is an optional dependency that only this needs.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rounds = [row["round"] for row in rows]
    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 4))
    accuracy_axis.plot(rounds, [row["accuracy"] for row in rows], marker="o")
    accuracy_axis.set_xlabel("round")
    accuracy_axis.set_ylabel("holdout accuracy")
    accuracy_axis.grid(alpha=0.3)
    loss_axis.plot(rounds, [row["loss"] for row in rows], marker="o", color="C3")
    loss_axis.set_xlabel("round")
    loss_axis.set_ylabel("holdout cross-entropy")
    loss_axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run_plot(context: OperatorContext, output: Path) -> str:
    """Plot the federation's history; return the absolute path of the PNG.

    Raises
    ------
    NotFoundError
        If no round was published with a holdout evaluation yet.
    """
    rows = [
        row
        for row in history.history(context)
        if row["status"] == "published" and row["accuracy"] is not None
    ]
    if not rows:
        raise NotFoundError(
            f"no round of federation {context.federation} was published with a "
            "holdout evaluation yet: nothing to plot"
        )
    if output.suffix.lower() != ".png":
        raise InvalidInputError(f"output {output} must end in .png")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        draw(rows, output, f"Federation {context.federation}: global model per round")
    except OSError as exc:
        raise InvalidInputError(
            f"cannot write the plot to {output}: {exc.strerror or exc}; "
            "choose a writable --output path"
        ) from exc
    return str(output.resolve())
