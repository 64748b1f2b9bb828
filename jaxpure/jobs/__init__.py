"""The jobs behind the CLIs: `train` (train.py), `loading` (networks for evaluation) and
`evaluation` (evaluate.py). Only these, and the CLIs, read the whole config."""
