"""Training and evaluation engine.

- ``trainer``: the recipe (setup / train / evaluate) and the protocol loops
  (``train``, ``resume``, ``evaluate``, ``cross_validate``, ``data_efficiency``);
- ``checkpointing``: atomic writes and the resumable ``train_state.pt``;
- ``distributed``: every ``if distributed`` (torchrun, DDP, gathering, rank 0 writes);
- ``logging``: progress bars, TensorBoard, metrics.csv/jsonl, curves.png.
"""
