"""Packaging contract: the core imports torch only; public names are documented."""

import inspect
import re
import subprocess
import sys

import lyapunov_plugin

PAPER_REFERENCE = re.compile(r"(Eq\.|Eqs\.|Algorithm|Alg\.|Section|Appendix|Theorem|Lemma|Definition|Fig)")


def test_core_import_pulls_in_no_ode_library():
    code = (
        "import sys, lyapunov_plugin; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torchdyn', 'torchdiffeq', 'torchode', 'torchsde', 'pytorch_lightning', 'lightning', 'torchvision', "
        "'torchattacks'}); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_public_name_is_exported_and_cites_the_paper():
    assert sorted(lyapunov_plugin.__all__) == sorted(set(lyapunov_plugin.__all__))
    missing = []
    for name in lyapunov_plugin.__all__:
        obj = getattr(lyapunov_plugin, name)
        doc = inspect.getdoc(obj) or ""
        if not PAPER_REFERENCE.search(doc):
            missing.append(name)
    assert missing == []


def test_py_typed_is_shipped():
    from importlib.resources import files

    assert files("lyapunov_plugin").joinpath("py.typed").is_file()
