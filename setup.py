"""The package's layout (its metadata is in ``pyproject.toml``): the repository's top-level
``recipes/`` folder ships inside the package as ``vqa_components/recipes/``, with every ``*.yaml`` in
it and in its subfolders, so that a pip-installed ``vqa`` runs ``vqa fit --config quickstart``
(:mod:`vqa_components.packaged_recipes`). An editable install reads the checkout's ``recipes/``.
"""

from setuptools import find_namespace_packages, find_packages, setup

RECIPES = "vqa_components.recipes"
# every folder of recipes/ named as a package of its own: setuptools copies only listed packages' data
RECIPE_PACKAGES = [RECIPES, *(f"{RECIPES}.{name}" for name in find_namespace_packages(where="recipes"))]

setup(
    packages=[*find_packages(include=["vqa_components", "vqa_components.*"]), *RECIPE_PACKAGES],
    package_dir={RECIPES: "recipes"},
    package_data={name: ["*.yaml"] for name in RECIPE_PACKAGES},
)
