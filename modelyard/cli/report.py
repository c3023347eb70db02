"""`modelyard report MODEL VERSION`: the version's compliance report (EU AI Act Annex IV), written
as HTML and JSON, attached to its MLflow run and to Prefect, recorded in the ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
errors = Console(stderr=True)


def _refuse(message: str, code: int) -> typer.Exit:
    errors.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""

    @app.command("report")
    def report(
        model: Annotated[str, typer.Argument(help="The model (its spec name, or an environment's registered model "
                                                  "such as fraud-detector-production).")],
        version: Annotated[str, typer.Argument(help="The registered version.")],
        env: Annotated[str | None, typer.Option(help="The environment of MODEL's version (dev, staging, production); "
                                                     "default: the one MODEL names.")] = None,
        out: Annotated[Path | None, typer.Option(help="Where to write the files (default: state_dir/reports/compliance).")]
        = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Write the compliance report of a version (HTML and JSON, Annex IV sections, every ledger
        record with its verified inclusion proof), attach it to the version's MLflow run and to
        Prefect, and record it in the audit ledger."""
        from modelyard.environments import ENVIRONMENTS
        from modelyard.names import InvalidName, check_model_name, check_version

        try:
            check_model_name(model, "MODEL")
            check_version(version, "VERSION")
        except InvalidName as error:
            raise _refuse(str(error), 2) from error
        if env is not None and env not in ENVIRONMENTS:
            raise _refuse(f"--env: {env!r} is not one of {', '.join(ENVIRONMENTS)}", 2)

        import os

        # MLflow's download progress bars would interleave with the report's own lines.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from tasks.compliance import VersionNotFound, publish_compliance_report

        try:
            result = publish_compliance_report(model, version, env=env, out_dir=out)
        except InvalidName as error:
            raise _refuse(str(error), 2) from error
        except VersionNotFound as error:
            raise _refuse(f"no report: {error}", 1) from error
        if as_json:
            print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}, indent=2))
            return
        console.print(f"compliance report of {escape(model)} v{escape(version)} ({escape(result['environment'])}):")
        console.print(f"  HTML  {escape(str(result['html']))}")
        console.print(f"  JSON  {escape(str(result['json']))}")
        console.print(f"  sha256 {result['sha256']} (html), {result['json_sha256']} (json)")
        if result["html_url"]:
            console.print(f"  in MLflow: {escape(result['html_url'])}")
        else:
            console.print("  not attached to MLflow: the version has no MLflow run")
        console.print(f"  Prefect artifact: {escape(result['artifact_key'])}")
