"""The public Python API (the CLI is a thin layer over these names; ``perfcast.__all__`` lists them)."""

from perfcast import __all__  # noqa: F401  the one list of public names, re-exported here
from perfcast.hardware import get_cpu, get_gpu, list_cpus, list_gpus  # noqa: F401
from perfcast.models import get_model, list_models  # noqa: F401
from perfcast.ops.predict import predict_op  # noqa: F401
from perfcast.step.memory import max_batch, max_context  # noqa: F401
from perfcast.step.pipeline import PipelinePrediction, pipeline  # noqa: F401
from perfcast.step.predict import InputError, Prediction, predict, sweep  # noqa: F401
