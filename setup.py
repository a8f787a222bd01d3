"""The wheel's build: corral's metadata is in pyproject.toml; this adds the shim.

``build_py`` compiles ``src/corral/executors/shim.c`` (with ``$CC``, else ``cc``, and
the flags the server would use: ``corral.executors.shim.build_shim``) into
``corral/executors/bin/corral-shim`` in the built package, so that an installed corral
needs no compiler. The binary makes the wheel a platform wheel: tagged
``py3-none-<platform>`` (any Python 3, this operating system and architecture). An
editable install skips it and compiles at the server's first start instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIM_MODULE = HERE / "src" / "corral" / "executors" / "shim.py"
SHIM_IN_PACKAGE = ("corral", "executors", "bin", "corral-shim")


def _shim_module() -> ModuleType:
    """``corral/executors/shim.py`` alone (standard library only), without importing
    the ``corral`` package, which the build environment may not be able to import."""
    spec = importlib.util.spec_from_file_location("_corral_build_shim", SHIM_MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class BuildPyWithShim(build_py):
    """``build_py``, then the shim compiled into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        shim = _shim_module()
        output = Path(self.build_lib, *SHIM_IN_PACKAGE)
        try:
            shim.build_shim(output)
        except shim.ShimBuildError as exc:
            raise SystemExit(f"error: building corral-shim for the wheel: {exc}") from None

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            outputs.append(str(Path(self.build_lib, *SHIM_IN_PACKAGE)))
        return outputs


class BinaryDistribution(Distribution):
    """Not pure Python: installed to ``platlib``, in a platform wheel."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """Tagged for this platform (the wheel carries a binary), for any Python 3 (the
    binary is no extension module: no ``cp311``)."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    distclass=BinaryDistribution,
    cmdclass={"build_py": BuildPyWithShim, "bdist_wheel": PlatformWheel},
)
