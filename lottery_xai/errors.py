"""Errors a user can cause; the command-line layer turns them into one line and exit status 2."""


class UserError(Exception):
    """A mistake in the config, the command line or the data on disk that the user can fix."""
