"""The large-batch study: LARS against momentum SGD and Nesterov momentum on
Fashion-MNIST at a fixed epoch budget (see `study/__init__.py`).

    python tools/large_batch_study.py                # reduced form (2 CPU cores: 30-40 min)
    python tools/large_batch_study.py --form=full15  # 1K..8K, 15 epochs (2 CPU cores: hours)
    python tools/large_batch_study.py --form=full    # 1K..8K, 30 epochs (for a GPU)
    python tools/large_batch_study.py --form=full15 --shard=0/4   # one of 4 machines
"""

from absl import app

from study import cli

if __name__ == "__main__":
    cli.define_flags()
    app.run(cli.main)
