"""The built wheel carries the tap and its schemas, and nothing else.

Installed on its own, the tap discovers every stream; the fake OpenFunnel server is a
distribution of its own (sandbox/) and is neither in the wheel nor importable from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STREAMS = {"tam_companies", "lookalike_companies", "jobs", "credits_balance"}


def test_wheel_installs_and_discovers_from_its_own_schemas(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    wheel = next(dist.glob("tap_openfunnel-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"tap_openfunnel/schemas/{name}.json" for name in STREAMS} <= names
    packages = {name.split("/")[0] for name in names if "/" in name}
    assert packages == {"tap_openfunnel", f"{wheel.name.rsplit('-', 3)[0]}.dist-info"}, packages
    assert not [name for name in names if "sandbox" in name], names

    # A fresh environment with the wheel in it; the dependencies come from this one
    # through a .pth line, which (unlike a site dir) does not activate the editable
    # install of the source tree that this environment has.
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"api_key": "of_x", "api_url": "http://127.0.0.1:9"}))
    where = subprocess.run(
        [str(python), "-c", "import tap_openfunnel; print(tap_openfunnel.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(env_dir)), where
    for module in ("openfunnel_sandbox", "tap_openfunnel.sandbox"):
        found = subprocess.run(
            [str(python), "-c", f"import importlib.util as u; print(u.find_spec({module!r}))"],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
        )
        assert found.stdout.strip() == "None", (module, found.stdout, found.stderr)
    discovered = subprocess.run(
        [str(env_dir / "bin" / "tap-openfunnel"), "--discover", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        timeout=120,
    )
    catalog = json.loads(discovered.stdout)
    streams = {entry["tap_stream_id"]: entry for entry in catalog["streams"]}
    assert set(streams) == STREAMS
    assert "match_reason" in streams["tam_companies"]["schema"]["properties"]
