"""Per-epoch metrics as JSONL (for programs) and CSV (for spreadsheets), the loss curve, and the
record a command prints (and writes with `--json`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, out_dir: Path) -> None:
        self.jsonl = out_dir / "metrics.jsonl"
        self.csv = out_dir / "metrics.csv"

    def append(self, row: dict[str, Any]) -> None:
        with self.jsonl.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        new = not self.csv.exists()
        with self.csv.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)


def print_record(record: Any, json_path: Path | None = None) -> None:
    """A command's record as indented JSON on stdout, and into `json_path` when one is given."""
    text = json.dumps(record, indent=2)
    print(text)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(
        epochs,
        [row["train_loss"] for row in history],
        label="train loss (KL-weighted during warm-up)",
    )
    # Runs from before the validation split was held out judged each epoch on the test set.
    key = "val_neg_elbo" if "val_neg_elbo" in history[-1] else "test_neg_elbo"
    ax.plot(epochs, [row[key] for row in history], label=key.split("_")[0] + " -ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.set_title("Training curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
