"""Where does Triton put a KIND_AUTO instance on this host? (run it on a GPU machine)

Builds a one-layer ONNX classifier with this project's generated config (``instance_group`` with
no kind, i.e. KIND_AUTO), starts the local Triton launcher with the GPU visible
(``cpu_only=False``), and prints the instance kind Triton chose plus whether inference works.
On a CPU-only host it prints ``KIND_CPU``; on a GPU host ``KIND_GPU``.

    python -m serving.gpu_selfcheck --env-dir /path/to/venv-with-nvidia-pytriton
    python -m serving.gpu_selfcheck --build DIR          # only write the probe repository
    python -m serving.gpu_selfcheck --repository DIR     # use one built elsewhere (no tritonclient needed)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serving.processes import stop_on_signals
from serving.triton import DEFAULT_ENV_DIR, TritonServer
from taskspec import BatchingSpec, TaskSpec, TensorSpec

SPEC = TaskSpec(
    name="kind_probe",
    title="KIND_AUTO probe",
    modality="text",
    labels=("a", "b"),
    inputs=(TensorSpec("features", "TYPE_FP32", (2,)),),
    output=TensorSpec("logits", "TYPE_FP32", (2,)),
    batching=BatchingSpec(max_batch_size=4, preferred_batch_sizes=(4,), max_queue_delay_us=1000),
)


def build_repository(root: Path) -> Path:
    from export.triton_config import write_model_config

    weight = numpy_helper.from_array(np.eye(2, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"])],
        "probe",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / SPEC.name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(root / SPEC.name / "1" / "model.onnx"))
    write_model_config(SPEC, root / SPEC.name)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--env-dir", type=Path, default=DEFAULT_ENV_DIR)
    parser.add_argument("--build", type=Path, help="write the probe repository here and exit")
    parser.add_argument("--repository", type=Path, help="a probe repository written by --build")
    args = parser.parse_args()
    stop_on_signals()  # SIGTERM (a CI job cancelled) stops the probe Triton like Ctrl-C
    if args.build:
        print(f"probe repository: {build_repository(args.build)}")
        return 0
    try:
        gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        gpus = ""
    print(f"GPUs: {gpus or 'none'}")
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.repository or build_repository(Path(tmp) / "repo")
        with TritonServer.on_free_ports(repo, cpu_only=False, env_dir=args.env_dir, startup_timeout=120) as server:
            with urllib.request.urlopen(f"{server.url}/v2/models/{SPEC.name}/config") as response:
                groups = json.load(response)["instance_group"]
            print("instance_group as Triton resolved it:", json.dumps(groups))
            body = json.dumps(
                {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [0.25, 0.75]}]}
            ).encode()
            request = urllib.request.Request(f"{server.url}/v2/models/{SPEC.name}/infer", data=body, method="POST")
            try:
                with urllib.request.urlopen(request) as response:
                    print("inference:", json.load(response)["outputs"][0]["data"])
            except Exception as exc:  # report, don't hide: the kind above is the point of this check
                print(f"inference failed: {exc}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the server has been stopped by its context manager
        raise SystemExit(130) from None
