"""The process each rank of ``hirex train --distributed`` runs (started by torchrun):
``python -m hirex.distributed.worker RUN_DIR [--quiet]``.

It reads the run folder's config.toml (written by the launching command), loads the data,
trains its share, and on rank 0 evaluates on the test split and writes metrics.json, exactly
as ``hirex train`` does.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings

from hirex.config import load_config
from hirex.distributed.launch import finish_worker, init_worker
from hirex.distributed.trainer import train_distributed
from hirex.runs import dataset_from_config, finish_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hirex.distributed.worker")
    parser.add_argument("run_dir")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_config(f"{args.run_dir}/config.toml")
    worker = init_worker(cfg.train.device)
    # hirex's progress from rank 0; the libraries' start-up chatter is INFO and stays out.
    logging.getLogger("hirex").setLevel(logging.INFO if worker.rank == 0 else logging.WARNING)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s [rank {worker.rank}] %(message)s",
        datefmt="%H:%M:%S",
        force=True,  # fbgemm configures the root logger when it loads
    )
    # Notices TorchRec 1.8 trips on every rank with torch 2.13, none of which a user can act
    # on (the equality tests of tests/distributed check the gradients they mention).
    for message in (
        "is_fx_tracing will return true",
        "fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel",
        "`torch.distributed.all_gather_into_tensor` is deprecated",
        "`torch.distributed.reduce_scatter_tensor` is deprecated",
        "`broadcast_buffers` is deprecated",
    ):
        warnings.filterwarnings("ignore", message=message)
    for name in ("torchrec.distributed.utils", "torch.fx._symbolic_trace"):
        logging.getLogger(name).setLevel(logging.ERROR)
    code = 0
    try:
        dataset = dataset_from_config(cfg.data)
        result = train_distributed(cfg, dataset, args.run_dir, worker, progress=not args.quiet)
        if worker.rank == 0:
            finish_run(cfg, dataset, result, args.run_dir)
    except Exception as err:  # noqa: BLE001  (reported, then the job fails as a whole)
        print(f"[rank {worker.rank}] error: {err}", file=sys.stderr)
        traceback.print_exc()
        code = 1
    finish_worker(code)


if __name__ == "__main__":
    main()
