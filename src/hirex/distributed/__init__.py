"""Training beyond one machine (REFERENCES.md section 3), on torch.distributed and TorchRec.

- ``launch``: torchrun agents (hosts emulated on 127.0.0.1, or real ones), worker set-up;
- ``tables``, ``trainer``, ``worker``, ``scope``: ``hirex train --distributed``, the retrieval
  model with its id tables sharded row-wise, checkpoints in the single-process files;
- DMT: ``sptt`` (one tower per host through EmbeddingTowerCollection), ``towers`` (tower
  modules), ``partitioner`` (features into towers), ``comm_bytes`` (bytes per process group,
  counted in the collectives), ``cost_model`` (step time from 16 to 512 GPUs);
  ``dmt_worker`` runs their multi-process measurements.

Nothing here is imported by ``import hirex``: TorchRec loads only when used.
"""
