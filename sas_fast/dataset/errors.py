"""The error a dataset run raises for bad input or a bad output folder."""


class DatasetRunError(ValueError):
    """A problem with the caller's input (source, model spec, options, output folder): the
    message says what and where; no traceback is needed."""
