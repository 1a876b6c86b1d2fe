"""Class descriptions: load/save published and generated sets, random controls, selection."""

from visroute.heads.description_sets import DescriptionSet, DescriptionError, load_descriptions, save_descriptions

__all__ = ["DescriptionSet", "DescriptionError", "load_descriptions", "save_descriptions"]
