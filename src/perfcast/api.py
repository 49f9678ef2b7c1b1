"""The public Python API (the CLI is a thin layer over these names)."""

from perfcast.hardware import get_cpu, get_gpu, list_cpus, list_gpus
from perfcast.models import get_model, list_models
from perfcast.ops.predict import predict_op
from perfcast.step.memory import max_batch, max_context
from perfcast.step.predict import InputError, Prediction, predict, sweep

__all__ = [
           "InputError",
           "Prediction",
           "get_cpu",
           "get_gpu",
           "get_model",
           "list_cpus",
           "list_gpus",
           "list_models",
           "max_batch",
           "max_context",
           "predict",
           "predict_op",
           "sweep",
]
