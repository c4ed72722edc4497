"""The typed config and plan: in step with the flags, derived as the rules say."""

import dataclasses
import typing

import pytest
from absl import flags

from tf_lars.training import config, recipe
from tf_lars.training import flags as train_flags


def parsed(*args):
    values = flags.FlagValues()
    train_flags.define(values)
    values(["prog", *args])
    return values


def test_every_flag_is_a_config_field_with_the_flags_default():
    values = parsed()
    names = {f.name for f in values.flags_by_module_dict()[train_flags.__name__]}
    fields = {f.name: f for f in dataclasses.fields(config.TrainConfig)}
    assert names == set(fields)
    defaults = config.TrainConfig()
    for name in names:
        default = values[name].default
        default = tuple(default) if isinstance(default, list) else default
        assert getattr(defaults, name) == default, name


def test_enum_flags_and_literal_fields_allow_the_same_values():
    values = parsed()
    hints = typing.get_type_hints(config.TrainConfig)
    for name, hint in hints.items():
        if typing.get_origin(hint) is typing.Literal:
            assert set(typing.get_args(hint)) == set(values[name].parser.enum_values), name


def test_from_args_reads_flagfiles_and_the_config_records_as_flags_json_does():
    cfg = config.from_args(["--flagfile=resnet50_lars_32k", "--step_epochs=1,2"])
    assert cfg.batch_size == 32768 and cfg.learning_rate == 32.0 and cfg.warmup_epochs == 14
    assert cfg.step_epochs == ("1", "2")
    recorded = cfg.as_flags()
    assert recorded["step_epochs"] == ["1", "2"] and recorded["batch_size"] == 32768
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 1  # type: ignore[misc]


class Data:  # the sizes recipe.derive reads
    train_examples, eval_examples, data_format = 50_000, 10_000, "fashion_mnist"


@pytest.mark.parametrize(
    "args,expected",
    [
        # 50,000 // 1024 = 48 steps an epoch; 2.5 warmup epochs = 120 steps;
        # rate 0.1 * 1024 / 256; evaluation of 10,000 in batches of 1024: 10.
        (
            ["--batch_size=1024", "--epochs=15", "--warmup_epochs=2.5"],
            dict(
                steps_per_epoch=48,
                total_steps=720,
                epochs=15,
                warmup_steps=120,
                peak_learning_rate=0.4,
                eval_batch=1024,
                eval_steps=10,
                replicas=2,
                per_replica_batch=512,
                test_steps=0,
                precise_bn_steps=0,
            ),
        ),
        # An absolute rate wins over scaling; steps beat epochs; warmup capped
        # below the last step; PreciseBN's 1000 images in whole batches of 256.
        (
            [
                "--batch_size=256",
                "--train_steps=10",
                "--learning_rate=2.5",
                "--precise_bn_images=1000",
                "--eval_batch_size=500",
                "--test_split=x",
            ],
            dict(
                steps_per_epoch=195,
                total_steps=10,
                epochs=1,
                warmup_steps=9,
                peak_learning_rate=2.5,
                eval_batch=500,
                eval_steps=20,
                replicas=2,
                per_replica_batch=128,
                test_steps=20,
                precise_bn_steps=4,
            ),
        ),
    ],
)
def test_plan_by_hand(args, expected):
    cfg = config.from_flags(parsed(*args))
    assert recipe.derive(cfg, Data, 2).as_dict() == pytest.approx(expected)
