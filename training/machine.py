"""What this machine is and has: the CPU and its instruction sets, the device the
Keras backend computes on, the library versions; and a Keras import that keeps
TensorFlow's start-up noise (CUDA probing on a CPU-only machine) off the console.
The run record and the benchmarks describe machines through this module."""

import contextlib
import os
import platform
import re
import sys
import tempfile

# The x86 instructions (/proc/cpuinfo flags) behind oneDNN's 16-bit kernels
# (its ISAs avx512_core_bf16 / _fp16, AMX, and avx2_vnni_2, which has
# avx_ne_convert). oneDNN runs PyTorch's and TensorFlow's CPU convolutions;
# without them mixed precision trains far slower than fp32 (measured on the
# PyTorch backend, eager PyTorch alike: benchmarks/throughput.py).
HALF_PRECISION_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16", "avx_ne_convert"),
                        "fp16": ("avx512_fp16", "amx_fp16", "avx_ne_convert")}


def _cpuinfo_field(name):
    """The first `name` line's value in /proc/cpuinfo, or None (another OS, or an
    Arm CPU, whose file names its fields differently)."""
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags():
    """The x86 CPU's feature flags from /proc/cpuinfo, or None where there are none to read."""
    flags = _cpuinfo_field("flags")
    return None if flags is None else set(flags.split())


def cpu_model():
    """The CPU's model name ("AMD EPYC 7B13"), or None where /proc/cpuinfo does not say."""
    return _cpuinfo_field("model name") or None


def precision_warning(precision, device, flags):
    """A warning where `precision` would compute in 16 bits on a CPU that has no
    instructions for it (`device` as device_description words it: "CPU (AMD EPYC,
    2 cores, x86_64)" or "1 x NVIDIA H100 80GB HBM3 (gpu)"); None otherwise."""
    wanted = HALF_PRECISION_FLAGS.get(precision)
    on_cpu = "cpu" in device.lower()
    if not wanted or not on_cpu or flags is None or flags & set(wanted):
        return None
    return (f"warning: --precision {precision} on a CPU without {', '.join(wanted[:-1])} "
            f"or {wanted[-1]}: "
            f"oneDNN has no 16-bit convolutions for it, so training runs about ten times "
            f"slower than in fp32 (ResNet-20 on 2 AVX2 cores: 21 against 270 images/s in "
            f"bf16, 23 in fp16). --precision fp32 is the faster choice on this machine.")


def versions():
    """The library versions a run record names."""
    import keras
    import matplotlib
    import numpy as np

    versions = {"python": platform.python_version(), "keras": keras.__version__,
                "numpy": np.__version__, "matplotlib": matplotlib.__version__}
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module:
        versions[module] = __import__(module).__version__
    return versions


def tensor_float_32():
    """Whether float32 convolutions and matrix products may run on TF32 matrix units
    (NVIDIA GPUs from Ampere on; nothing changes on a CPU), as the backend is set."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "torch":
            import torch

            return {"convolutions": bool(torch.backends.cudnn.allow_tf32),
                    "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
        if backend == "jax":
            import jax

            precision = jax.config.jax_default_matmul_precision  # None: XLA's default, TF32
            return {"convolutions": precision in (None, "default", "tensorfloat32", "bfloat16"),
                    "matmul": precision in (None, "default", "tensorfloat32", "bfloat16"),
                    "jax_default_matmul_precision": precision}
        if backend == "tensorflow":
            import tensorflow as tf

            enabled = bool(tf.config.experimental.tensor_float_32_execution_enabled())
            return {"convolutions": enabled, "matmul": enabled}
    except Exception:  # a description only
        pass
    return None


def device_description():
    """What the backend computes on, in words (for the run record and reports)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            devices = jax.devices()
            if devices[0].platform != "cpu":  # JAX's CPU devices say only "cpu"
                return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})"
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:  # the model, not the device path "/physical_device:GPU:0"
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    except Exception:  # a description only; never stop a run over it
        pass
    # The model: the report's train hours are only comparable on the same CPU.
    model = cpu_model()
    return (f"CPU ({model + ', ' if model else ''}{os.cpu_count()} cores, "
            f"{platform.processor() or platform.machine()})")


# Lines TensorFlow's C++ start-up writes to stderr on a machine without CUDA, before
# its logging honours TF_CPP_MIN_LOG_LEVEL.
STARTUP_NOISE = re.compile(
    r"cudart_stub|cuda_platform|cuInit|cuda_dnn|cuda_fft|cuda_blas|absl::InitializeLog|"
    r"cpu_feature_guard|To enable the following instructions|rebuild TensorFlow with|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|"
    r"oneDNN custom operations are on|TF_ENABLE_ONEDNN_OPTS|"
    r"All log messages before absl")


@contextlib.contextmanager
def quiet_startup():
    """Runs the block (an `import keras`) with file descriptor 2 captured, then
    writes back every line that is not STARTUP_NOISE, so real errors still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if line.strip() and not STARTUP_NOISE.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_keras():
    """`import keras` (and its backend) with TensorFlow's CUDA probing silenced."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    with quiet_startup():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # Probes the CUDA platform now (it logs cuInit's failure on a CPU-only
            # machine); the logical devices stay unset, as tf.distribute needs.
            tf.config.list_physical_devices("GPU")
    return keras
