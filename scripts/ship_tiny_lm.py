"""Pretrain the default tiny LM (the cpu profile's) and store it in the package, for maintainers.

    python scripts/ship_tiny_lm.py [--threads 2]

Writes ``mass_ref/lm/pretrained/<TinyLMSpec().key()>/`` with ``save_pretrained``, the same folder
``pretrained_tiny_lm`` caches. Run it after changing ``TinyLMSpec``'s defaults (a test fails until
you do), then re-execute chapters 4 and 5 (``make refresh-outputs``): their stored numbers come
from this model. Takes 6–12 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from mass_ref.lm.tiny import SHIPPED_ROOT, TinyLMSpec, pretrained_tiny_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads; the model depends on it (default 2)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1; got {args.threads}.")
    torch.set_num_threads(args.threads)
    spec = TinyLMSpec()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, info = pretrained_tiny_lm(spec, tmp, use_shipped=False)
        target = SHIPPED_ROOT / spec.key()
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(tmp) / spec.key(), target)
    print(f"wrote {target}: loss {info['loss_first']:.2f} → {info['loss_last']:.2f} in {info['seconds']:.0f} s")


if __name__ == "__main__":
    main()
