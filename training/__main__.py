"""`python -m training` (and `torchrun ... -m training`) runs vae-train."""

from training.train import main

raise SystemExit(main())
