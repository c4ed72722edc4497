"""Helpers shared by the tests: building an input pipeline from keywords."""


def dataset(
    data_dir, split, *, global_batch_size, input_context=None, bad_records=None, skip=0, **spec
):
    """`pipeline.make_dataset` over an `InputSpec` of `data_dir`, `split` and `spec`."""
    from tf_lars.data import pipeline

    return pipeline.make_dataset(
        pipeline.InputSpec(data_dir, split, **spec),
        global_batch_size,
        input_context,
        bad_records,
        skip,
    )
