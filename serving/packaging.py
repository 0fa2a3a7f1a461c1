"""What is logged with a served model besides its artifacts: its requirements and the code it ships.

Used when the model is logged (``serving.register.pyfunc_arguments``), never inside it.
"""

from __future__ import annotations

from pathlib import Path


def pip_requirements() -> list[str]:
    """Explicit requirements: inferring them costs seconds and guesses wrong (e.g. torchvision)."""
    from importlib.metadata import version

    torch_version = version("torch").split("+")[0]
    return [f"torch=={torch_version}", f"transformers=={version('transformers')}", f"mlflow=={version('mlflow')}",
            "pandas", "numpy"]


def code_paths(staging: Path) -> list[str]:
    """Copies of the modules the pyfunc imports (not the packages' data), as importable packages:
    ``serving`` {__init__, export, lean, model, schema} and ``trainers`` {__init__, errors, layout, model,
    model_source, policies}."""
    import shutil

    import serving
    import trainers

    out = []
    for package, modules in ((serving, ("__init__", "export", "lean", "model", "schema")),
                             (trainers, ("__init__", "errors", "layout", "model", "model_source", "policies"))):
        source = Path(package.__file__).parent
        target = Path(staging) / source.name
        target.mkdir(parents=True, exist_ok=True)
        for module in modules:
            shutil.copy2(source / f"{module}.py", target / f"{module}.py")
        out.append(str(target))
    return out
