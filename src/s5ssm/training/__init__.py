"""Training and evaluation: the paper's optimiser set-up, exact resume, a run directory.

The parts, each using only those listed after it:
    loop.py           train: setup, then per epoch train, validate and checkpoint; the summary
    setup.py          a run's start: run directory, data, model, optimizer, or a resumed checkpoint
    epoch.py          one epoch: the optimizer steps, then validation, the best epoch, early stopping
    checkpointing.py  saving a run's checkpoints and loading the last one to resume
    run.py            Run: what a training run holds from its setup to its summary
    runlog.py         the run directory's metrics: CSV rows, TensorBoard events, curves.png
    evaluation.py     evaluate: loss and metric over a whole split
    batches.py        the epoch order, the batches and their loss
    optim.py          the paper's optimiser groups and learning-rate schedule
    build.py          the model a configuration names; load_run (a trained run directory)
    data.py           the train/val/test splits of a run and the class names it was trained on

A run directory holds
    config.yaml          the resolved configuration (every option, after defaults)
    classes.json         classification: the class names, in the order of the model's outputs
    metrics_steps.csv    step, epoch, lr, loss
    metrics_epochs.csv   epoch, train/val loss and metric, seconds
    tensorboard/         the same as TensorBoard events (when tensorboard is installed)
    curves.png           training and validation curves (when matplotlib is installed)
    checkpoints/         see s5ssm.checkpoint ("last" and "best")
    summary.json         final metrics per split, best epoch, wall time, parameter count

Exact resume: each epoch's order is a permutation drawn from (seed, epoch); a checkpoint
stores the model, optimizer, torch RNG state (dropout) of every process, the position
inside the epoch and the epoch's running sums; the learning rate is a pure function of the
global step. So a run killed at any point and resumed from its last checkpoint ends with
the same metrics, bit for bit, as a run never interrupted.

Under torchrun (see s5ssm.distributed) each process trains on its shard of every global
batch and the model is wrapped in DistributedDataParallel. Batch sums (loss, metric,
count) are added up over the processes at every step and evaluation splits the sequences
between them, so every process holds the same numbers; only the main process writes.
BatchNorm statistics stay per process, as in the paper's code; DDP hands rank 0's running
statistics to every process at each forward, and rank 0's are the ones checkpointed.
"""
