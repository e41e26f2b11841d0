"""Rules from ARCHITECTURE.md that code review alone would not keep."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_web_process_never_imports_tensorflow():
    """Rule 1: building the app and serving pages loads neither TensorFlow nor Keras."""
    code = (
        "import sys, wsgi\n"
        "c = wsgi.app.test_client()\n"
        "c.get('/'); c.get('/api/products/1/similar')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras'})\n"
        "print(','.join(bad) or 'clean')\n"
    )
    env = {"DATABASE_URL": "sqlite://", "SECRET_KEY": "x", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "clean"


def test_environment_is_read_only_in_config():
    """Rule 6: nothing but webapp/config.py reads the environment."""
    offenders = []
    for path in [*ROOT.joinpath("webapp").rglob("*.py"), *ROOT.joinpath("worker").rglob("*.py")]:
        text = path.read_text()
        if path.name != "config.py" and ("os.environ" in text or "os.getenv" in text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
