"""A config file whose get_config() returns no ConfigDict (for the CLI tests)."""


def get_config():
  return [1, 2, 3]
