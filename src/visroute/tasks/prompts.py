"""Prompt variants as templates: with/without options, with/without context, option lettering.

A template file is plain text with ``{question}``, ``{options}``, ``{context}`` (and ``{description}`` for
the LLM step of a VLM + LLM pipeline); an optional first line ``# lettering: A.|(a)|1.|none`` sets how
options are listed. Shipped templates are addressed by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visroute.errors import VisrouteError
from visroute.tasks.model import Task
from visroute.tasks.parse import LETTERS

LETTERINGS = ("A.", "(a)", "1.", "none")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str
    lettering: str = "A."

    @property
    def shows_options(self) -> bool:
        return "{options}" in self.text

    @property
    def lettered(self) -> bool:
        return self.shows_options and self.lettering in ("A.", "(a)")

    def format_options(self, options: list[str]) -> str:
        if self.lettering == "A.":
            return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        if self.lettering == "(a)":
            return "\n".join(f"({LETTERS[i].lower()}) {o}" for i, o in enumerate(options))
        if self.lettering == "1.":
            return "\n".join(f"{i + 1}. {o}" for i, o in enumerate(options))
        return ", ".join(options)

    def render(self, task: Task, description: str | None = None) -> str:
        context = f"Context: {task.context}\n" if task.context else ""
        return (self.text.replace("{question}", task.question)
                .replace("{options}", self.format_options(task.options))
                .replace("{context}", context)
                .replace("{description}", description or ""))


SHIPPED: dict[str, PromptTemplate] = {
    "mcq": PromptTemplate("mcq", "{context}Question: {question}\nOptions:\n{options}\n"
                                 "Answer with the letter of the correct option only."),
    "mcq-nocontext": PromptTemplate("mcq-nocontext", "Question: {question}\nOptions:\n{options}\n"
                                                     "Answer with the letter of the correct option only."),
    "mcq-text": PromptTemplate("mcq-text", "{context}{question}\nChoose one of: {options}.\nAnswer with the option itself.",
                               "none"),
    "open": PromptTemplate("open", "{context}{question}\nAnswer in a few words.", "none"),
    "describe": PromptTemplate("describe", "Describe this image in detail: the main objects, their appearance, "
                                           "any text, and the setting.", "none"),
    "llm-reason": PromptTemplate("llm-reason", "An assistant that cannot see the image was given this description of it:\n"
                                               "\"{description}\"\n\n{context}Question: {question}\nOptions:\n{options}\n"
                                               "Reason briefly about which option fits the description, then give the "
                                               "final answer on the last line as 'Answer: <letter>'."),
}


def load_prompt(spec: str | None, default: str = "mcq") -> PromptTemplate:
    """A shipped template by name, or a template file (see module docstring)."""
    spec = spec or default
    if spec in SHIPPED:
        return SHIPPED[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise VisrouteError(f"prompt '{spec}' is neither a shipped template ({', '.join(SHIPPED)}) nor a file")
    lines = path.read_text(encoding="utf-8").splitlines()
    lettering = "A."
    if lines and lines[0].startswith("# lettering:"):
        lettering = lines[0].split(":", 1)[1].strip()
        lines = lines[1:]
        if lettering not in LETTERINGS:
            raise VisrouteError(f"{path}: lettering must be one of {LETTERINGS}")
    text = "\n".join(lines).strip()
    if "{question}" not in text and "{description}" not in text:
        raise VisrouteError(f"{path}: a prompt template needs {{question}}")
    return PromptTemplate(path.stem, text, lettering)
