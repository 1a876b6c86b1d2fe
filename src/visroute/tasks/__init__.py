"""Visual tasks: an image, an instruction/question, response options, and (for evaluation) the answer."""

from visroute.tasks.model import Task, load_tasks, tasks_from_classification
from visroute.tasks.parse import parse_option

__all__ = ["Task", "load_tasks", "parse_option", "tasks_from_classification"]
