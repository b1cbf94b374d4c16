"""Parity: what retouch serves over HTTP equals the documented direct diffusers call.

For every engine and documented parameter mapping (``tests/engines/parity.py``), one edit goes
through the HTTP API with the official SDK (seed option 0) and the same tiny pipeline, loaded
straight from the same folder with ``from_pretrained``, is called with the arguments the docs
say retouch uses. The outputs are identical; the only allowed difference is 1/255 at partial
(soft) mask values, where retouch's integer composite and the float composite of the docs may
round differently — ``parity.compare`` checks that no other pixel differs.

Retouch's step hooks (cancellation check before every denoiser pass, step count, preview tap)
are always installed, while the reference call has none: every case is also a proof that the
hooks leave the result alone. The streaming cases add real previews on top.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retouch.config import Settings
from tests.conftest import Harness
from tests.engines import parity
from tests.engines.conftest import model, serve
from tests.engines.helpers import pixels

pytestmark = [pytest.mark.anyio, pytest.mark.torch]

WEIGHTS = {"flux2-klein": "klein_weights", "qwen-image-edit": "qwen_weights", "sd-inpaint": "sd_weights",
           "flux-kontext": "kontext_weights", "joyimage-edit": "joyimage_weights",
           "longcat-image-edit": "longcat_weights", "qwen-image-2.1": "qwen21_weights"}  # fmt: skip
CASES = parity.cases()
_references: dict[str, Any] = {}


@pytest.fixture
def case_env(
    request: pytest.FixtureRequest,
    harness_factory: Callable[..., Any],
    make_settings: Callable[..., Settings],
) -> Callable[[parity.Case], Any]:
    async def start(case: parity.Case) -> tuple[Harness, Any]:
        folder: Path = request.getfixturevalue(WEIGHTS[case.engine])
        h = await serve(harness_factory, make_settings,
                        model("m", case.engine, folder, parity.OPTIONS[case.engine],
                              **parity.SETTINGS.get(case.engine, {})))  # fmt: skip
        if case.engine not in _references:
            _references[case.engine] = parity.load_reference(case.engine, folder)
        return h, _references[case.engine]

    return start


@contextlib.contextmanager
def patched(case: parity.Case) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for patch in case.patches:  # the server's side of Qwen's small-size constants
            stack.enter_context(patch())
        yield


async def _edit(h: Harness, case: parity.Case) -> np.ndarray:
    result = await h.sdk.images.edit(model="m", **parity.files(case), **case.request)
    return pixels(result.data[parity.output_index(case)].b64_json)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_http_edit_equals_the_direct_pipeline_call(
    case: parity.Case, case_env: Callable[[parity.Case], Any]
) -> None:
    h, reference = await case_env(case)
    with patched(case):
        got = await _edit(h, case)
    want = parity.run_reference(case, reference)
    parity.compare(case, got, want)
    if case.alpha is not None:  # outside the edit area: the input, exactly
        keep = case.alpha == 255
        assert np.array_equal(got[keep], case.images[0][keep])


STREAMED = [next(c for c in CASES if c.engine == e) for e in WEIGHTS] + [
    next(c for c in CASES if c.name == "klein mask")
]


@pytest.mark.parametrize("case", STREAMED, ids=[c.name for c in STREAMED])
async def test_previews_do_not_change_the_final_image(
    case: parity.Case, case_env: Callable[[parity.Case], Any]
) -> None:
    h, reference = await case_env(case)
    with patched(case):
        stream = await h.sdk.images.edit(
            model="m", **parity.files(case), **case.request, stream=True, partial_images=3
        )
        partials, final = 0, None
        async for event in stream:
            if event.type == "image_edit.partial_image":
                partials += 1
            elif event.type == "image_edit.completed":
                final = pixels(event.b64_json)
    assert partials >= 1  # the preview decoder really ran inside the loop
    assert final is not None
    parity.compare(case, final, parity.run_reference(case, reference))
