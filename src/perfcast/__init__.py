"""perfcast: predict LLM inference speed on GPUs you may not have.

``perfcast.predict(model=..., gpu=..., batch=..., prompt=..., context=...)`` returns a frozen
:class:`~perfcast.step.predict.Prediction`; ``perfcast.sweep`` is its vectorized form;
``perfcast.predict_op`` costs one kernel; ``perfcast.pipeline`` splits a step over pipeline stages and
micro-batches (stage times, send/recv, bubble). Importing perfcast is light (numpy only); torch is needed
only by ``perfcast.measure``.
"""

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "PipelinePrediction",
    "Prediction",
    "get_cpu",
    "get_gpu",
    "get_model",
    "list_cpus",
    "list_gpus",
    "list_models",
    "max_batch",
    "max_context",
    "pipeline",
    "predict",
    "predict_op",
    "sweep",
]


def __getattr__(name):  # lazy: `import perfcast` stays fast for `perfcast --help`
    if name in __all__:
        from perfcast import api

        return getattr(api, name)
    raise AttributeError(f"module 'perfcast' has no attribute {name!r}")
