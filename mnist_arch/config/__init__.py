"""The configuration: the typed schema and its one gate (schema.py), config keys that name classes
(locate.py), and the optimizer and scheduler built from their groups (recipe.py). The values live in conf/."""
