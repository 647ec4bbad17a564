"""config.pbtxt from a task spec, built with Triton's own protobuf schema.

The config is assembled as a ``tritonclient.grpc.model_config_pb2.ModelConfig`` message, so a
field or enum that Triton does not know cannot be written, and it is read back with the same
strict parser in the contract tests.

One config serves both servers:

- ``platform: "onnxruntime_onnx"`` and ``backend: "onnxruntime"``: the NGC container's native
  ONNX Runtime backend, and the local Python-based backend of the same name
  (``serving/backends/onnxruntime``).
- ``instance_group { kind: KIND_AUTO }``: Triton places the instances on the GPU when the server
  has one and on the CPU otherwise (``KIND_GPU`` fails to load on a CPU-only host).

Tasks with a CPU serving variant (``TaskSpec.cpu``) also get ``configs/cpu.pbtxt``: the int8 file,
``KIND_CPU``, several single-threaded instances. Triton reads it when started with
``--model-config-name=cpu`` (the local launcher does so by default; the CPU compose override too)
and falls back to ``config.pbtxt`` for models that have none.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from taskspec import (
    BATCH_PRIORITY,
    BATCH_QUEUE_TIMEOUT_US,
    CONFIGS_DIR,
    CPU_CONFIG_NAME,
    INTERACTIVE_PRIORITY,
    PRIORITY_LEVELS,
    TaskSpec,
)
from taskspec import CONFIG_FILE as CONFIG_FILENAME
from taskspec import LABELS_FILE as LABELS_FILENAME
from taskspec import MODEL_FILE as MODEL_FILENAME

HEADER = """\
# Generated from taskspec by export/triton_config.py - edit the task spec, not this file.
# Served unchanged by the NGC container's native ONNX Runtime backend and by the local
# Python-based `onnxruntime` backend (serving/backends/onnxruntime). instance_group has no
# `kind`, i.e. KIND_AUTO: on the GPU when the server has one, on the CPU otherwise.
"""


ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
"""ONNX Runtime backend parameter (native and local): the arenas that give back what each run freed."""
CPU_ARENA_SHRINKAGE = "cpu:0"
"""What CPU variants (``configs/cpu.pbtxt``) shrink after every run. Without it a session keeps the peak of its
largest batch for good (in process, int8 sentiment after 256-token batches: 476-813 MiB, with it 143-165).
The text models lost no throughput to it (bench.arena, 0.97-1.17x); ``config.pbtxt`` (pose, GPU hosts) keeps
ONNX Runtime's default: pose was slower with it in 5 of 7 rounds (0.86x over 4 rounds, busy machine).
docs/benchmarks.md, "Facade capacity"."""


MALLOC_TRIM_INTERVAL = "memory.malloc_trim_interval_s"
"""The local onnxruntime backend's own parameter (the native backend ignores it): the least seconds between two
glibc ``malloc_trim(0)`` calls in a stub, made only between executions."""
CPU_MALLOC_TRIM_INTERVAL_S = "1"
"""What CPU variants use. What a shrinking arena frees stays in the C heap otherwise: trimming at most once a
second gave back 324 MiB of the six stubs of sentiment, disaster and sentiment_tiny after a load, with no measurable
throughput cost (after every execution it cost sentiment 0.91x). docs/benchmarks.md, "Heap trimming in the stubs"."""


MAX_ROWS_PER_CPU_RUN = "memory.max_rows_per_cpu_run"
"""The local onnxruntime backend's own parameter (GPU instances and the native backend ignore it): most rows per
ONNX Runtime call on a CPU instance (``TaskSpec.max_rows_per_cpu_run``)."""


def _tensor_dtype(name: str) -> int:
    return int(mc.DataType.Value(name))


CPU_HEADER = """\
# Generated from taskspec (TaskSpec.cpu) by export/triton_config.py - edit the task spec, not this file.
# Loaded instead of ../config.pbtxt by a Triton started with --model-config-name=cpu (CPU-only hosts):
# the dynamic-int8 file of each version and single-threaded CPU instances.
"""


def build_model_config(spec: TaskSpec, *, tensorrt_fp16: bool = False, cpu: bool = False) -> mc.ModelConfig:
    """The Triton model configuration of ``spec``'s ONNX model (``cpu``: its CPU-host variant)."""
    variant = spec.cpu if cpu else None
    if cpu and variant is None:
        raise ValueError(f"task {spec.name!r} declares no CPU serving variant")
    config = mc.ModelConfig(
        name=spec.model_name,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=spec.batching.max_batch_size,
        default_model_filename=variant.model_file if variant else MODEL_FILENAME,
    )
    for tensor in spec.inputs:
        config.input.add(name=tensor.name, data_type=_tensor_dtype(tensor.dtype), dims=list(tensor.dims))
    config.output.add(
        name=spec.output.name,
        data_type=_tensor_dtype(spec.output.dtype),
        dims=list(spec.output.dims),
        label_filename=LABELS_FILENAME,
    )
    if variant:
        config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.KIND_CPU, count=variant.instance_count)
        threads = variant.intra_op_threads
    else:
        config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.KIND_AUTO, count=spec.instance_count)
        threads = spec.intra_op_threads
    config.dynamic_batching.preferred_batch_size.extend(spec.batching.preferred_batch_sizes)
    set_queue_policy(config, spec)
    if threads:
        config.parameters["intra_op_thread_count"].string_value = str(threads)
    if variant:
        config.parameters[ARENA_SHRINKAGE].string_value = CPU_ARENA_SHRINKAGE
        config.parameters[MALLOC_TRIM_INTERVAL].string_value = CPU_MALLOC_TRIM_INTERVAL_S
    if spec.max_rows_per_cpu_run is not None:
        config.parameters[MAX_ROWS_PER_CPU_RUN].string_value = str(spec.max_rows_per_cpu_run)
    if tensorrt_fp16:
        # Used by the NGC container's native backend on a GPU; the local CPU backend ignores it.
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accel.parameters["precision_mode"] = "FP16"
        accel.parameters["max_workspace_size_bytes"] = str(1 << 30)
    return config


