"""What the PyTorch cross-checks (torch_crosscheck.py, apgd_crosscheck.py)
share, kept in one place so that the two rebuild opnorm's networks, load
its checkpoints and skip in the same way:

  * require(name): imports a module, or prints "skipping: <reason>" and
    exits 77 (ctest SKIP_RETURN_CODE); torch itself is required on import;
  * Standardize: opnorm's standardize layer, whose statistics are buffers;
  * load_checkpoint(model, path): an opnorm safetensors checkpoint into a
    torch model, load_state_dict(strict=True), so every name, shape and
    dtype must match;
  * run(main, usage): the command line (one directory) and exit status.

A script imports it after putting its own directory on sys.path.
"""
import importlib
import sys

SKIP = 77  # the ctest registrations map it to "skipped"


def require(name, hint=""):
    """The module `name`, or exit 77 with the reason (and the hint, if any)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        print(f"skipping: {name} is not importable by {sys.executable}: {error}" + (f"\n{hint}" if hint else ""))
        sys.exit(SKIP)


torch = require("torch")

# The safetensors reader (standard library + torch; torch 1.13 has no
# safetensors module) that also checks the byte layout lives beside this
# file, on the path the importing script set.
from check_safetensors import read_safetensors  # noqa: E402


class Standardize(torch.nn.Module):
    """(x - mean_c) / std_c, the statistics being buffers as in opnorm."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


def load_checkpoint(model, path):
    """Loads the opnorm checkpoint at path into model, strictly; returns model."""
    _, state = read_safetensors(path)
    model.load_state_dict(state, strict=True)
    return model


def run(main, usage):
    """Exits with main(directory)'s status: 2 (after the usage) without exactly
    one argument, 1 when a check raises AssertionError."""
    if len(sys.argv) != 2:
        print(usage)
        sys.exit(2)
    try:
        sys.exit(main(sys.argv[1]))
    except AssertionError as error:
        print(f"FAILED: {error}")
        sys.exit(1)
