"""Reproduce the papers visroute implements: one recipe per published table (``visroute reproduce``).

``list_recipes()`` names them; ``run_recipe(name, scale="tiny"|"full")`` runs one end to end into a run folder
with the measured-vs-published table; ``dry_run(name, "full")`` lists what a full run would need that this machine
lacks. Recipes are YAML data in ``visroute/reproduce/recipes``.
"""

from visroute.reproduce.recipe import Recipe, RecipeError, list_recipes, load_recipe, recipe_names
from visroute.reproduce.resolve import (EXIT_MISSING, MissingPrerequisites, Requirement, default_data_root,
                                        format_missing)
from visroute.reproduce.runner import RunResult, dry_run, run_recipe

__all__ = ["EXIT_MISSING", "MissingPrerequisites", "Recipe", "RecipeError", "Requirement", "RunResult",
           "default_data_root", "dry_run", "format_missing", "list_recipes", "load_recipe", "recipe_names",
           "run_recipe"]
