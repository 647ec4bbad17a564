"""Raw-text models: ``<task>_text`` takes UTF-8 strings and returns label and probabilities.

A ``tritonclient`` user can classify text without a tokenizer: the model (Python backend, BLS)
tokenizes with the ``tokenizer.json`` published in its own version folder, calls the token-level
ONNX model ``<task>``, and applies a softmax. Layout written by :func:`publish_raw_text`::

    <task>_text/config.pbtxt         backend "python", input text, outputs label + probabilities
    <task>_text/labels.txt
    <task>_text/1/model.py           copy of export/triton_models/raw_text/model.py
    <task>_text/1/preprocess/*.py    copies of the packages model.py imports (:data:`SHIPPED_PACKAGES`):
    <task>_text/1/taskspec/*.py      the stub's environment has numpy and tokenizers, not this project
    <task>_text/1/tokenizer.json     copies of the token model's published artifacts
    <task>_text/1/preprocessing.json

The model-level files are in git (generated, contract-tested); the version folder is a build output,
written whole by every publish of ``<task>``, so the template and the packages' sources are the only
copies in git (``export validate`` checks that the published ones equal them).

The raw-text model has one version that always calls the latest version of ``<task>``; its
tokenizer files are replaced (atomically, file by file) whenever ``<task>`` is published.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

import preprocess
import taskspec
from export.triton_config import render_model_config, set_queue_policy
from taskspec import CONFIG_FILE, LABELS_FILE, PREPROCESSING_FILE, TOKENIZER_FILE, TaskSpec

TEMPLATE = Path(__file__).resolve().parent / "triton_models" / "raw_text" / "model.py"
SHIPPED_PACKAGES = (preprocess, taskspec)
"""The packages the template imports, published next to it in the version folder."""
RAW_TEXT_VERSION = 1
INPUT_NAME = "text"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"

HEADER = """\
# Generated from taskspec by export/raw_text.py - edit the task spec or that module, not this file.
# Raw UTF-8 text in, label + probabilities out: tokenizes in Python (BLS) and calls the
# token-level ONNX model named by the model_name parameter.
"""


def build_raw_text_config(spec: TaskSpec) -> mc.ModelConfig:
    """Triton config of ``spec``'s raw-text model."""
    if spec.modality != "text":
        raise ValueError(f"{spec.name} is not a text task")
    config = mc.ModelConfig(
        name=spec.raw_text_model_name, backend="python", max_batch_size=spec.batching.max_batch_size
    )
    config.input.add(name=INPUT_NAME, data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name=LABEL_OUTPUT, data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(
        name=PROBABILITIES_OUTPUT, data_type=mc.TYPE_FP32, dims=[spec.num_labels], label_filename=LABELS_FILE
    )
    # Tokenizing is CPU work on every host; the token-level model it calls is placed by Triton.
    config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.KIND_CPU, count=1)
    set_queue_policy(config, spec)  # a bounded queue here too: direct tritonclient users shed load the same way
    config.parameters["model_name"].string_value = spec.model_name
    return config


def shipped_code() -> dict[str, Path]:
    """Path in the raw-text version folder -> source file: ``model.py`` and the packages it imports."""
    files = {"model.py": TEMPLATE}
    for package in SHIPPED_PACKAGES:
        assert package.__file__ is not None
        root = Path(package.__file__).parent
        files.update({f"{package.__name__}/{source.name}": source for source in sorted(root.glob("*.py"))})
    return files


def write_raw_text_model(spec: TaskSpec, repository: Path) -> Path:
    """Write the config, labels, ``model.py`` and the packages it imports of ``<task>_text``; returns the folder."""
    model_dir = repository / spec.raw_text_model_name
    version_dir = model_dir / str(RAW_TEXT_VERSION)
    version_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / LABELS_FILE).write_text("\n".join(spec.labels) + "\n")
    (model_dir / CONFIG_FILE).write_text(HEADER + render_model_config(build_raw_text_config(spec)))
    code = shipped_code()
    for relative, source in code.items():
        target = version_dir / relative
        target.parent.mkdir(exist_ok=True)
        _replace_file(source, target)
    for package in SHIPPED_PACKAGES:  # a module removed from the sources goes from the copy too
        for stale in (version_dir / package.__name__).glob("*.py"):
            if f"{package.__name__}/{stale.name}" not in code:
                stale.unlink()
    return model_dir


def publish_raw_text(spec: TaskSpec, repository: Path, token_version_dir: Path) -> Path:
    """(Re)write ``<task>_text`` with the tokenizer artifacts of a published token-model version."""
    for name in (TOKENIZER_FILE, PREPROCESSING_FILE):
        if not (token_version_dir / name).is_file():
            raise FileNotFoundError(f"{token_version_dir / name} is missing")
    model_dir = write_raw_text_model(spec, repository)
    version_dir = model_dir / str(RAW_TEXT_VERSION)
    for name in (TOKENIZER_FILE, PREPROCESSING_FILE):
        _replace_file(token_version_dir / name, version_dir / name)
    return model_dir


def _replace_file(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` atomically: a reader sees the old file or the new one."""
    if target.is_file() and target.read_bytes() == source.read_bytes():
        return  # unchanged: keep the mtime so Triton's poll mode does not reload the model
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; Triton in a container may run as another user
    os.replace(tmp, target)
