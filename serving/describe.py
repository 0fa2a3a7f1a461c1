"""What a registration did, for people: the console lines and the command that serves a model."""

from __future__ import annotations

from typing import Any

CHAMPION = "champion"  # the alias of the sweep's best model


def serve_command(result: dict[str, Any], alias: str = CHAMPION, port: int = 5001) -> str:
    """The shell command that serves a registered alias, runnable as printed without an activated
    venv: mlflow by the path of this interpreter's bin folder, which also goes first on PATH
    (``mlflow models serve`` starts uvicorn by name)."""
    import shlex
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    return (f"MLFLOW_TRACKING_URI={shlex.quote(result['tracking_uri'])} PATH={shlex.quote(str(bin_dir))}:\"$PATH\" "
            f"{shlex.quote(str(bin_dir / 'mlflow'))} models serve -m models:/{result['name']}@{alias} --env-manager local "
            f"-h 127.0.0.1 -p {port}")


def describe_policy(policy: dict[str, Any], metric: str = "metric") -> str:
    target = policy.get("target", {})
    asked = (f"target speed-up >= {target['target_speedup']:g}x" if "target_speedup" in target
             else f"max drop {target['max_drop']:g} points" if "max_drop" in target else "target ?")
    setting = "none (full model)" if policy["policy"] == "none" else f"{policy['policy']} {policy['setting']:g}" + (
        "" if policy.get("delta") is None else f" (delta {policy['delta']:g})")
    return (f"exit policy {setting} for {asked}: validation {policy['validation_speedup']:.2f}x at "
            f"{100 * policy['validation_metric']:.2f}, test {policy['test_speedup']:.2f}x at "
            f"{100 * policy['test_metric']:.2f} ({metric} in %)")


def describe(result: dict[str, Any]) -> list[str]:
    """What was registered, as lines for the console."""
    name, champion = result["name"], result["champion"]
    lines = [f"registered model {name} (sweep '{result['sweep']}', MLflow {result['tracking_uri']}):"]
    width = max(len(m) for m in result["versions"])
    for arm, entry in result["versions"].items():
        lines.append(f"  {arm:<{width}}  version {entry['version']} ({entry['note']})  {entry['uri']}  "
                     f"trial {entry['trial_id']}, validation {entry['objective']} {entry['validation_objective']:.4f}")
        lines.append(f"  {'':<{width}}  {describe_policy(entry['policy'], entry['metric'])}")
    aliases = ", ".join(f"{alias} -> version {version}" for alias, version in result["aliases"].items())
    lines.append(f"  aliases: {aliases}")
    if result.get("skipped"):
        lines.append(f"  not registered (no completed trial): {', '.join(result['skipped'])}")
    lines.append(f"  champion: models:/{name}@{CHAMPION} = {champion['arm']} (version {champion['version']}), "
                 f"the best validation {champion['objective']} of the sweep ({champion['validation_objective']:.4f})")
    return lines
