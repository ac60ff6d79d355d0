"""The generic Jupyter kernel conformance suite (jupyter_kernel_test) run against Bastion.

Why the KernelSpec trick instead of an installed kernelspec: the suite's own
`setUpClass` starts `kernel_name` from the installed specs, which would make
the test depend on (and write to) the machine's Jupyter paths. Here the spec
is built in memory, pointing at a demo deployment generated for this class.
Every message the suite receives is validated against the v5 message spec.

Samples Bastion cannot offer are left unset on purpose (the suite skips them):
there is no print (stdout/stderr), no display_data and no pager.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import jupyter_kernel_test
from jupyter_client import KernelManager

from conftest import TIMEOUT, kernel_spec

from bastion_kernel.demo import generate  # noqa: E402


class BastionKernelTests(jupyter_kernel_test.KernelTests):
    kernel_name = "bastion"
    language_name = "python"
    file_extension = ".py"

    # Bastion has no print(): leave code_hello_world / code_stderr unset.
    # `1 + 2` is an expression object in Bastion, so plain values come from len() and frame properties.
    code_execute_result = [
        {"code": "len([1, 2, 3])", "result": "3"},
        {
            "code": "patients.columns",
            "result": "['patient_id', 'name', 'ssn', 'age', 'sex', 'region', 'zip', 'income', 'diagnosis']",
        },
        {"code": 'policy("patients")', "mime": "text/plain"},
        {"code": 'patients.group_by("region").agg(pl.len()).collect()', "mime": "text/html"},
        # a chart of a released aggregate, and a histogram computed through the policy
        {"code": 'patients.group_by("region").agg(pl.len()).collect().plot.bar(x="region", y="len")',
         "mime": "application/vnd.vegalite.v5+json"},
        {"code": 'patients.plot.hist("age", bins=10, range=[0, 100])', "mime": "application/vnd.vegalite.v5+json"},
    ]
    code_generate_error = "import os"

    complete_code_samples = ["x = 1", 'patients.select(pl.len()).collect()', "x = (\n1)"]
    incomplete_code_samples = ["x = (", "patients.select(\n"]
    invalid_code_samples = ["x = )", "1 +* 2"]

    # The suite compares the set of matches exactly: every allow-listed name with the prefix.
    completion_samples = [
        {"text": "pl.co", "matches": {"col", "concat_str", "coalesce", "count"}},
        {"text": "patients.gro", "matches": {"group_by"}},
        {"text": "patients.plot.", "matches": {"hist"}},
        {"text": 'patients.select(pl.col("re', "matches": {"region"}},
        {"text": "pl.col('age').str.to_u", "matches": {"to_uppercase"}},
    ]
    code_inspect_sample = "patients"

    _tmp: str

    @classmethod
    def setUpClass(cls) -> None:
        cls._tmp = tempfile.mkdtemp(prefix="bastion-jkt-")
        config = generate(Path(cls._tmp))
        cls.km = KernelManager()
        cls.km._kernel_spec = kernel_spec(config, user="alice")  # type: ignore[attr-defined]
        cls.km.start_kernel()
        cls.kc = cls.km.client()
        cls.kc.start_channels()
        try:
            cls.kc.wait_for_ready(timeout=TIMEOUT)
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            cls.kc.stop_channels()
            cls.km.shutdown_kernel()
            cls.km.cleanup_resources()
        finally:
            shutil.rmtree(cls._tmp, ignore_errors=True)
