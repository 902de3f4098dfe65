"""A training run: build it, loop over steps, write its outputs.

    build.py       the one composition root: Config -> Components (device, data, model,
                   optimizer, schedule, scaler, DynSp controller, FLOPs)
    loop.py        the training loop, readable top to bottom (train(cfg))
    state.py       the counters and RNG states a checkpoint holds
    outputs.py     the run folder: config.yaml, metrics, eval/summary, resume
    checkpoint.py  atomic, checksummed checkpoints; `latest` with fallback
    metrics.py     metrics.jsonl, TensorBoard, progress bar, throughput
    evaluate.py    held-out MLM/NSP evaluation
    optim.py       AdamW and learning-rate schedules (pure functions of the step)
    precision.py   autocast and loss scaling
    signals.py     SIGINT/SIGTERM -> checkpoint -> exit 130/143
"""
