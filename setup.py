"""Package list for setuptools (the rest of the metadata is in pyproject.toml).

conf/ (the Hydra configs) stays at the top of the repository and is shipped inside the package as `wadi.conf`,
so an installed wadi (`pip install .`, a wheel) finds its configs: see wadi.config.CONF_DIR.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["wadi", "wadi.*"], exclude=["*.__pycache__"]),
        "wadi.conf",
        *(f"wadi.conf.{p}" for p in find_namespace_packages(where="conf", exclude=["*.__pycache__"])),
    ],
    package_dir={"wadi.conf": "conf"},
)
