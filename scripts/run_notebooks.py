"""Execute the notebook sequence headless, in order, under one profile.

    python scripts/run_notebooks.py --profile smoke            # what `MASS_PROFILE=smoke make run` does
    python scripts/run_notebooks.py --profile cpu --inplace    # refresh the outputs stored in notebooks/

Executed copies go to build/<profile>/notebooks/ (or back into notebooks/ with --inplace); each
notebook itself writes results/<profile>/<stem>.json and figures/<profile>/*.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mass_ref.profiles import check_profile_fits_machine, resolve_profile  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb, in order")
    parser.add_argument("--profile", default=None, help="smoke | cpu | gpu | auto (default: $MASS_PROFILE or auto)")
    parser.add_argument("--inplace", action="store_true", help="write outputs back into the notebooks")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    args = parser.parse_args()

    try:
        profile = resolve_profile(args.profile)
        check_profile_fits_machine(profile)  # before the first kernel starts
    except ValueError as error:  # one line, no traceback: the user set an environment variable, not code
        print(f"error: {error}", file=sys.stderr)
        return 2
    notebooks = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    out_dir = ROOT / "build" / profile / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["MASS_PROFILE"] = profile  # the kernels inherit it
    # Stored outputs are read, not watched: no progress bars (tqdm's, and transformers'/datasets' through
    # huggingface_hub). Interactive runs keep theirs.
    os.environ.update(TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    os.environ["MASS_REF_ROOT"] = str(ROOT)

    print(f"profile={profile}: executing {len(notebooks)} notebook(s)", flush=True)
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        target = path if args.inplace else out_dir / path.name
        try:
            client.execute()
        except CellExecutionError as error:
            nbformat.write(nb, out_dir / path.name)
            print(f"FAILED {path.name}: see {out_dir / path.name}\n{error}", file=sys.stderr)
            return 1
        nbformat.write(nb, target)
        print(f"ok  {path.name}  {time.perf_counter() - started:6.1f} s  -> {target.relative_to(ROOT)}", flush=True)
    print(f"results: {(ROOT / 'results' / profile).relative_to(ROOT)}/  figures: figures/{profile}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