def set_queue_policy(config: mc.ModelConfig, spec: TaskSpec) -> None:
    """Dynamic batching's queue delay, priority levels and queue policies from ``spec.batching`` (see
    ``BatchingSpec`` and ``taskspec.PRIORITY_LEVELS``).

    ``REJECT`` drops a request that waited past its timeout instead of running it for a caller that
    has gone; ``allow_timeout_override`` lets each request carry its own (the facade's remaining
    deadline); ``max_queue_size`` rejects at once what would only queue behind a few batches' worth.
    Requests without a priority (the facade's) are ``INTERACTIVE_PRIORITY`` under ``default_queue_policy``;
    batch jobs send ``BATCH_PRIORITY``, served after them, under a policy of their own.
    """
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = spec.batching.max_queue_delay_us
    batching.priority_levels = PRIORITY_LEVELS
    batching.default_priority_level = INTERACTIVE_PRIORITY
    policy = batching.default_queue_policy
    policy.timeout_action = mc.ModelQueuePolicy.TimeoutAction.REJECT
    policy.default_timeout_microseconds = spec.batching.queue_timeout_us
    policy.allow_timeout_override = True
    policy.max_queue_size = spec.batching.max_queue_size
    batch = batching.priority_queue_policy[BATCH_PRIORITY]
    batch.timeout_action = mc.ModelQueuePolicy.TimeoutAction.REJECT
    batch.default_timeout_microseconds = BATCH_QUEUE_TIMEOUT_US
    batch.allow_timeout_override = True
    batch.max_queue_size = spec.batching.batch_queue_size


_QUEUE_POLICY_OPEN = "  default_queue_policy {\n"
_REJECT = mc.ModelQueuePolicy.TimeoutAction.REJECT


def _priority_policy_open(level: int) -> str:
    return f"  priority_queue_policy {{\n    key: {level}\n    value {{\n"


def render_model_config(config: mc.ModelConfig) -> str:
    """The text format of ``config``, with each queue policy's ``timeout_action: REJECT`` written out.

    REJECT is the enum's zero value, which proto3 text never prints; a reader of config.pbtxt should
    not have to know that a missing line means "reject" (it parses to the same message either way).
    """
    text = str(text_format.MessageToString(config))
    if not config.HasField("dynamic_batching"):
        return text
    batching = config.dynamic_batching
    if batching.HasField("default_queue_policy") and batching.default_queue_policy.timeout_action == _REJECT:
        text = text.replace(_QUEUE_POLICY_OPEN, _QUEUE_POLICY_OPEN + "    timeout_action: REJECT\n", 1)
    for level, policy in batching.priority_queue_policy.items():
        if policy.timeout_action == _REJECT:
            opening = _priority_policy_open(level)
            text = text.replace(opening, opening + "      timeout_action: REJECT\n", 1)
    return text


