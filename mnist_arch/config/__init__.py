"""The configuration: the typed schema and its one gate (schema.py), the optimizer and scheduler built from
their groups (recipe.py), a search space turned into a trial's overrides (space.py). The values live in
conf/; config keys that name classes are found by mnist_arch/locate.py."""
