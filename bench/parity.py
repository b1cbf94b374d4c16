"""Parity of retouch's diffusers engines with the direct diffusers call, per engine.

Every case of ``tests/engines/parity.py`` (each engine, each documented parameter mapping): the
tiny random-weight pipeline is saved to a folder, served by retouch in-process (``build_app``,
the official ``openai`` SDK over an ASGI transport, engine option ``seed = 0``), and the same
folder is loaded with the pipeline class's own ``from_pretrained`` and called the way the docs
say retouch calls it. Prints the largest per-channel difference (0-255) per case and engine;
the last line is ``parity: max abs diff N (engines: ...)``.

    python bench/parity.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


async def serve_case(case: Any, folder: Path, data: Path) -> Any:
    import httpx2
    import numpy as np
    import openai
    from asgi_lifespan import LifespanManager
    from tests.conftest import decode_b64
    from tests.engines import parity

    from retouch.bootstrap import build_app
    from retouch.config import ModelSettings, load_settings

    settings = load_settings(None, data_dir=data, models=[ModelSettings(
        name="m", engine=case.engine, weights=str(folder), options=parity.OPTIONS[case.engine],
        **parity.SETTINGS.get(case.engine, {}))])  # fmt: skip
    app = build_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=120) as manager:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app), base_url="http://b")
        sdk = openai.AsyncOpenAI(api_key="sk-bench", base_url="http://b/v1", http_client=http, max_retries=0)
        result = await sdk.images.edit(model="m", **parity.files(case), **case.request)
        await http.aclose()
    return np.asarray(decode_b64(result.data[parity.output_index(case)].b64_json or "").convert("RGB"))


def main() -> None:
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging
    from tests.engines import parity, tiny_pipelines

    torch.set_num_threads(1)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    savers = {"flux2-klein": tiny_pipelines.save_tiny_klein, "qwen-image-edit": tiny_pipelines.save_tiny_qwen,
              "sd-inpaint": tiny_pipelines.save_tiny_sd, "flux-kontext": tiny_pipelines.save_tiny_kontext,
              "joyimage-edit": tiny_pipelines.save_tiny_joyimage,
              "longcat-image-edit": tiny_pipelines.save_tiny_longcat,
              "qwen-image-2.1": tiny_pipelines.save_tiny_qwen21}  # fmt: skip
    worst: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders: dict[str, Path] = {}
        references: dict[str, Any] = {}
        for i, case in enumerate(parity.cases()):
            if case.engine not in folders:
                folders[case.engine] = savers[case.engine](root / case.engine.replace("-", "_"))
                references[case.engine] = parity.load_reference(case.engine, folders[case.engine])
            with contextlib.ExitStack() as stack:
                for patch in case.patches:
                    stack.enter_context(patch())
                got = asyncio.run(serve_case(case, folders[case.engine], root / f"data{i}"))
                want = case.reference(references[case.engine])
            diff = int(abs(got.astype(int) - want.astype(int)).max()) if got.shape == want.shape else 255
            allowed = "" if case.tolerance == 0 else f" (allowed {case.tolerance}: soft mask edge)"
            print(f"{case.engine:16s} {case.name:36s} max abs diff {diff}{allowed}", flush=True)
            worst[case.engine] = max(worst.get(case.engine, 0), diff)
    for engine, diff in worst.items():
        print(f"{engine}: max abs diff {diff}")
    print(f"parity: max abs diff {max(worst.values())} (engines: {', '.join(worst)})")


if __name__ == "__main__":
    main()
