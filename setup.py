"""Build hook only (the project is described in pyproject.toml).

pyproject.toml maps the repository's models/ onto the data package ``vqtok._models`` so that a
wheel carries the shipped models. models/ is data, not code: the scripts kept there (e.g.
``footage.py``, run by ``make footage``) must not become modules of the installed package.
"""

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        if package == "vqtok._models":
            return []
        return super().find_package_modules(package, package_dir)


setup(cmdclass={"build_py": BuildPy})
