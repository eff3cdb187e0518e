"""Run the train stage as a process (one rank under ``accelerate launch``); see :mod:`sft_pipeline.train.launch`."""

import sys

from sft_pipeline.train.launch import main

if __name__ == "__main__":
    sys.exit(main())
