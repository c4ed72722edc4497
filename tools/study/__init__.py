"""The large-batch study (`tools/large_batch_study.py` runs it): LARS against
momentum SGD with the linear scaling rule and against Nesterov momentum with
LARS's schedule, on Fashion-MNIST, at a fixed epoch budget.

    python tools/large_batch_study.py                # reduced form (2 CPU cores: 30-40 min)
    python tools/large_batch_study.py --form=full15  # 1K..8K, 15 epochs (2 CPU cores: hours)
    python tools/large_batch_study.py --form=full    # 1K..8K, 30 epochs (for a GPU)

Every run is the real training program (`python -m tf_lars.train`) with the
flagfile `flags/fashion_mnist_study.cfg` (ResNet-8, the default run's weight
decay and augmentation), on shards with a class-balanced held-out part of
the training set (built here with `build_fashion_mnist_tfrecords.py
--holdout` when --data_dir has none). Methods:

  baseline  momentum SGD at a small batch (--baseline_batch), step decay;
  sgd       momentum SGD, linear scaling rule (rate = r * B / 256 for each
            trial rate r of --sgd_rates) with linear warmup and step decay
            (Goyal et al.'s warmup 5, decays at 30, 60, 80 of 90 epochs: the
            decays at the same fractions of the budget after warmup);
  lars      LARS with the same warmup and polynomial decay of power 2; each
            trial of --lars_trials is `LR:ETA`, LR the peak rate at batch
            1024, scaled with the square root of the batch size;
  nesterov  Nesterov momentum with the linear scaling rule (--nesterov_rates
            at batch 256) and LARS's warmup and polynomial decay, the same
            coupled weight decay and exclusions (BatchNorm, biases): the
            recipe with which Nado et al. 2021 (arXiv:2102.06356) matched
            LARS on ResNet-50 at batch 32K. Only in the full forms.

Every batch size gets the same number of trials for every method. The
trial with the best accuracy on the held-out images is chosen; its accuracy
on the test images is the one reported. The chosen trial of each method runs
again with more seeds (--seeds in all): at the largest batch in the reduced
form, at every batch size (the baseline's included) in the full forms.

The full forms keep every run's small record (summary.json, history.csv,
flags.json, train.log; not the model files) under docs/study-full*/runs/,
committed with the project, so that the sweep continues on a fresh clone.

BatchNorm statistics are recomputed from 10,000 training images before
every evaluation (`--precise_bn_images` in the flagfile): with 12 steps an
epoch at batch 4096 the moving averages trail the weights too far to judge
either method by them.

Writes to --output_dir: `runs.csv` (every run), `results.md` (the table),
`accuracy_vs_batch.png` and `curves_b<largest>.png`; with --report_only it
writes them from the runs recorded so far and runs nothing (the table then
says which points are still missing). Runs go to --runs_dir,
one folder each; a run whose `summary.json` exists is not run again, so an
interrupted study continues where it stopped. --jobs=N trains N runs at a
time, each in its own process: meant for a GPU, which one small run leaves
mostly idle (on 2 CPU cores, two trainer runs at a time with one thread
each were only 1.09x as fast as one after the other).

--edge_checks then runs, for each chosen trial that is its grid's smallest
or largest rate, one run (seed 1) a grid step further, in <runs_dir>-edges:
reported in a table of their own, they say whether the grid was wide enough
and never change the choice.

--engine=arrays trains in this process instead (with --jobs, in processes
of this tool), on any Keras backend and without TensorFlow (the JAX backend
on a GPU machine): the IDX files are read into memory (--idx_dir), split
with the same class-balanced held-out draw as the shards, fed by
`tf_lars.data.arrays.Batches`, and augmented on the device by Keras layers
(close to, not the same as, the shards' crops);
PreciseBN pools its statistics over training images without augmentation.
The recipe (flagfile, schedule, optimizer, model) is the trainer's own:

    KERAS_BACKEND=jax python tools/large_batch_study.py --form=full --engine=arrays \
        --jobs=4 --idx_dir=fashion-mnist --output_dir=docs/study-gpu
The package: `spec.py` (the methods, a table; the forms; a run), `plan.py`
(trials, the choice, seeds, edges, the sweep's order), `runners.py` (each
run a process, records, claims of a shared sweep), `in_memory.py`
(`--engine=arrays`), `report.py` and `plots.py` (the outputs), `cli.py`
(the flags and `main`).

--shard=I/N shares one sweep between N machines that see the same
--runs_dir: each runs every N-th run of each batch size's group from the
I-th, claiming it with a file created exclusively (`claim.json`, naming the
shard, host and process), then waits for the other shards' runs of the group
before choosing its trials; shard 0 writes the report. A shard's index must
be given to one machine at a time (a requeued job with the same index goes
on with the runs it claimed).
"""
