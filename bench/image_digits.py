"""Image benchmark on the digits set (data/digits: long-tailed 10:1 train, balanced test; build it with
`python data/make_digits_images.py`): plain CE with a linear head, CE + class weights, focal loss and the
recommended metric-learning recipe, each on the same small from-scratch ConvNeXt (configs/quickstart_image.yaml)
for the same epochs (bench/media_recipes.py).

    python -m bench.image_digits --epochs 20 --json docs/image_digits.json
    python -m bench.image_digits --max-steps 2 --recipes ce_linear recipe   # smoke test
"""

from __future__ import annotations

import argparse

from bench.media_recipes import ROOT, add_arguments, run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT / "data" / "digits"))
    add_arguments(parser, epochs=20.0, out="bench-image")
    args = parser.parse_args()
    run("quickstart_image.yaml", f"{args.data}/train.parquet", f"{args.data}/test.parquet", rare=3, args=args)


if __name__ == "__main__":
    main()