def parse_model_config(text: str) -> mc.ModelConfig:
    """Strict parse: unknown fields or enum values raise ``text_format.ParseError``."""
    return text_format.Parse(text, mc.ModelConfig())


def read_model_config(model_dir: Path) -> mc.ModelConfig:
    return parse_model_config((model_dir / CONFIG_FILENAME).read_text())


def cpu_config_path(model_dir: Path) -> Path:
    return model_dir / CONFIGS_DIR / f"{CPU_CONFIG_NAME}.pbtxt"


def write_model_config(spec: TaskSpec, model_dir: Path, *, tensorrt_fp16: bool = False) -> Path:
    """Write ``config.pbtxt``, ``labels.txt`` and, for tasks with a CPU variant, ``configs/cpu.pbtxt``
    into ``model_dir`` (the model's folder); returns the path of ``config.pbtxt``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / LABELS_FILENAME).write_text("\n".join(spec.labels) + "\n")
    path = model_dir / CONFIG_FILENAME
    path.write_text(HEADER + render_model_config(build_model_config(spec, tensorrt_fp16=tensorrt_fp16)))
    if spec.cpu is not None:
        cpu_path = cpu_config_path(model_dir)
        cpu_path.parent.mkdir(exist_ok=True)
        cpu_path.write_text(CPU_HEADER + render_model_config(build_model_config(spec, cpu=True)))
    return path


def check_model_config(spec: TaskSpec, model_dir: Path) -> list[str]:
    """Differences between a published model folder and the task spec (empty when they agree)."""
    problems: list[str] = []
    config = read_model_config(model_dir)
    if config.name and config.name != spec.model_name:
        problems.append(f"name {config.name!r} != {spec.model_name!r}")
    if config.max_batch_size != spec.batching.max_batch_size:
        problems.append(f"max_batch_size {config.max_batch_size} != {spec.batching.max_batch_size}")
    want_inputs = [(t.name, t.dtype, list(t.dims)) for t in spec.inputs]
    got_inputs = [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input]
    if got_inputs != want_inputs:
        problems.append(f"inputs {got_inputs} != {want_inputs}")
    out = spec.output
    got_outputs = [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in config.output]
    if got_outputs != [(out.name, out.dtype, list(out.dims))]:
        problems.append(f"outputs {got_outputs} != {[(out.name, out.dtype, list(out.dims))]}")
    if not config.HasField("dynamic_batching"):
        problems.append("dynamic_batching is missing")
    else:
        want = mc.ModelConfig()
        set_queue_policy(want, spec)
        got_batching, want_batching = config.dynamic_batching, want.dynamic_batching
        got_policy = got_batching.default_queue_policy
        if got_policy != want_batching.default_queue_policy:
            got = text_format.MessageToString(got_policy, as_one_line=True)
            problems.append(f"default_queue_policy {{{got}}} differs from the spec")
        got_levels = (got_batching.priority_levels, got_batching.default_priority_level)
        want_levels = (want_batching.priority_levels, want_batching.default_priority_level)
        if got_levels != want_levels:
            problems.append(f"priority_levels, default_priority_level {got_levels} != {want_levels}")
        if dict(got_batching.priority_queue_policy) != dict(want_batching.priority_queue_policy):
            policies = got_batching.priority_queue_policy.items()
            got_policies = {k: text_format.MessageToString(v, as_one_line=True) for k, v in policies}
            problems.append(f"priority_queue_policy {got_policies} differs from the spec")
    label_file = config.output[0].label_filename if config.output else ""
    labels_path = model_dir / label_file if label_file else None
    if labels_path is None or not labels_path.is_file():
        problems.append("labels file is missing")
    elif tuple(labels_path.read_text().split()) != spec.labels:
        problems.append(f"labels in {labels_path} differ from the spec")
    return problems
