"""A non-editable install (``pip install .``) imports and works from site-packages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    code = (
        "import gradpack, torch\n"
        "from gradpack.compressors import from_spec\n"
        "c = from_spec('qsgd:7')\n"
        "x = torch.randn(100)\n"
        "assert c.decode(c.encode(x), 100).shape == (100,)\n"
        "print(gradpack.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env,
                         capture_output=True, text=True).stdout
    assert out.strip().startswith(str(target)), out
    for layer in ("kernels", "compressors", "comm", "algorithms", "ddp", "bench"):
        assert (target / "gradpack" / layer / "__init__.py").exists(), layer
