"""Audio benchmark on the full spoken_words set (../shared/data/spoken_words): plain CE with a linear head,
CE + class weights, focal loss and the recommended metric-learning recipe, each on the same from-scratch
ResNet on log-mel spectrograms (configs/quickstart_audio.yaml) for the same epochs; test accuracy, macro-F1,
macro-F1 over the 9 rarest words, kNN accuracy and training time (bench/media_recipes.py).

    python -m bench.audio_spoken_words --epochs 20 --json docs/audio_spoken_words.json
    python -m bench.audio_spoken_words --max-steps 2 --recipes ce_linear recipe   # smoke test
"""

from __future__ import annotations

import argparse

from bench.media_recipes import ROOT, add_arguments, run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "spoken_words"))
    add_arguments(parser, epochs=20.0, out="bench-audio")
    args = parser.parse_args()
    run("quickstart_audio.yaml", f"{args.data}/train.parquet", f"{args.data}/test.parquet", rare=9, args=args)


if __name__ == "__main__":
    main()
