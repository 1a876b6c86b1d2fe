"""User-facing errors: each carries a message meant to be printed as is, without a traceback."""


class VisrouteError(Exception):
    """Base class for errors whose message tells the user what to do."""


class ModelLoadError(VisrouteError):
    """A model spec could not be turned into a loaded model."""


class MissingExtraError(VisrouteError):
    """An optional dependency (an extra of the visroute package) is not installed."""

    def __init__(self, extra: str, package: str, purpose: str):
        super().__init__(
            f"{purpose} needs the optional package '{package}', which is not installed. "
            f"Install it with: pip install 'visroute[{extra}]'"
        )
        self.extra = extra
        self.package = package


class LabelError(VisrouteError):
    """Class names / labels given by the user are unusable (empty, duplicated, malformed)."""


class TemplateError(VisrouteError):
    """Prompt templates are unusable (missing {c}, empty file, unknown dataset key)."""


class InputError(VisrouteError, ValueError):
    """Arrays given to an estimator have the wrong shape, type or values (a ValueError, as scikit-learn expects)."""


class CallsFailed(VisrouteError):
    """Every model call of a run failed (HTTP errors, null or unparsable answers): nothing was measured, so nothing
    is stored as a result or a record, and a re-run measures it again. The CLI exits 1 (a failure, not a usage error)."""

    exit_code = 1
    marker = "nothing stored, a re-run measures it again"
