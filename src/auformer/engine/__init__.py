"""Training and evaluation engine: the recipe, its parts, its outputs and the protocols over it.

- ``protocols``: the entry points (``train``, ``resume``, ``evaluate``, ``cross_validate``,
  ``data_efficiency``, ``train_once``);
- ``trainer``: the recipe, `Trainer` (setup / train / evaluate);
- ``build``: a run's parts from its config (data source and splits, backbone weights, model, loss);
- ``evaluation``: scoring a model on a dataset (predictions and metrics, over ranks);
- ``outputs``: metrics.json, per-AU tables, predictions.csv, cross-run tables, skipped.json;
- ``schedule``: a run's length, warm-up and evaluation points; ``dryrun``: ``--dry-run``;
- ``pretrain``: the project's synthetic-face ViT pre-training;
- ``ablation``: the paper's ablation grids (Tables 4-7);
- ``checkpointing``: atomic writes and the resumable ``train_state.pt``;
- ``distributed``: every ``if distributed`` (torchrun, DDP, gathering, rank 0 writes);
- ``logging``: progress bars, TensorBoard, metrics.csv/jsonl, curves.png.
"""
