"""The root of every error we raise on purpose. Each package has its own base below it."""


class CommsError(Exception):
    """Root of all Contrast Comms errors."""


class ValidationError(CommsError):
    """A value from outside (config, import file, API body, phone number) was refused.

    The message names where the value came from, what was seen and what was expected.
    """
