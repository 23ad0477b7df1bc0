"""Read digits with a trained net: pictures of any size and colour, .npy arrays, IDX files.

The command is mnist_arch/commands/predict.py (python -m mnist_arch.predict); this is what it calls.
"""
from pathlib import Path
from typing import Any, Dict, Iterator, List

import torch

from mnist_arch.data.digits import digit_names, prepared, read_digits
from mnist_arch.errors import BadFile

CHUNK = 2048  # digits prepared and scored at a time: ~6 MB of prepared images, whatever the file holds


def probabilities(trained, path: Path):
    """(the file's digit names, their (N, 10) probabilities); BadFile when the file or one digit in it
    cannot be read. Prepared a chunk at a time, so memory holds the file's raw images once."""
    stack = read_digits(path)
    names = digit_names(path, len(stack))
    scored = torch.empty(len(stack), 10)
    for start in range(0, len(stack), CHUNK):
        images = [prepared(path, names[i], stack[i]) for i in range(start, min(start + CHUNK, len(stack)))]
        scored[start: start + len(images)] = trained.probabilities(torch.stack(images).unsqueeze(1))
    return names, scored


def results(trained, files: List[Path]) -> Iterator[Dict[str, Any]]:
    """One result per digit, or one {"file", "error"} per file that cannot be read, in the order given."""
    for path in files:
        try:
            names, scored = probabilities(trained, path)
        except BadFile as e:
            yield {"file": str(path), "error": str(e)}
            continue
        for name, p in zip(names, scored):
            top = p.topk(2)
            yield {"file": str(path.parent / name), "digit": int(top.indices[0]),
                   "probability": round(float(top.values[0]), 4), "runner_up": int(top.indices[1]),
                   "runner_up_probability": round(float(top.values[1]), 4),
                   "probabilities": [round(float(q), 6) for q in p]}
