"""Every command a user types, one module each, thin: parse the arguments (argparse, or Hydra's overrides), call the
library beneath, print. `python -m mnist_arch.<name>` (and the console script mnist-arch-<name>) runs the `main`
of the module of that name here; the short modules at mnist_arch/<name>.py only keep those names."""
