"""Writes the bundled example digits: the first N MNIST test images of each class as 28x28 PNGs.

Run once from the repository root; the output in app/images/example_digits/ is committed:

    .venv/bin/python scripts/make_examples.py --per-class 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from training.data import load_split

OUT = Path(__file__).resolve().parent.parent / "app" / "images" / "example_digits"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    test = load_split(args.data_dir, "mnist", train=False)
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for label in range(10):
        indices = (test.labels == label).nonzero().flatten()[: args.per_class].tolist()
        for k, index in enumerate(indices):
            example_id = f"{label}-{k}"
            Image.fromarray(test.images[index].numpy(), mode="L").save(
                args.out / f"{example_id}.png", optimize=True
            )
            entries.append({"id": example_id, "label": label, "mnist_test_index": index})
    (args.out / "index.json").write_text(json.dumps(entries, indent=1) + "\n")
    print(f"wrote {len(entries)} examples to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
