"""A trial's model checkpoint as the registry reaches it: a local folder or a URI (s3://, gs://, ...)
read through pyarrow, holding the exported model in its ``model/`` folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from trainers.errors import ConfigError
from trainers.layout import MODEL_DIR


def filesystem(checkpoint: str):
    """(pyarrow filesystem, path) of a checkpoint folder: a URI with '://' or a local path."""
    import pyarrow.fs

    if "://" in checkpoint:
        return pyarrow.fs.FileSystem.from_uri(checkpoint)
    return pyarrow.fs.LocalFileSystem(), str(Path(checkpoint).resolve())


def check_checkpoint(checkpoint: str, trial_id: str) -> None:
    import pyarrow.fs

    try:
        fs, path = filesystem(checkpoint)
        kind = fs.get_file_info(f"{path.rstrip('/')}/{MODEL_DIR}").type
    except Exception as err:  # noqa: BLE001 - an unknown scheme, missing credentials, an unreachable store
        raise ConfigError(f"cannot open the model checkpoint of trial {trial_id} at {checkpoint}: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if kind != pyarrow.fs.FileType.Directory:
        raise ConfigError(f"the model checkpoint of trial {trial_id} is gone: no folder {checkpoint.rstrip('/')}/{MODEL_DIR}")


def local_model(checkpoint: str, work: Path) -> Path:
    """The exported model folder on this machine: the checkpoint's own for a local path, else a copy."""
    import pyarrow.fs

    fs, path = filesystem(checkpoint)
    source = f"{path.rstrip('/')}/{MODEL_DIR}"
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        return Path(source)
    target = work / MODEL_DIR
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    pyarrow.fs.copy_files(source, str(target), source_filesystem=fs,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())
    return target
